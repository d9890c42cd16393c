"""Settings for the worker processes the integration tests start (Celery, RQ).

They use the test database of the suite that started them: its name comes in
JOBSTATUS_WORKER_DB, and JOBSTATUS_WORKER_DB_PORT points them at a proxy the test can
cut to make the database unreachable.
"""

from __future__ import annotations

import os

from tests.contrib import rq_jobs
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _TEST_DATABASES
from tests.settings import INSTALLED_APPS

DATABASES = {"default": {**_TEST_DATABASES["default"]}}
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
    # tests/contrib/test_rq_horses.py gives its workers a longer one.
    "PROGRESS_INTERVAL": float(
        os.environ.get("JOBSTATUS_WORKER_PROGRESS_INTERVAL", 0.01)
    ),
    "FINISH_RETRY_TIMEOUT": 60.0,
    # tests/contrib/test_heartbeats.py gives its workers a short one.
    "HEARTBEAT_TIMEOUT": float(
        os.environ.get("JOBSTATUS_WORKER_HEARTBEAT_TIMEOUT", 300)
    ),
}

RQ_QUEUES = rq_jobs.RQ_QUEUES
RQ = rq_jobs.RQ

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_jobstatus": {"handlers": ["console"], "level": "DEBUG"}},
}

# tests/contrib/test_heartbeats.py: a worker on a machine whose clock is off by this many
# seconds (negative: behind the database's).
if os.environ.get("JOBSTATUS_WORKER_CLOCK_OFFSET"):
    import datetime as _datetime

    from django.utils import timezone as _timezone

    _offset = _datetime.timedelta(
        seconds=float(os.environ["JOBSTATUS_WORKER_CLOCK_OFFSET"])
    )
    _real_now = _timezone.now
    _timezone.now = lambda: _real_now() + _offset

# tests/contrib/test_rq_alerts.py: alerts to its webhook, the monitored names read anew.
if os.environ.get("JOBSTATUS_WORKER_ALERT_WEBHOOK"):
    JOBSTATUS |= {
        "ALERT_WEBHOOKS": [os.environ["JOBSTATUS_WORKER_ALERT_WEBHOOK"]],
        "MONITOR_CACHE_TIMEOUT": 0.001,
    }
