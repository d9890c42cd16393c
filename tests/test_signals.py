"""job_status_changed: every committed move announced once, each with the run as that
move left it, and a receiver's error logged, never raised into what made the move.

Transactional: the signals go out after real commits, not through the test's hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_jobstatus import track
from django_jobstatus.models import JobRun, Status
from django_jobstatus.signals import job_status_changed

pytestmark = pytest.mark.django_db(transaction=True)

UID = "tests.test_signals"


@pytest.fixture
def raising_receiver(caplog: pytest.LogCaptureFixture) -> Iterator[list[Any]]:
    """A user's receiver with a bug: it notes every signal, then raises."""
    seen: list[tuple[Any, str, str]] = []

    def receiver(
        sender: Any, run: JobRun, previous: str, status: str, **kw: Any
    ) -> None:
        seen.append((run.pk, str(previous), str(status)))
        raise RuntimeError("a receiver's bug")

    job_status_changed.connect(receiver, sender=JobRun, dispatch_uid=UID)
    caplog.set_level(logging.ERROR, logger="django_jobstatus.models")
    yield seen
    job_status_changed.disconnect(sender=JobRun, dispatch_uid=UID)
    # Each error is logged, with the run it was about.
    failures = [
        r
        for r in caplog.get_records("call")
        if "job_status_changed receiver" in r.message
    ]
    assert len(failures) == len(seen)
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)


def test_a_reap_announces_every_run_it_marks_lost_though_a_receiver_raises(
    make_run: Any, raising_receiver: list[Any]
) -> None:
    """The three lost runs committed in one transaction: the first receiver's error
    dropped the other two announcements (a monitor, a batch's parent never heard of
    those ends), and the reap raised with batches still to do."""
    old = timezone.now() - timedelta(hours=2)
    runs = [
        make_run(f"tests.stale{i}", heartbeat_at=old, started_at=old) for i in range(3)
    ]
    JobRun.objects.reap(600)
    lost = set(JobRun.objects.filter(status=Status.LOST).values_list("pk", flat=True))
    assert lost == {run.pk for run in runs}
    assert {
        pk for pk, _previous, status in raising_receiver if status == Status.LOST
    } == lost


def test_a_forced_kill_is_not_cut_short_by_a_raising_receiver(
    make_run: Any, raising_receiver: list[Any]
) -> None:
    """The receiver's error came out of the first run's end: that run was recorded
    killed but its task system never told, and the others stayed running."""
    runs = [make_run(f"tests.kill{i}") for i in range(3)]
    result = JobRun.objects.filter(pk__in=[run.pk for run in runs]).request_kill(
        force=True
    )
    assert result.killed == 3
    assert list(JobRun.objects.values_list("status", flat=True)) == [Status.KILLED] * 3


def test_a_receiver_s_error_does_not_fail_a_tracked_job_that_succeeded(
    raising_receiver: list[Any],
) -> None:
    """The block raised the receiver's error after its run was committed succeeded: a
    task system would record a failure (and may retry: the job twice) while the record
    said succeeded."""
    with track("tests.ok"):
        pass
    run = JobRun.objects.get()
    assert run.status == Status.SUCCEEDED
    assert raising_receiver == [(run.pk, Status.RUNNING, Status.SUCCEEDED)]


def test_each_signal_s_run_is_as_its_move_left_it(make_run: Any) -> None:
    """A batch's parent settled by the reaper (its refresh missed) moves queued →
    running → succeeded in one transaction: both signals carried the same instance,
    and the "running" one's run read succeeded, with its end."""
    old = timezone.now() - timedelta(hours=2)
    parent = make_run(
        "tests.batch", status=Status.QUEUED, worker="", progress_total=1, queued_at=old
    )
    child = make_run(
        "tests.child", status=Status.SUCCEEDED, parent=parent, started_at=old
    )
    JobRun.objects.filter(pk__in=[parent.pk, child.pk]).update(
        updated_at=old, created_at=old
    )
    seen: list[tuple[str, str, str, bool]] = []

    def receiver(
        sender: Any, run: JobRun, previous: str, status: str, **kw: Any
    ) -> None:
        if run.pk == parent.pk:
            seen.append((previous, status, run.status, run.finished_at is None))

    job_status_changed.connect(receiver, sender=JobRun, dispatch_uid=UID)
    try:
        JobRun.objects.reap(600, queued_timeout=600)
    finally:
        job_status_changed.disconnect(sender=JobRun, dispatch_uid=UID)
    assert JobRun.objects.get(pk=parent.pk).status == Status.SUCCEEDED
    assert seen == [
        (Status.QUEUED, Status.RUNNING, Status.RUNNING, True),
        (Status.RUNNING, Status.SUCCEEDED, Status.SUCCEEDED, False),
    ]
