"""PostgreSQL: a job whose own transaction holds its run's row (found by a red-team pass).

The job runs inside the caller's ``transaction.atomic()`` (a view under ATOMIC_REQUESTS, a
task or command wrapped in a transaction) and locks or updates its own run through the
caller's connection. The handle writes through a second connection, which waited on that
lock: a lock timeout on each write, then the end given up, and the run, whose job ended,
reaped ``lost``. The end is now written once the caller's transaction has ended.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus import current_job, own_connections, track, tracked
from django_jobstatus.contrib.logging import JobLogHandler
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.signals import job_status_changed
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


@pytest.fixture
def production_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second connection as the app makes it, with its lock timeout (the test
    settings declare the alias, as docs/testing.md says to, without one)."""
    side = connections["default__jobstatus"]
    side.close()
    monkeypatch.setattr(side, "settings_dict", own_connections.side_settings("default"))


def ends(pk: Any, status: str) -> None:
    wait_for(
        lambda: JobRun.objects.filter(pk=pk, status=status).exists(),
        timeout=10,
        what=f"run {pk} {status}",
    )


@pytest.mark.usefixtures("production_side")
@pytest.mark.parametrize("how", ["select_for_update", "update"])
def test_a_job_that_locked_its_own_run_in_the_caller_s_transaction_ends(how) -> None:
    with transaction.atomic(), track(f"tests.own_lock.{how}") as job:
        rows = JobRun.objects.filter(pk=job.run.pk)
        if how == "update":
            rows.update(data={"note": "set by the job"})
        else:
            rows.select_for_update().get()
        job.progress(1, 2)
        job.info("working")
        job.flush()  # no wait on the job's own lock
    ends(job.run.pk, Status.SUCCEEDED)
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.logs.get().message == "working"
    assert (run.progress_current, run.progress_total) == (1, 2)


@pytest.mark.usefixtures("production_side")
def test_a_failure_after_touching_its_own_run_survives_the_rollback() -> None:
    pk = None
    with (
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
        track("tests.own_lock.fail") as job,
    ):
        pk = job.run.pk
        JobRun.objects.filter(pk=pk).update(message="working")
        1 / 0  # noqa: B018
    ends(pk, Status.FAILED)
    assert "ZeroDivisionError" in JobRun.objects.get(pk=pk).error


@pytest.mark.usefixtures("production_side")
def test_a_tracked_function_that_locked_its_run_is_not_reaped_lost() -> None:
    @tracked("tests.own_lock.tracked")
    def job() -> int:
        run = current_job().run  # type: ignore[union-attr]
        JobRun.objects.filter(pk=run.pk).update(data={"seen": True})
        return 1

    with transaction.atomic():
        job()
    run = JobRun.objects.get(job_name="tests.own_lock.tracked")
    ends(run.pk, Status.SUCCEEDED)
    JobRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    JobRun.objects.reap(timeout=600)
    assert JobRun.objects.get(pk=run.pk).status == Status.SUCCEEDED


@pytest.mark.usefixtures("production_side")
def test_a_run_claimed_with_select_for_update_is_tracked_in_the_claim() -> None:
    """A database queue's claim (``select_for_update(skip_locked=True)``), then
    ``track(run=...)`` in the same transaction: its start waited on the claim's own lock,
    and track() raised after the lock timeout."""
    queued = JobRun.objects.enqueue("tests.own_lock.claim")
    with transaction.atomic():
        run = (
            JobRun.objects.queued()
            .filter(pk=queued.pk)
            .select_for_update(skip_locked=True)
            .get()
        )
        with track(run.job_name, run=run) as job:
            job.info("claimed")
    assert JobRun.objects.get(pk=queued.pk).status == Status.SUCCEEDED


def test_a_job_that_locked_its_own_run_does_not_hang_with_the_documented_test_settings() -> (
    None
):
    """docs/testing.md's ``default__jobstatus``, a mirror with no lock timeout: the
    handle's write waited on the job's own lock for ever."""
    done = threading.Event()
    pks: list[Any] = []

    def job() -> None:
        try:
            with transaction.atomic(), track("tests.own_lock.testing") as handle:
                pks.append(handle.run.pk)
                JobRun.objects.filter(pk=handle.run.pk).update(message="mine")
        finally:
            connections.close_all()
            done.set()

    threading.Thread(target=job, daemon=True).start()
    finished = done.wait(20)
    if not finished:  # free the deadlock, so that the test database can be dropped
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            )
    assert finished, "the job's end waited for ever on its own transaction's lock"
    ends(pks[0], Status.SUCCEEDED)


# A review of the fix above found these.


@pytest.mark.usefixtures("production_side")
def test_a_job_failing_on_a_database_error_in_its_transaction_ends_failed() -> None:
    """A statement of the job fails, which aborts its transaction on PostgreSQL: the
    probe's query on that transaction raised in finish(), in place of the job's error,
    and the run stayed running."""
    pk = None
    with (
        pytest.raises(DatabaseError) as raised,
        transaction.atomic(),
        track("tests.own_lock.db_error") as job,
    ):
        pk = job.run.pk
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    ends(pk, Status.FAILED)
    assert "division by zero" in str(raised.value)


@pytest.mark.usefixtures("production_side")
def test_a_job_that_locked_its_run_then_failed_on_a_database_error_ends_failed() -> (
    None
):
    """An aborted transaction still holds its locks until it is rolled back."""
    pk = None
    with (
        pytest.raises(DatabaseError),
        transaction.atomic(),
        track("tests.own_lock.locked_then_error") as job,
    ):
        pk = job.run.pk
        JobRun.objects.filter(pk=pk).update(message="working")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    ends(pk, Status.FAILED)


@pytest.mark.usefixtures("production_side")
def test_a_job_logging_after_a_database_error_in_its_transaction_does_not_raise() -> (
    None
):
    """flush() never raises: the probe's InternalError came out of ``job.error()``."""
    pk = None
    with (
        transaction.atomic(),
        track("tests.own_lock.log_after_error", interval=0) as job,
    ):
        pk = job.run.pk
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")
        except DatabaseError:
            job.error("the statement failed")  # a flush (interval 0)
        transaction.set_rollback(True)
    ends(pk, Status.SUCCEEDED)
    assert (
        JobRun.objects.get(pk=pk).logs.filter(message="the statement failed").exists()
    )


@pytest.mark.usefixtures("production_side")
def test_a_dry_run_that_marks_its_transaction_for_rollback_ends() -> None:
    """``transaction.set_rollback(True)``: Django refuses any query on that connection
    until the block ends, and the probe raised TransactionManagementError."""
    pk = None
    with transaction.atomic(), track("tests.own_lock.dry_run") as job:
        pk = job.run.pk
        JobRun.objects.enqueue("tests.own_lock.dry_run.work")
        transaction.set_rollback(True)
    ends(pk, Status.SUCCEEDED)
    assert not JobRun.objects.filter(job_name="tests.own_lock.dry_run.work").exists()


def _job_that_locks_its_own_run(name: str) -> None:
    """In a child process: a job run in a transaction that updates its own run; the
    process ends with os._exit(), without atexit, as a pool's processes do."""
    try:
        with transaction.atomic(), track(name) as job:
            JobRun.objects.filter(pk=job.run.pk).update(data={"claimed": True})
    finally:
        connections.close_all()


@pytest.mark.usefixtures("production_side")
def test_the_end_is_written_when_the_transaction_commits_in_a_process_without_atexit() -> (
    None
):
    name = "tests.own_lock.pool_process"
    connections.close_all()  # no connection shared with the child
    process = multiprocessing.get_context("fork").Process(
        target=_job_that_locks_its_own_run, args=(name,)
    )
    process.start()
    process.join(30)
    assert process.exitcode == 0
    run = JobRun.objects.get(job_name=name)
    assert run.data == {"claimed": True}
    assert run.status == Status.SUCCEEDED  # written at the commit, not a second later


# A second red-team pass found these.


def in_thread(action: Any) -> dict[str, Any]:
    """``action()`` on a thread of its own (a thread of the job): its value or its error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the thread hung"
    return outcome


@pytest.mark.usefixtures("production_side")
def test_a_thread_of_the_job_logging_after_a_rolled_back_end_does_not_raise() -> None:
    """The end written by the heartbeat thread after the rollback left the handle on that
    thread's own connection, an alias that exists in that thread only: a line logged
    after it by another thread of the job (written at once) raised
    ``ConnectionDoesNotExist``."""
    pk = None
    with (
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
        track("tests.own_lock.late_line") as job,
    ):
        pk = job.run.pk
        JobRun.objects.filter(pk=pk).update(message="working")
        1 / 0  # noqa: B018
    ends(pk, Status.FAILED)

    outcome = in_thread(lambda: job.info("a worker thread of the job finished"))

    assert "error" not in outcome, f"job.info() raised {outcome.get('error')!r}"
    assert (
        JobRun.objects.get(pk=pk)
        .logs.filter(message="a worker thread of the job finished")
        .exists()
    )


@pytest.fixture
def short_lock_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production second connection with a shorter lock timeout (a quicker failure)."""
    monkeypatch.setattr(own_connections, "LOCK_TIMEOUT_MS", 500)
    side = connections["default__jobstatus"]
    side.close()
    monkeypatch.setattr(side, "settings_dict", own_connections.side_settings("default"))


@pytest.mark.usefixtures("short_lock_timeout")
def test_a_claimed_run_tracks_a_step_as_a_run_of_its_own() -> None:
    """``track("step", parent=job.run)`` in a claimed run: the step's run was inserted
    through the second connection, whose foreign key check on the parent waited on the
    claim's lock; after three lock timeouts track() raised OperationalError into the
    job."""
    queued = JobRun.objects.enqueue("tests.own_lock.claimed")
    raised: BaseException | None = None
    with transaction.atomic():
        run = (
            JobRun.objects.queued()
            .filter(pk=queued.pk)
            .select_for_update(skip_locked=True)
            .get()
        )
        with track(run.job_name, run=run) as job:
            try:
                with track("tests.own_lock.claimed.step", parent=job.run) as step:
                    step.info("one file")
            except Exception as error:
                raised = error

    assert raised is None, f"track() of the step raised {raised!r}"
    assert JobRun.objects.get(pk=queued.pk).status == Status.SUCCEEDED
    child = JobRun.objects.get(job_name="tests.own_lock.claimed.step")
    assert (child.parent_id, child.status) == (queued.pk, Status.SUCCEEDED)
    assert child.logs.get().message == "one file"


@pytest.mark.usefixtures("short_lock_timeout")
def test_a_job_that_locked_its_own_run_tracks_a_step_as_a_run_of_its_own() -> None:
    """The same step, its parent locked by the job itself: created in the job's
    transaction, it commits with it, and the parent's end waits for the commit."""
    with transaction.atomic(), track("tests.own_lock.locked_parent") as job:
        JobRun.objects.select_for_update().get(pk=job.run.pk)
        with track("tests.own_lock.locked_parent.step", parent=job.run) as step:
            step.info("one file")
    ends(job.run.pk, Status.SUCCEEDED)
    child = JobRun.objects.get(job_name="tests.own_lock.locked_parent.step")
    assert (child.parent_id, child.status) == (job.run.pk, Status.SUCCEEDED)


def test_a_run_created_in_the_transaction_tracks_a_step_as_a_run_of_its_own() -> None:
    """A parent the second connection cannot see (created in the caller's transaction,
    not committed): the step's insert through it broke its foreign key, and track()
    raised IntegrityError into the job."""
    with transaction.atomic():
        queued = JobRun.objects.enqueue("tests.own_lock.uncommitted")
        with (
            track(queued.job_name, run=queued) as job,
            track("tests.own_lock.uncommitted.step", parent=job.run),
        ):
            pass
    child = JobRun.objects.get(job_name="tests.own_lock.uncommitted.step")
    assert (child.parent_id, child.status) == (queued.pk, Status.SUCCEEDED)
    assert JobRun.objects.get(pk=queued.pk).status == Status.SUCCEEDED


@pytest.mark.usefixtures("production_side")
def test_an_end_written_at_the_commit_is_stamped_when_the_job_ended() -> None:
    """The caller's transaction goes on with other work after the job's block: the end
    waits for the commit, but ``finished_at`` (and the duration the admin, the API, the
    stats and the monitors' ``max_duration`` read) counted that work as the job's."""
    with transaction.atomic():
        with track("tests.own_lock.stamped") as job:
            JobRun.objects.filter(pk=job.run.pk).update(data={"note": "mine"})
        block_ended = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")  # the caller's own work, after the job
    ends(job.run.pk, Status.SUCCEEDED)
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.started_at <= run.finished_at <= block_ended + timedelta(seconds=1), (
        f"finished_at {run.finished_at} is {run.finished_at - block_ended} after the "
        "job's block ended"
    )


# A third red-team pass found these.


@pytest.mark.usefixtures("production_side")
def test_an_end_written_at_the_commit_records_the_result_the_job_ended_with() -> None:
    """The job sets its result and leaves its block; the caller goes on using that dict
    in its transaction. The end written at the commit stored the caller's later changes,
    where an end written at once stores what the job ended with."""
    summary: dict[str, Any] = {"imported": 3}
    with transaction.atomic():
        with track("tests.own_lock.result") as job:
            JobRun.objects.filter(pk=job.run.pk).update(data={"note": "mine"})
            job.result = summary
        summary["imported"] = 999  # the caller's own use of the dict, after the job
        summary["extra"] = "not the job's"
    ends(job.run.pk, Status.SUCCEEDED)
    assert JobRun.objects.get(pk=job.run.pk).result == {"imported": 3}


@pytest.mark.usefixtures("production_side")
def test_a_tracked_function_s_value_changed_by_its_caller_still_ends() -> None:
    """``@tracked`` stores the function's value as the result; the caller adds a datetime
    to it in its transaction (JSON cannot hold it). The end written at the commit raised
    TypeError in the heartbeat thread each second: the run stayed running, and was
    reaped lost."""

    @tracked("tests.own_lock.tracked_result")
    def job() -> dict[str, Any]:
        run = current_job().run  # type: ignore[union-attr]
        JobRun.objects.filter(pk=run.pk).update(data={"seen": True})
        return {"rows": 2}

    with transaction.atomic():
        value = job()
        value["checked_at"] = timezone.now()  # the caller's, after the job
    run = JobRun.objects.get(job_name="tests.own_lock.tracked_result")
    ends(run.pk, Status.SUCCEEDED)
    assert JobRun.objects.get(pk=run.pk).result == {"rows": 2}


@pytest.mark.usefixtures("short_lock_timeout")
def test_a_claimed_run_tracks_a_step_named_by_parent_id() -> None:
    """``track("step", parent_id=job.run.pk)``: only ``parent=`` was checked for the
    caller's lock, and the step's insert through the second connection waited on the
    claim's; after three lock timeouts track() raised OperationalError into the job."""
    queued = JobRun.objects.enqueue("tests.own_lock.claimed_by_id")
    raised: BaseException | None = None
    with transaction.atomic():
        run = JobRun.objects.queued().filter(pk=queued.pk).select_for_update().get()
        with track(run.job_name, run=run) as job:
            try:
                with track("tests.own_lock.claimed_by_id.step", parent_id=job.run.pk):
                    pass
            except Exception as error:
                raised = error
    assert raised is None, f"track() of the step raised {raised!r}"
    child = JobRun.objects.get(job_name="tests.own_lock.claimed_by_id.step")
    assert (child.parent_id, child.status) == (queued.pk, Status.SUCCEEDED)


def test_a_run_created_in_the_transaction_tracks_a_step_named_by_parent_id() -> None:
    """The parent created in the caller's transaction, not committed, and named by its
    id: the step's insert through the second connection, which cannot see it, broke its
    foreign key."""
    raised: BaseException | None = None
    with transaction.atomic():
        queued = JobRun.objects.enqueue("tests.own_lock.uncommitted_by_id")
        with track(queued.job_name, run=queued) as job:
            try:
                with track(
                    "tests.own_lock.uncommitted_by_id.step", parent_id=job.run.pk
                ):
                    pass
            except Exception as error:
                raised = error
    assert raised is None, f"track() of the step raised {raised!r}"
    child = JobRun.objects.get(job_name="tests.own_lock.uncommitted_by_id.step")
    assert (child.parent_id, child.status) == (queued.pk, Status.SUCCEEDED)


def test_a_step_of_a_parent_created_in_the_transaction_is_created_there() -> None:
    """A parent recorded in the caller's transaction that no job tracks: the second
    connection cannot see its row, so ``caller_holds()`` found it free, and the step's
    insert through that connection broke its foreign key (IntegrityError into the
    caller)."""
    raised: BaseException | None = None
    with transaction.atomic():
        parent = JobRun.objects.enqueue("tests.own_lock.created_parent")
        try:
            with track("tests.own_lock.created_parent.step", parent=parent):
                pass
        except Exception as error:
            raised = error
    assert raised is None, f"track() of the step raised {raised!r}"
    child = JobRun.objects.get(job_name="tests.own_lock.created_parent.step")
    assert (child.parent_id, child.status) == (parent.pk, Status.SUCCEEDED)


# A review of 84cbae5 found these.


@pytest.mark.usefixtures("production_side")
def test_an_end_written_at_the_commit_keeps_the_result_the_job_ended_with_when_reassigned() -> (
    None
):
    """The caller sets ``job.result`` again after the job's block, in its transaction:
    the copy taken at the job's end was stored back on the handle, which the write at
    the commit read, so the caller's value was recorded."""
    with transaction.atomic():
        with track("tests.own_lock.result_reassigned") as job:
            JobRun.objects.filter(pk=job.run.pk).update(data={"note": "mine"})
            job.result = {"imported": 3}
        job.result = {"imported": 999, "by": "the caller, after the job"}
    ends(job.run.pk, Status.SUCCEEDED)
    assert JobRun.objects.get(pk=job.run.pk).result == {"imported": 3}


def test_a_step_of_a_committed_parent_inside_an_atomic_block_costs_no_more_queries() -> (
    None
):
    """``track(parent=run)`` inside an atomic block that wrote (ATOMIC_REQUESTS): each
    step of a committed parent the transaction does not hold read the parent through the
    second connection, to find a parent created in that transaction. That parent is now
    looked for only when the step's insert broke its foreign key."""
    parent = JobRun.objects.start("tests.own_lock.committed_parent")
    side = connections["default__jobstatus"]
    with transaction.atomic():
        JobRun.objects.enqueue("tests.own_lock.other")  # the block wrote: it has an xid
        with (
            CaptureQueriesContext(side) as second,
            track("tests.own_lock.committed_parent.step", parent=parent),
        ):
            pass
    # The EXISTS of ``runs.using(alias).exists()`` on the parent.
    added = [
        q["sql"]
        for q in second.captured_queries
        if q["sql"].startswith('SELECT 1 AS "a" FROM "django_jobstatus_jobrun"')
        and f"'{parent.pk.hex}'::uuid LIMIT 1" in q["sql"]
    ]
    assert added == [], "an EXISTS per step through the second connection"


# A red-team pass of the live tail found these.


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger with only JobLogHandler, as LOGGING would configure it."""
    target = logging.getLogger("tests.own_lock.receiver")
    handler = JobLogHandler(level=logging.INFO)
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    target.propagate = False
    yield target
    target.removeHandler(handler)
    target.propagate = True
    target.setLevel(logging.NOTSET)


@pytest.fixture
def notified(logger: logging.Logger) -> Iterator[list[dict[str, Any]]]:
    """A receiver of job_status_changed that logs a line when a run of
    ``tests.own_lock.notify`` succeeds; what it saw in the thread it ran on."""
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, run: JobRun, status: str, **kwargs: Any) -> None:
        if run.job_name == "tests.own_lock.notify" and status == Status.SUCCEEDED:
            logger.info("notified the team that %s succeeded", run.pk)
            seen.append(
                {
                    "thread": threading.current_thread().name,
                    # Whether logging the line opened the app's connection in it.
                    "connected": connections["default"].connection is not None,
                }
            )

    job_status_changed.connect(receiver, weak=False)
    yield seen
    job_status_changed.disconnect(receiver)


def notified_on() -> dict[str, str]:
    """Each line of the receiver: the run it is a line of (its id, its job's name)."""
    return {
        str(run_id): job_name
        for run_id, job_name in JobLog.objects.filter(
            message__startswith="notified the team"
        ).values_list("run_id", "run__job_name")
    }


@pytest.mark.usefixtures("production_side")
@pytest.mark.parametrize("outer", [False, True], ids=["alone", "inside_another_run"])
def test_a_receiver_s_line_for_an_end_written_at_the_commit_is_a_line_of_that_run(
    notified: list[dict[str, Any]], outer: bool
) -> None:
    """docs/integrations/logging.md: a ``job_status_changed`` receiver that the write of
    the run's end calls runs inside that write, and its records are lines of the run.
    Written at the commit, the end ran after the job's block had deactivated its handle:
    the line was dropped (no ``current_job()``) or, inside another tracked run, written
    as a line of *that* run."""
    with (
        track("tests.own_lock.notify.outer") if outer else contextlib.nullcontext(),
        transaction.atomic(),
        track("tests.own_lock.notify") as job,
    ):
        JobRun.objects.filter(pk=job.run.pk).update(data={"note": "mine"})
    ends(job.run.pk, Status.SUCCEEDED)
    assert notified_on() == {str(job.run.pk): "tests.own_lock.notify"}


@pytest.mark.usefixtures("production_side")
def test_a_receiver_s_line_for_an_end_the_heartbeat_thread_writes_is_a_line_of_that_run(
    notified: list[dict[str, Any]],
) -> None:
    """After a rollback the heartbeat thread writes the end: the receiver's line is the
    run's too, written through that thread's own connection (the app's, opened there,
    would never be closed)."""
    with transaction.atomic():
        with track("tests.own_lock.notify") as job:
            JobRun.objects.filter(pk=job.run.pk).update(data={"note": "mine"})
        transaction.set_rollback(True)
    # The receiver runs once the end is committed, after the run shows it.
    wait_for(lambda: notified, timeout=10, what="the receiver logged")
    assert notified_on() == {str(job.run.pk): "tests.own_lock.notify"}
    assert notified == [{"thread": "jobstatus-heartbeats", "connected": False}]
