"""A task of Django's tasks framework for the demo: its runs can be retried from the admin.

The demo runs tasks in-process (the ImmediateBackend of settings.TASKS), so a Retry
enqueues the task again and it runs at once, recorded by the tasks integration.
"""

from __future__ import annotations

import time

from django_jobstatus import current_job

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


@task()
def charge_subscriptions(batch: int) -> dict[str, int]:
    """Charge one batch of subscriptions (a few seconds of pretend work)."""
    job = current_job()
    total = 20
    if job is not None:
        job.step("charge", total=total)
    for _ in range(total):
        time.sleep(0.02)
        if job is not None:
            job.advance()
    return {"batch": batch, "charged": total}
