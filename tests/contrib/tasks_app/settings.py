"""Settings of the db_worker process the tests start (and of a test run that wants django-tasks-db).

The suite's settings, plus django-tasks-db as the task backend and the integration on.
``JOBSTATUS_WORKER_DB`` names the database the worker uses: the test database.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS, JOBSTATUS

if "django_tasks_db" not in INSTALLED_APPS:
    INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]

TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}
}  # any queue

JOBSTATUS = {
    **JOBSTATUS,
    "INTEGRATIONS": ["django_jobstatus.contrib.tasks"],
    "PROGRESS_INTERVAL": 0.1,
    "HEARTBEAT_TIMEOUT": 1.5,  # the integration beats every 0.5 s for a task that reports nothing
}

if os.environ.get("JOBSTATUS_WORKER_DB"):
    DATABASES["default"]["NAME"] = os.environ["JOBSTATUS_WORKER_DB"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "jobstatus": {"class": "django_jobstatus.contrib.logging.JobLogHandler"}
    },
    "loggers": {
        "tests.contrib.tasks_app": {"handlers": ["jobstatus"], "level": "INFO"}
    },
}
