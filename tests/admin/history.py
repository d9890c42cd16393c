"""A run history for the big-table tests: finished runs of seven jobs, newest first."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from django_jobstatus.models import JobRun, Status, uuid7


def seven_jobs(count: int, *, start: int = 0) -> list[JobRun]:
    """``count`` finished runs of jobs ``job0`` to ``job6``, a minute apart, the newest now
    (``start`` minutes ago with ``start``)."""
    now = timezone.now()
    return JobRun.objects.bulk_create(
        JobRun(
            id=uuid7(),
            job_name=f"job{i % 7}",
            status=Status.SUCCEEDED,
            created_at=now - timedelta(minutes=i),
            finished_at=now - timedelta(minutes=i),
        )
        for i in range(start, start + count)
    )
