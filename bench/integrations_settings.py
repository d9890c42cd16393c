"""Settings of bench/bench_integrations.py and of the workers it starts.

The environment says what to record: BENCH_RECORD is ``none``, ``ours`` (the
integration of BENCH_SYSTEM: celery, rq or tasks) or ``dcr`` (django-celery-results).
BENCH_DATABASE_URL names the scratch database (BENCH_DB_PORT, when set, points the
workers at a counting proxy in front of it) and BENCH_REDIS_URL the Redis of the
broker and the queues.
"""

from __future__ import annotations

import os

import dj_database_url

from bench.settings import *  # noqa: F403
from bench.settings import INSTALLED_APPS

RECORD = os.environ.get("BENCH_RECORD", "none")
SYSTEM = os.environ.get("BENCH_SYSTEM", "")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

DATABASES = {"default": dj_database_url.parse(os.environ["BENCH_DATABASE_URL"])}
if os.environ.get("BENCH_DB_PORT"):
    DATABASES["default"]["HOST"] = "127.0.0.1"
    DATABASES["default"]["PORT"] = int(os.environ["BENCH_DB_PORT"])
    # The counting proxy reads the protocol: no TLS.
    DATABASES["default"]["OPTIONS"] = {"sslmode": "disable"}

INSTALLED_APPS = [
    *INSTALLED_APPS,
    *(app for app in ("django_rq", "django_tasks_db") if app not in INSTALLED_APPS),
]

JOBSTATUS = {
    "INTEGRATIONS": [f"django_jobstatus.contrib.{SYSTEM}"]
    if RECORD == "ours" and SYSTEM
    else [],
}

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}

RQ_QUEUES = {"bench": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600}}
RQ = (
    {
        "WORKER_CLASS": "django_jobstatus.contrib.rq.Worker",
        "JOB_CLASS": "django_jobstatus.contrib.rq.Job",
        "QUEUE_CLASS": "django_jobstatus.contrib.rq.Queue",
    }
    if RECORD == "ours"
    else {}
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
