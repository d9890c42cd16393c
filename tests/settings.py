"""Minimal settings for the test suite; DATABASE_URL picks the database (SQLite in memory by default)."""

from __future__ import annotations

import os
from importlib.util import find_spec

import dj_database_url
import django

SECRET_KEY = "tests-only"  # noqa: S105
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

DATABASES = {"default": dj_database_url.config(default="sqlite://:memory:")}
if (
    os.environ.get("JOBSTATUS_TEST_DB")
    and "sqlite" not in DATABASES["default"]["ENGINE"]
):
    # Lets several suites share one PostgreSQL server at once. Not SQLite's: its name would
    # make the test database a file in the working directory, where each thread writes
    # through a connection of its own (the live server's, the health thread's), and a
    # test's first write after a read fails at once ("database is locked") while one of
    # them writes. SQLite's test database stays in memory, one per process.
    DATABASES["default"]["TEST"] = {"NAME": os.environ["JOBSTATUS_TEST_DB"]}
if "sqlite" not in DATABASES["default"]["ENGINE"]:
    # The second connection that track() writes through inside atomic blocks, declared so
    # that a test can name it in its ``databases`` (README: "Testing your jobs").
    DATABASES["default__jobstatus"] = {
        **DATABASES["default"],
        "TEST": {"MIRROR": "default"},
    }

# A replica of the default database, for JOBSTATUS["READ_DATABASE"] (tests/test_routers.py).
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_jobstatus",
]
# The api extra is optional: the core suite also runs without it.
HAS_API = all(
    find_spec(name) for name in ("rest_framework", "django_filters", "drf_spectacular")
)
if HAS_API:
    INSTALLED_APPS += ["rest_framework", "django_filters", "drf_spectacular"]
    REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}

# django-tasks-db's tables, for the db_worker tests (tests/contrib/test_tasks.py).
if find_spec("django_tasks_db"):
    INSTALLED_APPS += ["django_tasks_db"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

JOBSTATUS = {"FINISH_RETRY_TIMEOUT": 2.0}

if django.VERSION >= (6, 1):
    # Django 6.1 sends email through MAILERS (EMAIL_BACKEND is deprecated); the test
    # environment turns every mailer into the locmem one.
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend"}}
