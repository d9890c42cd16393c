"""The RQ integration, end to end: a real Redis and a real rqworker (forking Worker)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import django_rq
import pytest
import redis
import rq
import rq.registry
from django.core.management import call_command
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rq import Callback, Retry
from rq.job import Dependency

from django_jobstatus import contrib
from django_jobstatus.contrib import rq as jobstatus_rq
from django_jobstatus.exceptions import RetryRefused
from django_jobstatus.models import JobRun, Status
from django_jobstatus.tracking import tracking_database
from tests.contrib import rq_jobs
from tests.contrib.dbproxy import Proxy
from tests.contrib.workers import (
    db_proxy,
    kept_until_due,
    kill_from_admin,
    refreshed,
)
from tests.contrib.workers import rq_worker as started_rq_worker
from tests.waiting import wait_for

__all__ = ["db_proxy"]  # a fixture

QUEUE = rq_jobs.QUEUE
# The error of an attempt whose job returned rq.Retry (RQ stores none).
RETRY_REQUESTED = "Retry requested by the job (it returned rq.Retry)."


@pytest.fixture
def queue(rq_on: None) -> rq.Queue:
    return django_rq.get_queue(QUEUE)


@pytest.fixture
def local_queue(rq_on: None) -> rq.Queue:
    """A queue no rqworker listens to: for SimpleWorkers in this process."""
    queue = django_rq.get_queue(rq_jobs.LOCAL_QUEUE)
    queue.empty()
    return queue


@pytest.fixture(scope="module")
def rq_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Popen[bytes]]:
    log = tmp_path_factory.mktemp("rq") / "worker.log"
    with started_rq_worker(
        db_proxy, log, queue=QUEUE, prefix="jobstatus-tests"
    ) as process:
        yield process


def _idle(worker: Popen[bytes], queue: str) -> bool:
    connection = redis.Redis.from_url(rq_jobs.REDIS_URL)
    key = f"{rq.Worker.redis_worker_namespace_prefix}{worker.rq_name}"  # type: ignore[attr-defined]
    found = rq.Worker.find_by_key(key, connection=connection)
    return (
        found is not None
        and found.get_state() == "idle"
        and rq.Queue(queue, connection=connection).count == 0
    )


def settle(worker: Popen[bytes], queue: str = QUEUE) -> None:
    """Wait until the worker is idle and its queue empty."""
    wait_for(
        lambda: _idle(worker, queue),
        timeout=60,
        what="the RQ worker to be idle",
        process=worker,
        log=worker.log,  # type: ignore[attr-defined]
    )


def recorded(job: rq.job.Job) -> JobRun:
    run = jobstatus_rq.find_run(job.id)
    assert run is not None, f"no run recorded for job {job.id}"
    return run


def finished(run: JobRun, worker: Popen[bytes], timeout: float = 60) -> JobRun:
    log: Path = worker.log  # type: ignore[attr-defined]
    wait_for(
        lambda: refreshed(run).is_finished,
        timeout=timeout,
        what=f"run {run.pk} to finish",
        process=worker,
        log=log,
    )
    return run


def _running(run: JobRun, job: rq.job.Job, worker: Popen[bytes]) -> None:
    """Wait until ``job`` runs in its work horse (RQ's STARTED is set by the horse)."""
    wait_for(
        lambda: (
            refreshed(run).status == Status.RUNNING
            and job.get_status(refresh=True) == rq.job.JobStatus.STARTED
        ),
        timeout=60,
        what="the job to start in its work horse",
        process=worker,
        log=worker.log,  # type: ignore[attr-defined]
    )


def test_connect_and_disconnect_are_idempotent() -> None:
    jobstatus_rq.connect()
    jobstatus_rq.connect()
    assert contrib.can_retry(JobRun(source="rq"))
    jobstatus_rq.disconnect()
    jobstatus_rq.disconnect()
    assert not contrib.can_retry(JobRun(source="rq"))


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_nothing_is_recorded_until_connected(local_queue: rq.Queue) -> None:
    jobstatus_rq.disconnect()
    job = local_queue.enqueue(rq_jobs.add, 1, 2)
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert (
        rq.job.Job.fetch(job.id, connection=local_queue.connection).return_value() == 3
    )
    assert not JobRun.objects.exists()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_simple_worker_in_this_process_records_its_jobs(
    local_queue: rq.Queue,
) -> None:
    """SimpleWorker runs the jobs here (on any database): success with progress, and failure."""
    good = local_queue.enqueue(rq_jobs.report, 4)
    bad = local_queue.enqueue(rq_jobs.fail, "nope")
    assert recorded(good).status == Status.QUEUED
    worker = jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    )
    worker.work(burst=True)
    run = recorded(good)
    assert run.status == Status.SUCCEEDED
    assert (run.progress_current, run.progress_total, run.result) == (
        4,
        4,
        {"counted": 4},
    )
    assert list(run.logs.values_list("message", flat=True)) == ["counted 4 items"]
    failed = recorded(bad)
    assert failed.status == Status.FAILED
    assert failed.error == "ValueError: nope"
    assert "raise ValueError(text)" in failed.traceback


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_that_returns_retry_is_a_retry_of_its_run(local_queue: rq.Queue) -> None:
    """RQ retries a job that returned ``rq.Retry``: that attempt did not succeed, and the
    next one is attempt 2 of the same run (it was recorded succeeded, the retry a new run)."""
    job = local_queue.enqueue(rq_jobs.retried_once, True)
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert job.get_status(refresh=True) == rq.job.JobStatus.FINISHED
    runs = list(JobRun.objects.filter(source="rq", backend_job_id=job.id))
    assert [(run.status, run.attempt, run.result) for run in runs] == [
        (Status.SUCCEEDED, 2, "done")
    ]
    assert [(entry["status"], entry["error"]) for entry in runs[0].attempts] == [
        ("retrying", RETRY_REQUESTED)
    ]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_rq_fails_after_it_returned_is_recorded_failed(
    local_queue: rq.Queue,
) -> None:
    """A success callback that raises makes RQ fail the job after its function returned."""
    job = local_queue.enqueue(
        rq_jobs.report, 2, on_success=Callback(rq_jobs.refuse_success)
    )
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED
    run = recorded(job)
    assert (run.status, run.error) == (
        Status.FAILED,
        "RuntimeError: the success callback failed",
    )
    assert run.progress_current == 2  # what the job reported is kept


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_cancel_that_races_the_retry_s_queued_record_still_ends_the_run_killed(
    local_queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that schedules a retry moves the run retrying → queued: when that lands
    between the kill's read of the run and its write, the run is read again and killed
    (it stayed queued, with the job canceled: a run no worker would ever end)."""
    job = local_queue.enqueue(rq_jobs.add, 1, 2)
    run = recorded(job)
    run.mark_running()
    run.mark_failed(RuntimeError("attempt 1 failed"), retry=True)
    own_mark_killed = JobRun.mark_killed
    raced: list[bool] = []

    def after_the_worker_s_move(self: JobRun, **fields: Any) -> None:
        if not raced:
            raced.append(True)
            JobRun.objects.get(pk=self.pk).mark_queued()  # the worker, just before
        own_mark_killed(self, **fields)

    monkeypatch.setattr(JobRun, "mark_killed", after_the_worker_s_move)
    assert JobRun.objects.filter(pk=run.pk).request_kill() == 1
    assert raced == [True]
    assert (refreshed(run).status, run.attempt) == (Status.KILLED, 2)
    assert job.get_status(refresh=True) == rq.job.JobStatus.CANCELED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_kill_waits_for_a_retry_being_scheduled_before_it_cancels_it(
    local_queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ's retry marks the job scheduled at once and registers it in a pipeline the worker
    runs a moment later: a cancel in between was undone (the job ran again)."""
    job = local_queue.enqueue(rq_jobs.add, 1, 2)
    run = recorded(job)
    job.set_status(rq.job.JobStatus.SCHEDULED)  # the worker's retry, half done
    own_scheduling = jobstatus_rq._scheduling
    seen: list[bool] = []

    def then_the_worker_s_pipeline(job: rq.job.Job, connection: Any) -> bool:
        pending = own_scheduling(job, connection)
        if pending and not seen:
            seen.append(True)
            local_queue.schedule_job(job, timezone.now() + timedelta(minutes=5))
        return pending

    monkeypatch.setattr(jobstatus_rq, "_scheduling", then_the_worker_s_pipeline)
    assert JobRun.objects.filter(pk=run.pk).request_kill() == 1
    assert seen == [True]
    assert job.get_status(refresh=True) == rq.job.JobStatus.CANCELED
    assert job.id not in rq.registry.ScheduledJobRegistry(queue=local_queue)
    assert refreshed(run).status == Status.KILLED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_each_execution_of_a_repeated_job_is_a_run_that_succeeded(
    local_queue: rq.Queue,
) -> None:
    """rq.Repeat enqueues the job again under its id after each success."""
    job = local_queue.enqueue(rq_jobs.add, 1, 2, repeat=rq.Repeat(times=2))
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    runs = JobRun.objects.filter(source="rq", backend_job_id=job.id)
    assert [(run.status, run.result, run.attempts) for run in runs] == [
        (Status.SUCCEEDED, 3, [])
    ] * 3


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_queued_job_canceled_through_rq_ends_its_run_killed(
    local_queue: rq.Queue,
) -> None:
    """job.cancel() on a job of the configured Job class; what waited for it is not run."""
    job = local_queue.enqueue(rq_jobs.add, 1, 2)
    child = local_queue.enqueue(rq_jobs.add, 3, 4, depends_on=job)
    fetched = local_queue.fetch_job(job.id)
    assert isinstance(fetched, jobstatus_rq.Job)
    fetched.cancel()
    run = recorded(job)
    assert (run.status, run.message) == (Status.KILLED, "Canceled before it ran.")
    waited = recorded(child)
    assert waited.status == Status.KILLED
    assert job.id in waited.message


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_queued_job_deleted_through_rq_ends_its_run_killed(
    local_queue: rq.Queue,
) -> None:
    """job.delete() on a queued job of the configured Job class: RQ has no job any more
    and no worker will run it, but its run said ``queued`` for good."""
    job = local_queue.enqueue(rq_jobs.add, 1, 2)
    fetched = local_queue.fetch_job(job.id)
    assert isinstance(fetched, jobstatus_rq.Job)
    fetched.delete()
    assert not local_queue.connection.exists(job.key)
    run = recorded(job)
    assert (run.status, run.message) == (
        Status.KILLED,
        "Deleted through RQ before it ran.",
    )


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_jobs_deleted_with_their_dependency_end_their_runs_killed(
    local_queue: rq.Queue,
) -> None:
    """job.delete(delete_dependents=True) deletes the jobs that wait for it too, through
    RQ's own Job class: the job's run ended killed, theirs said ``queued`` for good."""
    first = local_queue.enqueue(rq_jobs.add, 1, 2)
    waiting = local_queue.enqueue(rq_jobs.add, 3, 4, depends_on=first)
    assert recorded(waiting).status == Status.QUEUED
    local_queue.fetch_job(first.id).delete(delete_dependents=True)
    assert not local_queue.connection.exists(waiting.key)
    assert [
        (recorded(job).status, recorded(job).message) for job in (first, waiting)
    ] == [(Status.KILLED, "Deleted through RQ before it ran.")] * 2


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_jobs_of_a_queue_emptied_through_rq_end_their_runs_killed(
    local_queue: rq.Queue,
) -> None:
    """queue.empty() (django-rq's admin *Empty queue*) deletes every queued job from
    Redis: their runs said ``queued`` for good. They are found in one query."""
    jobs = [local_queue.enqueue(rq_jobs.add, n, n) for n in range(3)]
    assert isinstance(local_queue, jobstatus_rq.Queue)
    with CaptureQueriesContext(connections[tracking_database()]) as captured:
        local_queue.empty()
    assert not any(local_queue.connection.exists(job.key) for job in jobs)
    runs = [recorded(job) for job in jobs]
    assert [(run.status, run.message) for run in runs] == [
        (Status.KILLED, "Deleted through RQ before it ran.")
    ] * 3
    reads = [query for query in captured if query["sql"].startswith("SELECT")]
    assert len(reads) == 1, reads


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_deferred_dependents_of_an_emptied_queue_end_killed(
    local_queue: rq.Queue,
) -> None:
    """queue.empty() deletes the queued jobs and their lists of dependents, not the
    deferred jobs that wait for them: RQ keeps those deferred for good (nothing will
    enqueue them), and their runs said ``queued`` for good."""
    first = local_queue.enqueue(rq_jobs.add, 1, 2)
    waiting = local_queue.enqueue(rq_jobs.add, 3, 4, depends_on=first)
    assert recorded(waiting).status == Status.QUEUED
    local_queue.empty()
    assert not local_queue.connection.exists(first.key)
    assert waiting.get_status(refresh=True) == rq.job.JobStatus.DEFERRED
    assert recorded(first).status == Status.KILLED
    run = recorded(waiting)
    assert run.status == Status.KILLED, run.status
    assert first.id in run.message


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_grandchildren_of_a_job_deleted_with_its_dependents_end_killed(
    local_queue: rq.Queue,
) -> None:
    """A -> B -> C; A.delete(delete_dependents=True): RQ deletes B (not recursively), and
    C, whose dependency B is gone, stays deferred for good: its run said ``queued``."""
    a = local_queue.enqueue(rq_jobs.add, 1, 2)
    b = local_queue.enqueue(rq_jobs.add, 3, 4, depends_on=a)
    c = local_queue.enqueue(rq_jobs.add, 5, 6, depends_on=b)
    local_queue.fetch_job(a.id).delete(delete_dependents=True)
    assert not local_queue.connection.exists(b.key)
    assert c.get_status(refresh=True) == rq.job.JobStatus.DEFERRED  # for good
    assert recorded(b).status == Status.KILLED
    run = recorded(c)
    assert run.status == Status.KILLED, run.status
    assert b.id in run.message


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_left_waiting_by_a_deleted_job_ends_killed_unless_another_enqueues_it(
    local_queue: rq.Queue,
) -> None:
    """A plain delete leaves the jobs that wait for it deferred: for good when they wait
    for nothing else; one that also waits for a job still queued is enqueued when that
    one succeeds (RQ skips a deleted dependency), and stays queued."""
    first = local_queue.enqueue(rq_jobs.add, 1, 2)
    other = local_queue.enqueue(rq_jobs.add, 3, 4)
    alone = local_queue.enqueue(rq_jobs.add, 5, 6, depends_on=first)
    both = local_queue.enqueue(rq_jobs.add, 7, 8, depends_on=[first, other])
    local_queue.fetch_job(first.id).delete()
    assert recorded(alone).status == Status.KILLED
    assert recorded(both).status == Status.QUEUED
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert (recorded(both).status, recorded(both).result) == (Status.SUCCEEDED, 15)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_jobs_waiting_for_a_failed_job_end_killed(local_queue: rq.Queue) -> None:
    """RQ keeps them deferred for ever; one that allows the failure runs."""
    parent = local_queue.enqueue(rq_jobs.fail, "boom")
    child = local_queue.enqueue(rq_jobs.add, 1, 2, depends_on=parent)
    grandchild = local_queue.enqueue(rq_jobs.add, 3, 4, depends_on=child)
    tolerant = local_queue.enqueue(
        rq_jobs.add, 5, 6, depends_on=Dependency(jobs=[parent], allow_failure=True)
    )
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert recorded(parent).status == Status.FAILED
    assert child.get_status(refresh=True) == rq.job.JobStatus.DEFERRED
    for waiting, dependency in ((child, parent), (grandchild, child)):
        run = recorded(waiting)
        assert run.status == Status.KILLED
        assert dependency.id in run.message
    assert (recorded(tolerant).status, recorded(tolerant).result) == (
        Status.SUCCEEDED,
        11,
    )


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_that_allows_failures_of_a_canceled_job_ends_killed(
    local_queue: rq.Queue,
) -> None:
    """RQ never runs a job that waits for a canceled (or stopped) one, even one that
    allows its dependency's failure (``dependencies_are_met()``): its run said
    ``queued`` for good, as if RQ would enqueue it."""
    parent = local_queue.enqueue(rq_jobs.add, 1, 2)
    tolerant = local_queue.enqueue(
        rq_jobs.add, 5, 6, depends_on=Dependency(jobs=[parent], allow_failure=True)
    )
    local_queue.fetch_job(parent.id).cancel()
    assert recorded(parent).status == Status.KILLED
    assert tolerant.get_status(refresh=True) == rq.job.JobStatus.DEFERRED  # for good
    assert recorded(tolerant).status == Status.KILLED, recorded(tolerant).status


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_failed_job_requeued_by_django_rq_s_requeue_action_is_a_new_queued_run(
    local_queue: rq.Queue,
) -> None:
    """django-rq's admin *Requeue* action on the jobs selected enqueues RQ's own Job
    through the queue class (``django_rq.utils.requeue_job()``)."""
    from django_rq.utils import requeue_job

    job = local_queue.enqueue(rq_jobs.fail, "boom")
    worker = jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    )
    worker.work(burst=True)
    first = recorded(job)
    assert first.status == Status.FAILED
    requeue_job(
        local_queue, rq.job.Job.fetch(job.id, connection=local_queue.connection)
    )
    assert job.get_status(refresh=True) == rq.job.JobStatus.QUEUED
    newest = recorded(job)
    assert (newest.pk != first.pk, newest.status) == (True, Status.QUEUED)
    worker.work(burst=True)
    assert refreshed(newest).status == Status.FAILED
    assert JobRun.objects.filter(source="rq", backend_job_id=job.id).count() == 2


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("function", "args", "ended"),
    [(rq_jobs.add, (1, 2), Status.SUCCEEDED), (rq_jobs.fail, ("boom",), Status.FAILED)],
)
def test_a_job_enqueued_again_under_its_id_after_its_run_ended_is_a_new_queued_run(
    local_queue: rq.Queue,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    ended: str,
) -> None:
    """An explicit ``job_id`` reused for a new enqueue (``"nightly-…"``, to keep one job
    of a kind): the newest run said it had ended while RQ held the job queued (a kill
    could not reach it, the queued timeout never saw it)."""
    job_id = f"nightly-{uuid.uuid4().hex[:8]}"
    local_queue.enqueue(function, *args, job_id=job_id)
    worker = jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    )
    worker.work(burst=True)
    first = jobstatus_rq.find_run(job_id)
    assert first is not None and first.status == ended
    again = local_queue.enqueue(function, *args, job_id=job_id)
    assert again.get_status(refresh=True) == rq.job.JobStatus.QUEUED
    newest = recorded(again)
    assert (newest.pk != first.pk, newest.status) == (True, Status.QUEUED)
    worker.work(burst=True)
    assert (refreshed(newest).status, refreshed(first).status) == (ended, ended)
    assert JobRun.objects.filter(source="rq", backend_job_id=job_id).count() == 2


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "args",
    [({1: "one", 2: "two"}, 1), ({"pair": (1, 2)}, "pair")],
    ids=["int-keys", "tuple"],
)
def test_a_job_whose_arguments_json_reshapes_is_not_retried(
    local_queue: rq.Queue, args: tuple[Any, ...]
) -> None:
    """RQ pickles a job's arguments: the job got ``{1: "one"}`` and a tuple as they
    were, and the retry sent back what the run's JSON params kept (``{"1": "one"}``, a
    list), so the retried job found nothing where its first run had found "one", while
    the answer said it was enqueued again with the same arguments."""
    job = local_queue.enqueue(rq_jobs.lookup, *args)
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    run = recorded(job)
    assert run.status == Status.SUCCEEDED
    with pytest.raises(RetryRefused, match="a tuple or a mapping with keys"):
        contrib.retry(run)
    assert run.params["reshaped"] is True
    assert JobRun.objects.filter(job_name=run.job_name).count() == 1
    # Arguments JSON gives back as they were are retried as before.
    plain = local_queue.enqueue(rq_jobs.lookup, {"1": "one"}, "1")
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert "reshaped" not in recorded(plain).params
    assert contrib.retry(recorded(plain)).status == Status.QUEUED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_new_job_under_the_id_of_a_killed_run_is_a_new_run_and_runs(
    local_queue: rq.Queue,
) -> None:
    """A fixed id of a recurring job (``job_id="nightly-…"``) whose last run was killed:
    the caller's new job under it was recorded nowhere, and every worker refused it (the
    id's newest run said killed), so the job never ran again. RQ's own enqueues of the
    killed job (a retry, a dependent) still find it killed."""
    job_id = f"nightly-{uuid.uuid4().hex[:8]}"
    job = local_queue.enqueue(rq_jobs.add, 1, 2, job_id=job_id)
    assert JobRun.objects.filter(pk=recorded(job).pk).request_kill() == 1
    local_queue.enqueue(rq_jobs.add, 3, 4, job_id=job_id)
    runs = JobRun.objects.filter(source="rq", backend_job_id=job_id).order_by("pk")
    assert [run.status for run in runs] == [Status.KILLED, Status.QUEUED]
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert [(run.status, run.result) for run in runs.all()] == [
        (Status.KILLED, None),
        (Status.SUCCEEDED, 7),
    ]
    assert local_queue.fetch_job(job_id).get_status() == rq.job.JobStatus.FINISHED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_bound_method_job_is_named_by_its_class_and_its_retry_refused(
    local_queue: rq.Queue,
) -> None:
    """RQ keeps the instance in the job, not the run: a retry could not run it again."""
    job = local_queue.enqueue(rq_jobs.Calculator(40).add, 2)
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    run = recorded(job)
    assert (run.status, run.result, run.job_name) == (
        Status.SUCCEEDED,
        42,
        "tests.contrib.rq_jobs.Calculator.add",
    )
    with pytest.raises(ValueError, match="method of an instance"):
        contrib.retry(run)
    # A classmethod is found again from its name.
    run.job_name = "tests.contrib.rq_jobs.Calculator.double"
    again = contrib.retry(run)
    assert again.job_name == run.job_name


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_scheduled_for_later_is_not_ended_before_it_is_due(
    local_queue: rq.Queue,
) -> None:
    """``enqueue_in()`` / ``enqueue_at()``: the queued timeout counted the wait from the
    enqueue, and the reaper ended the run killed ("its message was probably lost") and
    canceled the RQ job one timeout later, however far ahead it was due."""
    from datetime import timedelta

    job = local_queue.enqueue_in(timedelta(hours=1), rq_jobs.add, 1, 2)
    kept_until_due(recorded(job), timedelta(hours=1))
    assert job.get_status(refresh=True) == rq.job.JobStatus.SCHEDULED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_enqueue_many_records_each_job_queued(local_queue: rq.Queue) -> None:
    first = local_queue.enqueue(rq_jobs.add, 0, 0)
    jobs = local_queue.enqueue_many(
        [
            rq.Queue.prepare_data(rq_jobs.add, (1, 1)),
            rq.Queue.prepare_data(rq_jobs.add, (2, 2), job_id=f"many-{uuid.uuid4()}"),
            rq.Queue.prepare_data(rq_jobs.add, (3, 3), depends_on=first),
        ]
    )
    runs = [recorded(job) for job in jobs]
    assert [(run.status, run.params["args"]) for run in runs] == [
        (Status.QUEUED, [n, n]) for n in (1, 2, 3)
    ]
    assert JobRun.objects.count() == 4  # one each
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert [refreshed(run).result for run in runs] == [2, 4, 6]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_enqueue_many_forgets_its_runs_when_the_push_fails(
    local_queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: Any, *args: Any, **kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("refused")

    monkeypatch.setattr(redis.client.Pipeline, "execute", refused)
    with pytest.raises(redis.exceptions.ConnectionError):
        local_queue.enqueue_many([rq.Queue.prepare_data(rq_jobs.add, (1, 1))])
    monkeypatch.undo()
    assert not JobRun.objects.exists()


@pytest.mark.usefixtures("rq_on")
class TestWorker:
    pytestmark = [
        pytest.mark.postgres,
        pytest.mark.redis,
        pytest.mark.django_db(transaction=True),
    ]

    @pytest.fixture(autouse=True)
    def _settle(self, rq_worker: Popen[bytes]) -> Iterator[None]:
        """Let the worker finish its job before the test's tables are flushed."""
        yield
        settle(rq_worker)

    def test_a_succeeding_job(self, rq_worker: Popen[bytes], queue: rq.Queue) -> None:
        job = queue.enqueue(rq_jobs.add, 2, 3)
        run = recorded(job)
        assert run.job_name == "tests.contrib.rq_jobs.add"
        assert run.queued_at is not None
        assert run.params == {"args": [2, 3], "kwargs": {}}
        assert run.queue == QUEUE
        finished(run, rq_worker)
        assert run.status == Status.SUCCEEDED
        assert run.result == 5
        assert run.worker.endswith(
            f":{rq_worker.pid}"
        )  # the worker, which forked the horse
        assert run.queued_at <= run.started_at <= run.finished_at

    def test_a_failing_job(self, rq_worker: Popen[bytes], queue: rq.Queue) -> None:
        run = finished(recorded(queue.enqueue(rq_jobs.fail, "boom")), rq_worker)
        assert run.status == Status.FAILED
        assert run.error == "ValueError: boom"
        assert "raise ValueError(text)" in run.traceback

    def test_progress_and_logs_through_current_job(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        run = finished(recorded(queue.enqueue(rq_jobs.report, 5)), rq_worker)
        assert run.status == Status.SUCCEEDED
        assert (run.progress_current, run.progress_total, run.step) == (
            5,
            5,
            "counting",
        )
        assert run.result == {"counted": 5}
        assert list(run.logs.values_list("message", flat=True)) == ["counted 5 items"]

    def test_a_retried_job_keeps_its_attempts(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        run = finished(
            recorded(queue.enqueue(rq_jobs.flaky, retry=Retry(max=2))), rq_worker
        )
        assert run.status == Status.SUCCEEDED
        assert run.result == "done"
        assert run.attempt == 3
        assert [entry["status"] for entry in run.attempts] == ["retrying", "retrying"]
        assert [entry["error"] for entry in run.attempts] == [
            "RuntimeError: 2 retries left",
            "RuntimeError: 1 retries left",
        ]

    @pytest.mark.parametrize("report", [True, False], ids=["reporting", "silent"])
    def test_a_job_that_returns_retry_is_a_retry_of_its_run(
        self, rq_worker: Popen[bytes], queue: rq.Queue, report: bool
    ) -> None:
        """Reporting: the work horse writes; silent: the worker's main process records alone."""
        job = queue.enqueue(rq_jobs.retried_once, report)
        run = finished(recorded(job), rq_worker)
        assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, "done")
        assert [(entry["status"], entry["error"]) for entry in run.attempts] == [
            ("retrying", RETRY_REQUESTED)
        ]
        assert JobRun.objects.filter(source="rq", backend_job_id=job.id).count() == 1
        if report:
            assert run.message == "attempt 2"

    @pytest.mark.parametrize(
        ("func", "args"),
        [(rq_jobs.report, (2,)), (rq_jobs.add, (1, 2))],
        ids=["reporting", "silent"],
    )
    def test_a_job_rq_fails_after_it_returned_is_recorded_failed(
        self, rq_worker: Popen[bytes], queue: rq.Queue, func: Any, args: tuple[int, ...]
    ) -> None:
        job = queue.enqueue(func, *args, on_success=Callback(rq_jobs.refuse_success))
        run = finished(recorded(job), rq_worker)
        assert (run.status, run.error) == (
            Status.FAILED,
            "RuntimeError: the success callback failed",
        )
        assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED

    def test_a_crashed_work_horse_fails_the_run(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        run = finished(recorded(queue.enqueue(rq_jobs.crash)), rq_worker)
        assert run.status == Status.FAILED
        assert "Work-horse terminated unexpectedly" in run.error
        # The worker goes on.
        assert (
            finished(recorded(queue.enqueue(rq_jobs.add, 1, 1)), rq_worker).result == 2
        )

    def test_a_crashed_work_horse_with_retries_left_says_why_its_attempt_ended(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        """RQ keeps no result for the attempt it retries: the main process's error is used."""
        job = queue.enqueue(rq_jobs.crash_first_attempt, retry=Retry(max=1))
        run = finished(recorded(job), rq_worker)
        assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, "done")
        [entry] = run.attempts
        assert entry["status"] == "retrying"
        assert "Work-horse terminated unexpectedly" in entry["error"], run.attempts

    def test_each_execution_of_a_repeated_job_is_a_run_that_succeeded(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        """A silent job's success is left to the main process, which found the job queued
        again (rq.Repeat) and took it for a retry."""
        job = queue.enqueue(rq_jobs.add, 2, 3, repeat=rq.Repeat(times=2))

        def repeated() -> bool:
            job.refresh()
            return (
                job.get_status() == rq.job.JobStatus.FINISHED and job.repeats_left == 0
            )

        wait_for(repeated, timeout=60, what="the job to run three times")
        settle(rq_worker)
        runs = JobRun.objects.filter(source="rq", backend_job_id=job.id)
        assert [(run.status, run.result, run.attempts) for run in runs] == [
            (Status.SUCCEEDED, 5, [])
        ] * 3

    def test_the_jobs_waiting_for_a_failed_job_end_killed(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        parent = queue.enqueue(rq_jobs.fail, "boom")
        child = queue.enqueue(rq_jobs.add, 1, 2, depends_on=parent)
        finished(recorded(parent), rq_worker)
        run = finished(recorded(child), rq_worker, timeout=10)
        assert run.status == Status.KILLED
        assert parent.id in run.message
        assert child.get_status(refresh=True) == rq.job.JobStatus.DEFERRED

    def test_a_job_that_allows_failures_of_a_stopped_job_ends_killed(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        """RQ enqueues a job only when its dependencies are met, and a stopped one never
        is, even for a job that allows failures: it stays deferred for good, and its run
        said ``queued``."""
        parent = queue.enqueue(rq_jobs.silent, 120)
        tolerant = queue.enqueue(
            rq_jobs.add, 5, 6, depends_on=Dependency(jobs=[parent], allow_failure=True)
        )
        run = recorded(parent)
        _running(run, parent, rq_worker)
        assert contrib.request_kill(JobRun.objects.filter(pk=run.pk)) == 1
        assert finished(run, rq_worker).status == Status.KILLED
        wait_for(
            lambda: parent.get_status(refresh=True) == rq.job.JobStatus.STOPPED,
            timeout=30,
            what="RQ to mark the job stopped",
        )
        assert tolerant.get_status(refresh=True) == rq.job.JobStatus.DEFERRED
        waiting = finished(recorded(tolerant), rq_worker, timeout=10)
        assert waiting.status == Status.KILLED

    def test_a_long_job_killed_from_the_admin(
        self, rq_worker: Popen[bytes], queue: rq.Queue, admin_client: Any
    ) -> None:
        run = recorded(queue.enqueue(rq_jobs.sleepy, 120))
        wait_for(
            lambda: (
                refreshed(run).status == Status.RUNNING and run.message == "sleeping"
            ),
            timeout=60,
            what="the job to run",
        )
        kill_from_admin(admin_client, run)
        finished(run, rq_worker)
        assert run.status == Status.KILLED
        assert run.kill_requested_at is not None

    @pytest.mark.parametrize(
        "function",
        # The second in an asyncio.TaskGroup: its JobKilled comes back wrapped in an
        # exception group, and RQ retried the job that had been asked to stop.
        [rq_jobs.obedient, rq_jobs.obedient_fan_out],
        ids=["alone", "in-a-task-group"],
    )
    def test_a_job_that_stops_on_a_kill_request_is_not_retried(
        self, rq_worker: Popen[bytes], queue: rq.Queue, function: Callable[..., str]
    ) -> None:
        job = queue.enqueue(function, 120, retry=Retry(max=2))
        run = recorded(job)
        wait_for(
            lambda: (
                refreshed(run).status == Status.RUNNING and run.message == "working"
            ),
            timeout=60,
            what="the job to run",
        )
        # Only the kill request, as if RQ's stop-job never arrived (request_kill() sends
        # it): the job sees it through check_kill() and stops itself.
        assert (
            JobRun.objects.filter(pk=run.pk).update(kill_requested_at=timezone.now())
            == 1
        )
        finished(run, rq_worker)
        assert (run.status, run.attempt, run.attempts) == (Status.KILLED, 1, [])
        settle(rq_worker)
        job.refresh()
        assert job.get_status() == rq.job.JobStatus.FAILED  # not scheduled for a retry
        assert refreshed(run).status == Status.KILLED

    def test_a_queued_job_killed_on_request_is_canceled(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        blocker = recorded(queue.enqueue(rq_jobs.sleepy, 3))
        waiting = recorded(queue.enqueue(rq_jobs.add, 1, 2))
        assert contrib.request_kill(JobRun.objects.filter(pk=waiting.pk)) == 1
        waiting.refresh_from_db()
        assert waiting.status == Status.KILLED
        assert (
            rq.job.Job.fetch(
                waiting.backend_job_id, connection=queue.connection
            ).get_status()
            == rq.job.JobStatus.CANCELED
        )
        assert finished(blocker, rq_worker).status == Status.SUCCEEDED

    def test_retry_enqueues_the_job_again_as_a_new_run(
        self, rq_worker: Popen[bytes], queue: rq.Queue
    ) -> None:
        first = finished(recorded(queue.enqueue(rq_jobs.add, 20, 22)), rq_worker)
        second = contrib.retry(first)
        assert second.pk != first.pk
        assert second.backend_job_id != first.backend_job_id
        assert (second.job_name, second.params, second.queue) == (
            first.job_name,
            first.params,
            first.queue,
        )
        # Recorded queued before the push; the worker may have taken it by the time
        # retry() reads it back.
        assert second.queued_at is not None
        assert second.status in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        assert finished(second, rq_worker).result == 42

    def test_the_job_runs_while_the_database_is_away(
        self, rq_worker: Popen[bytes], db_proxy: Proxy, queue: rq.Queue
    ) -> None:
        key = f"jobstatus-tests:{uuid.uuid4()}"
        db_proxy.cut()
        try:
            run = recorded(
                queue.enqueue(rq_jobs.marked, key)
            )  # this process reaches the database directly
            wait_for(
                lambda: queue.connection.exists(key),
                timeout=60,
                what="the job to run without its database",
            )
            run.refresh_from_db()
            assert (
                run.status == Status.QUEUED
            )  # the worker could not record anything yet
        finally:
            db_proxy.restore()
        finished(run, rq_worker)
        assert run.status == Status.SUCCEEDED
        assert run.result == key


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_a_success_is_recorded_when_the_worker_was_killed_while_its_horse_ran(
    db_proxy: Proxy, tmp_path: Path
) -> None:
    """The worker's main process is SIGKILLed while the horse (a session of its own) runs
    a silent job: the horse finishes it, and records the success that it would have left
    to its main process."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    with started_rq_worker(
        db_proxy, tmp_path / "worker.log", queue=rq_jobs.HORSE_QUEUE, prefix="kill9"
    ) as worker:
        job = queue.enqueue(rq_jobs.silent, 2)
        run = recorded(job)
        wait_for(  # STARTED is set by the work horse: it exists
            lambda: (
                refreshed(run).status == Status.RUNNING
                and job.get_status(refresh=True) == rq.job.JobStatus.STARTED
            ),
            timeout=60,
            what="the job to start in its work horse",
            process=worker,
        )
        os.kill(worker.pid, signal.SIGKILL)  # the main process only
        worker.wait(timeout=10)
    deadline = time.monotonic() + 30
    wait_for(
        lambda: refreshed(run).is_finished or time.monotonic() > deadline,
        timeout=40,
        what="the run to end",
    )
    assert (run.status, run.result) == (Status.SUCCEEDED, "woke up")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_a_cold_shutdown_ends_the_run_of_the_job_it_killed(
    db_proxy: Proxy, tmp_path: Path
) -> None:
    """A second SIGTERM (RQ's cold shutdown) makes the worker kill its work horse, wait
    for it, and exit, leaving the job started: the run stayed ``running`` with no
    worker, until the reaper or RQ's cleanup took it for ``lost``."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    with started_rq_worker(
        db_proxy, tmp_path / "w.log", queue=rq_jobs.HORSE_QUEUE, prefix="cold"
    ) as worker:
        key = f"jobstatus-tests-cold:{uuid.uuid4().hex}"
        job = queue.enqueue(rq_jobs.silent_and_seen, 60, key)
        run = recorded(job)
        _running(run, job, worker)
        horse = int(
            wait_for(lambda: queue.connection.get(key), timeout=30, what="the horse")
        )
        os.kill(worker.pid, signal.SIGTERM)  # a warm shutdown
        sent = [time.monotonic()]

        def cold() -> bool:
            # RQ ignores a second signal within a second of the first: sent again until
            # the worker takes it for a cold shutdown (kills the horse) and exits.
            if worker.poll() is not None:
                return True
            if time.monotonic() - sent[-1] > 1.5:
                os.kill(worker.pid, signal.SIGTERM)
                sent.append(time.monotonic())
            return False

        wait_for(cold, timeout=60, what="the worker's cold shutdown")
    with pytest.raises(ProcessLookupError):
        os.kill(horse, 0)  # the work horse is gone
    assert (
        job.get_status(refresh=True) == rq.job.JobStatus.STARTED
    )  # until RQ's cleanup
    log = (tmp_path / "w.log").read_text()
    assert "cold shut down" in log, log[-2000:]
    refreshed(run)
    assert run.is_finished, (run.status, run.worker)
    assert (run.status, run.error) == (
        Status.FAILED,
        "Killed by its worker's cold shutdown (a second stop signal).",
    )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_a_failed_job_requeued_through_rq_is_recorded_queued_again(
    db_proxy: Proxy, tmp_path: Path
) -> None:
    """``job.requeue()`` puts a failed job back in its queue under its id: RQ said
    QUEUED, the job's newest run ``failed`` until a worker took it (and for good if none
    did: the queued timeout never saw it). The new attempt is a run of its own."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    with started_rq_worker(
        db_proxy, tmp_path / "w.log", queue=rq_jobs.HORSE_QUEUE, prefix="requeue"
    ) as worker:
        job = queue.enqueue(rq_jobs.fail, "boom")
        run = finished(recorded(job), worker)
        assert run.status == Status.FAILED
        wait_for(
            lambda: job.get_status(refresh=True) == rq.job.JobStatus.FAILED,
            timeout=30,
            what="RQ to fail the job",
        )
    # No worker now: the requeued job waits.
    queue.fetch_job(job.id).requeue()
    assert job.get_status(refresh=True) == rq.job.JobStatus.QUEUED
    assert job.id in queue.get_job_ids()
    newest = recorded(job)
    assert newest.status == Status.QUEUED, (newest.status, newest.pk == run.pk)
    assert refreshed(run).status == Status.FAILED  # the first attempt's run
    jobstatus_rq.SimpleWorker(
        [queue], connection=queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert (refreshed(newest).status, newest.error) == (
        Status.FAILED,
        "ValueError: boom",
    )
    assert JobRun.objects.filter(source="rq", backend_job_id=job.id).count() == 2


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_that_ran_on_a_simple_worker_is_stopped_on_a_forking_one(
    local_queue: rq.Queue, db_proxy: Proxy, tmp_path: Path
) -> None:
    """A SimpleWorker marks the jobs it runs as jobs it cannot stop, in their meta: the
    mark stayed there for good, so that the kill of the job's next attempt (requeued, an
    RQ retry, on a forking Worker of a mixed fleet) sent no stop-job command, and the
    job ran to its end."""
    key = f"stop-after-simple:{uuid.uuid4().hex}"
    job = local_queue.enqueue(rq_jobs.failing_once_then_silent, key, 20)
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED
    with started_rq_worker(
        db_proxy, tmp_path / "w.log", queue=rq_jobs.LOCAL_QUEUE, prefix="stop-simple"
    ) as worker:
        local_queue.fetch_job(job.id).requeue()
        wait_for(
            lambda: local_queue.connection.get(key),
            timeout=60,
            what="the job to run again",
            process=worker,
            log=worker.log,  # type: ignore[attr-defined]
        )
        run = recorded(job)
        assert run.status == Status.RUNNING
        assert JobRun.objects.filter(pk=run.pk).request_kill() == 1
        finished(run, worker)
        assert (run.status, job.get_status(refresh=True)) == (
            Status.KILLED,
            rq.job.JobStatus.STOPPED,
        ), "the forking Worker's job was not stopped: it ran to its end"


def _unimportable(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An object of a class that only this process can import (in a worker, as a class
    that a deploy renamed while the job waited)."""
    module = types.ModuleType("tests_contrib_rq_only_here")

    class Gone:
        pass

    Gone.__module__ = module.__name__
    Gone.__qualname__ = "Gone"
    module.Gone = Gone  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Gone()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_that_cannot_be_unpickled_is_named_by_its_function_alone(
    local_queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a job with no queued run (another producer enqueued it with plain rq.Queue)
    was named by RQ's description of the call, its arguments in it: a secret under a
    REDACT_KEYS key showed in the job name (never redacted), and every call was a job
    of its own."""
    plain = rq.Queue(rq_jobs.LOCAL_QUEUE, connection=local_queue.connection)
    job = plain.enqueue(rq_jobs.add, _unimportable(monkeypatch), token="hunter2")  # noqa: S106
    assert jobstatus_rq.find_run(job.id) is None
    monkeypatch.delitem(
        sys.modules, "tests_contrib_rq_only_here"
    )  # renamed by a deploy
    jobstatus_rq.SimpleWorker(
        [local_queue], connection=local_queue.connection, job_class=jobstatus_rq.Job
    ).work(burst=True)
    run = recorded(job)
    assert (run.status, run.job_name) == (Status.FAILED, "tests.contrib.rq_jobs.add")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_a_job_the_worker_cannot_unpickle_fails_and_the_worker_goes_on(
    db_proxy: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ's own worker fails a job whose arguments it cannot unpickle, and goes on. Ours
    unpickled them in its main process to record the start: the DeserializationError
    stopped the rqworker ("found an unhandled exception, quitting..."), the run stayed
    queued, and so did every job after it."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    with started_rq_worker(
        db_proxy, tmp_path / "worker.log", queue=rq_jobs.HORSE_QUEUE, prefix="unpickle"
    ) as worker:
        job = queue.enqueue(rq_jobs.add, _unimportable(monkeypatch), 1)
        after = queue.enqueue(rq_jobs.add, 1, 1)
        run = finished(recorded(job), worker, timeout=30)
        assert (run.status, run.job_name) == (
            Status.FAILED,
            "tests.contrib.rq_jobs.add",
        )
        assert "DeserializationError" in run.error, run.error
        assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED
        next_run = finished(recorded(after), worker, timeout=30)
        assert (next_run.status, next_run.result) == (Status.SUCCEEDED, 2)


# RQ's cleanup of abandoned jobs, whose worker died. Any worker's maintenance runs it once
# a dead worker's entry of the job in the started registry expired: past its heartbeat
# TTL, min(timeout left, 30 s) + 60 s after its last beat. Here it runs at once, as if
# that much time had gone by, with the exception handlers of our Worker.
ABANDONED_AFTER = 100


def _cleanup_abandoned(queue: rq.Queue) -> None:
    cleaner = jobstatus_rq.Worker([queue], connection=queue.connection)
    rq.registry.StartedJobRegistry(queue=queue).cleanup(
        timestamp=time.time() + ABANDONED_AFTER,
        exception_handlers=cleaner._exc_handlers,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_dies_mid_job(
    db_proxy: Proxy, log: Path, *, seconds: float, horse_too: bool, **options: Any
) -> tuple[rq.job.Job, rq.job.Job, int]:
    """Enqueue a job that runs ``seconds``, and one that waits for it; SIGKILL the
    worker's main process while its work horse runs the job (and the horse too, with
    ``horse_too``): the job, the one that waits for it, and the horse's pid."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    key = f"jobstatus-tests-abandoned:{uuid.uuid4().hex}"
    with started_rq_worker(
        db_proxy, log, queue=rq_jobs.HORSE_QUEUE, prefix="abandoned"
    ) as worker:
        job = queue.enqueue(rq_jobs.silent_and_seen, seconds, key, **options)
        child = queue.enqueue(rq_jobs.add, 1, 2, depends_on=job)
        horse = int(
            wait_for(
                lambda: queue.connection.get(key),
                timeout=60,
                what="the work horse to start the job",
                process=worker,
                log=log,
            )
        )
        wait_for(
            lambda: refreshed(recorded(job)).status == Status.RUNNING,
            timeout=30,
            what="the run to be running",
        )
        os.kill(worker.pid, signal.SIGKILL)  # the main process only
        if horse_too:
            os.kill(horse, signal.SIGKILL)
        worker.wait(timeout=10)
    return job, child, horse


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
@pytest.mark.parametrize(
    ("retry", "line", "waiting"),
    [
        # RQ reads the job failed when the horse succeeds: it enqueues no dependent.
        (None, "and failed it, but its run still beats", Status.KILLED),
        (Retry(max=1), "and enqueued it again, but its run still beats", Status.QUEUED),
    ],
    ids=["no-retries", "retries-left"],
)
def test_rq_s_cleanup_leaves_the_run_of_a_live_horse_whose_worker_died_to_it(
    db_proxy: Proxy, tmp_path: Path, retry: Retry | None, line: str, waiting: Status
) -> None:
    """The work horse outlives its killed main process, and beats for its run. RQ's
    cleanup of abandoned jobs marked that live run ``lost`` all the same, and the horse's
    success, which RQ records, could not leave that state: the record said lost for
    good. The run is left to the horse, with a line saying what RQ did. The job that
    waits for it runs when RQ retried the job, and never when RQ failed it (its run
    then ends killed)."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    job, child, horse = _worker_dies_mid_job(
        db_proxy,
        tmp_path / "w.log",
        seconds=8,
        horse_too=False,
        job_timeout=600,
        retry=retry,
    )
    try:
        run = recorded(job)
        _cleanup_abandoned(queue)
        assert _alive(horse), "the work horse should still run the job"
        assert refreshed(run).status != Status.LOST, run.error
        assert [entry.message for entry in run.logs.all() if line in entry.message], (
            list(run.logs.values_list("message", flat=True))
        )
        wait_for(
            lambda: (
                job.get_status(refresh=True) == rq.job.JobStatus.FINISHED
                and not _alive(horse)
            ),
            timeout=60,
            what="the horse to finish the job",
        )
        assert job.return_value() == "woke up"
        refreshed(run)
        assert (run.status, run.result) == (Status.SUCCEEDED, "woke up")
        assert recorded(child).status == waiting
        assert child.get_status(refresh=True) == (
            rq.job.JobStatus.QUEUED if retry else rq.job.JobStatus.DEFERRED
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)
        queue.empty()  # the job that waited (and, retried, the job): no worker runs them


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_the_jobs_waiting_for_a_job_that_rq_s_cleanup_failed_end_killed(
    db_proxy: Proxy, tmp_path: Path, settings: Any
) -> None:
    """The worker and its horse are SIGKILLed: RQ's cleanup, once the run's heartbeats
    are stale, fails the job (``lost`` here) and keeps the job that waits for it
    deferred for good. That job's run stayed ``queued`` for ever."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    job, child, _horse = _worker_dies_mid_job(
        db_proxy, tmp_path / "w.log", seconds=60, horse_too=True
    )
    run = recorded(job)
    assert recorded(child).status == Status.QUEUED
    # RQ's cleanup comes ~90 s after the worker died: with a HEARTBEAT_TIMEOUT shorter
    # than that, the run's heartbeats are stale by then (the worker beat every 100 s).
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": 3}
    wait_for(
        lambda: JobRun.objects.filter(pk=run.pk).stale().exists(),
        timeout=30,
        what="the run's heartbeats to be stale",
    )
    _cleanup_abandoned(queue)
    assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED
    assert refreshed(run).status == Status.LOST
    assert child.get_status(refresh=True) == rq.job.JobStatus.DEFERRED
    waiting = recorded(child)
    assert waiting.status == Status.KILLED, waiting.status
    assert job.id in waiting.message


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("rq_on")
def test_the_jobs_waiting_for_an_abandoned_job_end_killed_when_the_reaper_came_first(
    db_proxy: Proxy, tmp_path: Path, settings: Any
) -> None:
    """``reap_jobstatus`` takes the run of a dead worker for lost first (a shorter
    ``HEARTBEAT_TIMEOUT``); RQ's cleanup then fails the job, and keeps the job that
    waits for it deferred for good. That job's run stayed ``queued``: the cleanup's
    handler left alone a job whose run was no longer running."""
    queue = django_rq.get_queue(rq_jobs.HORSE_QUEUE)
    job, child, _horse = _worker_dies_mid_job(
        db_proxy, tmp_path / "w.log", seconds=60, horse_too=True
    )
    run = recorded(job)
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": 3}

    def reaped() -> bool:
        call_command("reap_jobstatus", "--timeout", "2", verbosity=0)
        return refreshed(run).status == Status.LOST

    wait_for(reaped, timeout=30, what="reap_jobstatus to take the run for lost")
    _cleanup_abandoned(queue)
    assert job.get_status(refresh=True) == rq.job.JobStatus.FAILED
    assert child.get_status(refresh=True) == rq.job.JobStatus.DEFERRED
    waiting = recorded(child)
    assert waiting.status == Status.KILLED, waiting.status
    assert job.id in waiting.message
