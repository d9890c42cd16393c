"""What an RQ work horse connects to the database for, under a real rqworker.

A work horse is a fork: it cannot use its worker's connection, and a connection of its
own costs a connect and a cold server process (milliseconds, more than the job's record).
A job that wrote nothing is recorded by the worker's main process, which keeps its
connection open; what the job reported reaches it through the job's meta in Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import django_rq
import pytest
import rq
from rq import Callback

from django_jobstatus.contrib.rq import UNWRITTEN
from django_jobstatus.models import JobRun, Status
from tests.contrib import rq_jobs
from tests.contrib.dbproxy import Proxy
from tests.contrib.test_rq import RETRY_REQUESTED, finished, recorded, settle
from tests.contrib.workers import db_proxy
from tests.contrib.workers import rq_worker as started_rq_worker

__all__ = ["db_proxy"]  # a fixture

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("rq_on"),
]


@pytest.fixture
def run_jobs(
    db_proxy: Proxy, tmp_path: Any
) -> Iterator[Callable[..., tuple[list[JobRun], int]]]:
    """Run jobs one by one on a worker of their own: their runs, and the connections
    opened meanwhile (the worker's own included, when it opens it then)."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    with started_rq_worker(
        db_proxy,
        tmp_path / "worker.log",
        queue=rq_jobs.HORSE_QUEUE,
        prefix="jobstatus-horses",
        # Longer than a job takes: what it reports stays unwritten until its end.
        env={"JOBSTATUS_WORKER_PROGRESS_INTERVAL": "30"},
    ) as worker:

        def run(
            function: Callable[..., Any],
            *args: Any,
            times: int = 1,
            timeout: float = 60,
            **options: Any,
        ) -> Any:
            before = db_proxy.accepted
            runs = [
                finished(
                    recorded(queue.enqueue(function, *args, **options)), worker, timeout
                )
                for _ in range(times)
            ]
            settle(worker, rq_jobs.HORSE_QUEUE)  # the last horse has ended
            return runs, db_proxy.accepted - before

        yield run


def test_a_job_that_reports_and_succeeds_costs_its_horse_no_connection(
    run_jobs: Any,
) -> None:
    # Each job reports progress and logs a line, all of it left unwritten until its end.
    # The work horses used to connect to write it with the success: one connection a job.
    runs, opened = run_jobs(rq_jobs.report, 3, times=5)
    assert opened <= 1, f"{opened} connections for 5 jobs"  # the worker's own, at most
    for run in runs:
        assert run.status == Status.SUCCEEDED
        assert (run.progress_current, run.progress_total, run.step) == (
            3,
            3,
            "counting",
        )
        assert run.result == {"counted": 3}
        [line] = run.logs.all()
        assert (line.level, line.message) == (20, "counted 3 items")
        # The time it was logged in the horse, not the time the worker wrote it.
        assert run.started_at <= line.created_at <= run.finished_at
        # Not left in Redis for as long as RQ keeps the job.
        redis = django_rq.get_connection(rq_jobs.HORSE_QUEUE)
        meta = rq.job.Job.fetch(run.backend_job_id, connection=redis).meta
        assert UNWRITTEN not in meta, meta


def test_a_horse_with_more_lines_than_it_hands_over_writes_them_itself(
    run_jobs: Any,
) -> None:
    # 100 lines of a thousand characters: more than the 64 KB a horse hands over.
    [run], opened = run_jobs(rq_jobs.chatty, 100)
    assert run.status == Status.SUCCEEDED
    assert list(
        run.logs.order_by("created_at", "id").values_list("message", flat=True)
    ) == [f"line {i} {'x' * 1000}" for i in range(100)]
    assert 1 <= opened <= 2, opened  # the horse's, and the worker's own


def test_a_work_horse_checks_no_monitor_for_a_job_that_none_watches(
    run_jobs: Any,
) -> None:
    # Jobs that write their progress, no monitor: each work horse records its job's
    # success and connects once for it. Were the monitored names unknown to the horse, it
    # would queue a check for each of them, open a second connection for it and wait for
    # it before it ends.
    runs, opened = run_jobs(rq_jobs.report_written, 3, times=5)
    assert [run.status for run in runs] == [Status.SUCCEEDED] * 5
    # One connection a horse, and the worker's own.
    assert opened <= 5 + 1, f"{opened} connections for 5 jobs"


def test_what_a_job_reported_before_it_returned_retry_is_written_with_the_retry(
    run_jobs: Any,
) -> None:
    [run], opened = run_jobs(rq_jobs.retried_once, True)
    assert opened <= 1, opened
    assert (run.status, run.attempt, run.message) == (Status.SUCCEEDED, 2, "attempt 2")
    assert [(entry["status"], entry["error"]) for entry in run.attempts] == [
        ("retrying", RETRY_REQUESTED)
    ]
    assert (
        JobRun.objects.filter(source="rq", backend_job_id=run.backend_job_id).count()
        == 1
    )


@pytest.mark.parametrize("report", [True, False], ids=["reporting", "silent"])
def test_a_success_is_recorded_when_the_horse_of_an_earlier_attempt_recorded_its_own(
    run_jobs: Any, report: bool
) -> None:
    # The first attempt's horse wrote, and marked the job's meta so that its worker would
    # not record its outcome. That mark stayed for the second attempt, whose worker then
    # left its success unrecorded: the run stayed running.
    [run], opened = run_jobs(rq_jobs.retried_after_writing, report, timeout=20)
    assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, "done")
    assert run.message == ("attempt 2" if report else "attempt 1")


def test_what_a_job_reported_is_written_when_rq_fails_it_after_it_returned(
    run_jobs: Any,
) -> None:
    # The job's success callback raises: RQ fails the job after the horse handed over.
    [run], opened = run_jobs(
        rq_jobs.report, 2, on_success=Callback(rq_jobs.refuse_success)
    )
    assert (run.status, run.error) == (
        Status.FAILED,
        "RuntimeError: the success callback failed",
    )
    assert (run.progress_current, run.progress_total, run.step) == (2, 2, "counting")
    assert list(run.logs.values_list("message", flat=True)) == ["counted 2 items"]
