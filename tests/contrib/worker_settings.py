"""Settings for the worker processes the integration tests start (Celery, RQ).

They use the test database of the suite that started them: its name comes in
JOBSTATUS_WORKER_DB, and JOBSTATUS_WORKER_DB_PORT points them at a proxy the test can
cut to make the database unreachable.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS

DATABASES["default"]["NAME"] = os.environ["JOBSTATUS_WORKER_DB"]
if os.environ.get("JOBSTATUS_WORKER_DB_PORT"):
    DATABASES["default"]["HOST"] = "127.0.0.1"
    DATABASES["default"]["PORT"] = int(os.environ["JOBSTATUS_WORKER_DB_PORT"])

INSTALLED_APPS = [*INSTALLED_APPS, "django_rq"]

JOBSTATUS = {
    # Each test module switches on the integration it tests.
    "INTEGRATIONS": os.environ.get("JOBSTATUS_WORKER_INTEGRATIONS", "").split(",")
    if os.environ.get("JOBSTATUS_WORKER_INTEGRATIONS")
    else [],
    "PROGRESS_INTERVAL": 0.0,
    "FINISH_RETRY_TIMEOUT": 60.0,
}

REDIS_HOST = os.environ.get("JOBSTATUS_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("JOBSTATUS_REDIS_PORT", "63799"))
RQ_QUEUES = {
    "default": {"HOST": REDIS_HOST, "PORT": REDIS_PORT, "DB": 7, "DEFAULT_TIMEOUT": 60}
}
RQ = {
    "WORKER_CLASS": "django_jobstatus.contrib.rq.Worker",
    "JOB_CLASS": "django_jobstatus.contrib.rq.Job",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_jobstatus": {"handlers": ["console"], "level": "DEBUG"}},
}
