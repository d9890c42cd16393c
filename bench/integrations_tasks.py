"""The trivial task of bench/bench_integrations.py as a task of Django's tasks framework (import after setup)."""

from __future__ import annotations

from bench.integrations_jobs import noop as _noop

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


@task()
def noop(i: int, n: int, key: str) -> int:
    return _noop(i, n, key)
