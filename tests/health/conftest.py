from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, JobRun, Status


@pytest.fixture
def past_run(db: None) -> Any:
    """Create a finished run ``ago`` before now that took ``took`` (default: succeeded, 1 s)."""

    def make(
        job_name: str = "tests.nightly",
        *,
        ago: timedelta = timedelta(minutes=1),
        took: timedelta = timedelta(seconds=1),
        status: str = Status.SUCCEEDED,
        **fields: Any,
    ) -> JobRun:
        created = timezone.now() - ago
        finished = status in Status.TERMINAL
        return JobRun.objects.create(
            job_name=job_name,
            status=status,
            created_at=created,
            queued_at=created,
            started_at=created,
            finished_at=created + took if finished else None,
            heartbeat_at=timezone.now(),
            **fields,
        )

    return make


@pytest.fixture
def monitor(past_run: Any) -> Any:
    """Create a JobMonitor (and a run of its job first, so that the name is known)."""

    def make(job_name: str = "tests.nightly", **fields: Any) -> JobMonitor:
        if not JobRun.objects.for_job(job_name).exists():
            past_run(job_name, ago=timedelta(days=1))
        fields.setdefault("created_at", timezone.now() - timedelta(days=30))
        return JobMonitor.objects.create(job_name=job_name, **fields)

    return make


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    health.monitored.clear()
    yield
    assert health.outbox.join(10), "the health thread did not finish its work"
    health.monitored.clear()
