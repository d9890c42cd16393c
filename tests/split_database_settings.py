"""Settings of a project that keeps the app's tables on a database of its own (docs/scaling.md):
"default" (users, sessions, admin log) and "jobs" (the runs), two SQLite files named by
SPLIT_DIR (tests/test_split_database.py)."""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403

_DIR = os.environ["SPLIT_DIR"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": f"{_DIR}/default.sqlite3",
    },
    "jobs": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{_DIR}/jobs.sqlite3"},
}
JOBSTATUS = {"DATABASE": "jobs", "FINISH_RETRY_TIMEOUT": 2.0}
DATABASE_ROUTERS = ["django_jobstatus.routers.JobStatusRouter"]
