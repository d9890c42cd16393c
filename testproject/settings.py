"""The demo project: SQLite by default, PostgreSQL with DATABASE_URL (or JOBSTATUS_DB=postgres).

Not used by the test suite (tests/settings.py is), but smoke-tested by tests/test_testproject.py.
"""

from __future__ import annotations

import importlib.metadata
import os
from importlib.util import find_spec
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.config()}
elif os.environ.get("JOBSTATUS_DB") == "postgres":
    # The standard libpq variables: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "NAME": os.environ.get("PGDATABASE", "jobstatus"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            # The demo's live jobs write while the admin reads and purges: every transaction
            # takes the write lock when it begins (a deferred one that read first fails
            # with "database is locked" at once when another connection committed since).
            "OPTIONS": {
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
            },
        }
    }

HAS_API = all(
    find_spec(name) for name in ("rest_framework", "django_filters", "drf_spectacular")
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_jobstatus",
    "testproject",
]
if HAS_API:
    INSTALLED_APPS += ["rest_framework", "django_filters", "drf_spectacular"]
    if find_spec("drf_spectacular_sidecar"):
        INSTALLED_APPS += ["drf_spectacular_sidecar"]
    REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
    SPECTACULAR_SETTINGS = {
        "TITLE": "django-jobstatus demo API",
        # The package's version, not drf-spectacular's default 0.0.0.
        "VERSION": importlib.metadata.version("django-jobstatus"),
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
    }

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
STATIC_URL = "/static/"
LOGIN_URL = "admin:login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# The demo shows what runs without other services: Django's tasks framework, in-process.
# Its Celery and RQ runs are seeded history (their integrations need a broker, Redis and
# workers, which the test suite starts: tests/contrib), so they offer no Retry that could
# only fail, and the admin has no Django-RQ page whose Redis is away.
_INTEGRATIONS = [
    (
        "django_jobstatus.contrib.tasks",
        "django.tasks" if find_spec("django.tasks") else "django_tasks",
    ),
]
JOBSTATUS = {
    "PROGRESS_INTERVAL": 0.5,
    "INTEGRATIONS": [
        path
        for path, library in _INTEGRATIONS
        if find_spec(library) and find_spec(path)
    ],
}

# Django's tasks framework runs the demo's tasks in-process.
TASKS = {
    "default": {
        "BACKEND": "django.tasks.backends.immediate.ImmediateBackend"
        if find_spec("django.tasks")
        else "django_tasks.backends.immediate.ImmediateBackend"
    }
}

# What the demo jobs log goes to their runs' logs too (contrib.logging).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "jobstatus": {
            "class": "django_jobstatus.contrib.logging.JobLogHandler",
            "level": "INFO",
        },
    },
    "loggers": {
        "django_jobstatus": {"handlers": ["console"], "level": "INFO"},
        "testproject.jobs": {"handlers": ["jobstatus"], "level": "INFO"},
    },
}
