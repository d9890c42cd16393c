"""The trivial task of bench/bench_integrations.py as a task of Django's tasks framework (import after setup)."""

from __future__ import annotations

from bench.integrations_jobs import noop as _noop
from django_jobstatus import compat

framework = compat.task_framework()
if framework is None:
    raise ImportError("the bench needs Django 6 or the django-tasks backport")


@framework.task()
def noop(i: int, n: int, key: str) -> int:
    return _noop(i, n, key)
