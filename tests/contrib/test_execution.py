"""What one task execution costs the database: a statement for running, one for the end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from django_jobstatus.contrib._execution import Execution
from django_jobstatus.models import JobRun, Status
from django_jobstatus.signals import job_status_changed

pytestmark = pytest.mark.django_db(transaction=True)


def execution(run: JobRun, attempt: int = 1) -> Execution:
    return Execution(
        run.source, run.backend_job_id, run.job_name, worker="w:1", attempt=attempt
    )


def test_a_queued_task_starts_and_ends_in_one_statement_each(
    make_run: Callable[..., JobRun], django_assert_num_queries: Any
) -> None:
    queued = make_run(status=Status.QUEUED, source="celery", backend_job_id="t-1")
    moves: list[tuple[str, str]] = []

    def record(sender: Any, run: JobRun, previous: str, status: str, **_: Any) -> None:
        moves.append((previous, status))

    job_status_changed.connect(record, weak=False, dispatch_uid="test-execution")
    try:
        task = execution(queued)
        with django_assert_num_queries(1):  # UPDATE … RETURNING
            task.start()
        assert task.handle is not None
        run = task.handle.run
        assert (run.pk, run.status, run.worker, run.attempt) == (
            queued.pk,
            Status.RUNNING,
            "w:1",
            1,
        )
        assert run.started_at is not None and run.heartbeat_at is not None
        assert not task.created
        with django_assert_num_queries(1):  # the conditional UPDATE to succeeded
            task.end(result={"n": 1})
        task.close()
    finally:
        job_status_changed.disconnect(dispatch_uid="test-execution")
    queued.refresh_from_db()
    assert (queued.status, queued.result) == (Status.SUCCEEDED, {"n": 1})
    assert queued.queued_at <= queued.started_at <= queued.finished_at
    assert moves == [
        (Status.QUEUED, Status.RUNNING),
        (Status.RUNNING, Status.SUCCEEDED),
    ]


def test_the_start_sees_a_kill_requested_while_queued(
    make_run: Callable[..., JobRun],
) -> None:
    queued = make_run(status=Status.QUEUED, source="rq", backend_job_id="t-2")
    queued.request_kill()
    task = execution(queued, attempt=2)
    task.start()
    assert task.handle is not None
    assert task.handle.run.kill_requested
    assert task.handle.run.attempt == 2  # the attempt the task system counts
    task.close()


def test_a_worker_name_longer_than_its_column_is_cut_when_the_run_starts(
    make_run: Callable[..., JobRun],
) -> None:
    """The start of a queued run (one UPDATE … RETURNING) wrote ``worker`` as given: a
    Celery hostname or WORKER_NAME of 300 characters failed the UPDATE on PostgreSQL, and
    the run stayed ``queued`` while its task ran. It is cut as every other write cuts it."""
    queued = make_run(status=Status.QUEUED, source="celery", backend_job_id="t-5")
    task = Execution(queued.source, "t-5", queued.job_name, worker="w" * 300)
    task.start()
    task.close()
    queued.refresh_from_db()
    assert queued.status != Status.QUEUED
    assert queued.worker.startswith("w" * 200) and len(queued.worker) == 255


def test_a_retry_sent_while_its_attempt_runs_records_when_it_is_due(
    make_run: Callable[..., JobRun],
) -> None:
    """Celery and RQ send a retry with a delay while the failed attempt still runs: the
    run stays running, and the time the retry is due is kept for the queued timeout."""
    from django.utils import timezone

    from django_jobstatus.contrib._execution import record_queued

    running = make_run(status=Status.RUNNING, source="celery", backend_job_id="t-6")
    due = timezone.now() + timedelta(hours=1)
    assert record_queued("celery", "t-6", running.job_name, due_at=due) is None
    running.refresh_from_db()
    assert (running.status, running.due_at) == (Status.RUNNING, due)


def test_a_task_taken_after_the_reaper_ended_its_run_stops_and_says_so(
    make_run: Callable[..., JobRun],
) -> None:
    """QUEUED_TIMEOUT ended the run killed while no Celery worker was up to take the
    revoke; a worker takes the task later. Its run stays killed, the job stops at its
    first check, and a line on the run says a worker took it."""
    from django_jobstatus import JobKilled

    queued = make_run(status=Status.QUEUED, source="celery", backend_job_id="t-4")
    JobRun.objects.filter(pk=queued.pk).update(
        queued_at=queued.created_at - timedelta(hours=2)
    )
    assert JobRun.objects.reap(300, queued_timeout=600).expired == 1
    task = execution(queued)
    task.start()
    assert task.killed_before_start and task.handle is not None
    with pytest.raises(JobKilled):
        task.handle.check_kill()
    task.close()
    queued.refresh_from_db()
    assert queued.status == Status.KILLED
    assert queued.logs.filter(
        message__startswith="Worker w:1 took this task after its run had ended killed"
    ).exists()


def test_a_task_with_no_queued_run_gets_a_new_one(
    make_run: Callable[..., JobRun],
) -> None:
    finished = make_run(status=Status.SUCCEEDED, source="celery", backend_job_id="t-3")
    task = execution(finished)
    task.start()
    assert task.created
    assert task.handle is not None
    assert task.handle.run.pk != finished.pk
    assert task.handle.run.status == Status.RUNNING
    task.close()
