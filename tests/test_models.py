"""JobRun and JobLog: ids, the state machine, derived values, writes and bad input."""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import CharField
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from django_jobstatus.conf import settings as jobstatus_settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, Status, uuid7
from django_jobstatus.signals import job_status_changed
from django_jobstatus.values import MAX_LENGTHS
from tests.test_tracking import ANY_TEXT, stored

pytestmark = pytest.mark.django_db

ALL = sorted(Status.values)


def _move(run: JobRun, target: str) -> None:
    """Ask ``run`` to move to ``target`` through the public mark_*() method."""
    if target == Status.QUEUED:
        run.mark_queued()
    elif target == Status.RUNNING:
        run.mark_running()
    elif target == Status.RETRYING:
        run.mark_failed(ValueError("boom"), retry=True)
    elif target == Status.SUCCEEDED:
        run.mark_succeeded({"ok": True})
    elif target == Status.FAILED:
        run.mark_failed(ValueError("boom"))
    elif target == Status.KILLED:
        run.mark_killed()
    elif target == Status.LOST:
        run.mark_lost()


def _row(run: JobRun) -> dict[str, Any]:
    return JobRun.objects.filter(pk=run.pk).values().get()


LEGAL = [
    (source, target)
    for source, targets in Status.LEGAL_MOVES.items()
    for target in sorted(targets)
]
ILLEGAL = [
    (source, target)
    for source in ALL
    for target in ALL
    if target not in Status.LEGAL_MOVES.get(source, ())
]


# Ids.


def test_uuid7_has_version_and_variant_bits() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_sorts_by_time() -> None:
    values = [uuid7() for _ in range(200)]
    # The first 48 bits are milliseconds: never decreasing within one process.
    stamps = [value.int >> 80 for value in values]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - timezone.now().timestamp() * 1000) < 5000
    assert len(set(values)) == 200


def test_uuid7_increases_within_one_millisecond() -> None:
    # Many ids share a millisecond here; each must still be greater than the one before.
    values = [uuid7() for _ in range(20_000)]
    assert values == sorted(values)
    assert len({value.int >> 80 for value in values}) < len(values)  # shared ms seen
    assert all(value.version == 7 for value in values)


def test_uuid7_from_other_threads_is_unique_and_ordered_per_thread() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(bucket: list[uuid.UUID]) -> None:
        bucket.extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(b,)) for b in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [value for bucket in results for value in bucket]
    assert len(set(every)) == len(every) == 20_000
    assert all(bucket == sorted(bucket) for bucket in results)


def test_runs_get_uuid7_primary_keys(make_run) -> None:
    run = make_run()
    assert isinstance(run.pk, uuid.UUID)
    assert run.pk.version == 7


# Transitions.


def test_legal_and_illegal_moves_cover_every_pair() -> None:
    assert len(LEGAL) + len(ILLEGAL) == len(ALL) ** 2
    assert set(Status.LEGAL_MOVES) == Status.ACTIVE
    assert set(ALL) == Status.TERMINAL | Status.ACTIVE


@pytest.mark.parametrize(("source", "target"), LEGAL)
def test_legal_move(make_run, source: str, target: str) -> None:
    run = make_run(status=source)
    _move(run, target)
    assert run.status == target
    row = _row(run)
    assert row["status"] == target
    assert row["updated_at"] >= row["created_at"]
    if target in Status.TERMINAL:
        assert row["finished_at"] is not None
    if target == Status.RUNNING:
        assert row["started_at"] is not None
        assert row["heartbeat_at"] is not None
        assert row["worker"]


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_move_raises_and_writes_nothing(
    make_run, source: str, target: str
) -> None:
    run = make_run(status=source, progress_current=3, message="before")
    before = _row(run)
    with pytest.raises(InvalidTransition, match=f"from {source} to {target}"):
        _move(run, target)
    assert _row(run) == before
    assert JobLog.objects.count() == 0


def test_transition_of_a_stale_instance_is_refused(make_run) -> None:
    run = make_run(status=Status.RUNNING)
    JobRun.objects.get(pk=run.pk).mark_succeeded()
    with pytest.raises(InvalidTransition, match="from succeeded to failed"):
        run.mark_failed(ValueError("late"))
    assert _row(run)["status"] == Status.SUCCEEDED


def test_two_copies_of_a_queued_run_cannot_both_start(make_run) -> None:
    run = make_run(status=Status.QUEUED)
    other = JobRun.objects.get(pk=run.pk)
    run.mark_running(worker="a:1")
    with pytest.raises(InvalidTransition):
        other.mark_running(worker="b:2")
    row = _row(run)
    assert (row["worker"], row["attempt"]) == ("a:1", 1)


def test_transition_of_a_deleted_run_raises_does_not_exist(make_run) -> None:
    run = make_run()
    JobRun.objects.filter(pk=run.pk).delete()
    with pytest.raises(JobRun.DoesNotExist):
        run.mark_succeeded()


def test_first_entry_timestamps_are_kept(make_run) -> None:
    run = JobRun.objects.enqueue("tests.job")
    queued_at = run.queued_at
    run.mark_running()
    started_at = run.started_at
    assert started_at >= queued_at
    run.mark_failed(ValueError("first"), retry=True)
    run.mark_queued()
    # queued_at is the first entry into queued, not the second.
    assert run.queued_at == queued_at
    assert _row(run)["queued_at"] == queued_at
    run.mark_running()
    run.mark_succeeded()
    row = _row(run)
    assert row["queued_at"] == queued_at
    assert row["finished_at"] >= row["started_at"]


@pytest.mark.parametrize(
    "end",
    ["request_kill", "mark_killed", "mark_lost", "mark_failed", "mark_succeeded"],
)
def test_an_end_is_never_before_the_start(make_run, end: str) -> None:
    """A forced kill from a host whose clock is behind the worker's (a web server 3 s
    behind) stamped ``finished_at`` before ``started_at``: a negative duration in the
    admin, the API, the stats and the monitors. The end took the clock of the process
    that wrote it as it was; it is now never before the start."""
    worker_clock = timezone.now() + timedelta(seconds=3)
    run = make_run(started_at=worker_clock)
    if end == "request_kill":
        assert JobRun.objects.filter(pk=run.pk).request_kill(force=True) == 1
        run.refresh_from_db()
    else:
        getattr(run, end)()
    row = _row(run)
    assert row["finished_at"] == row["started_at"] == worker_clock
    assert run.finished_at == row["finished_at"]  # the instance holds what was stored
    assert run.duration == timedelta(0)
    [stats] = JobRun.objects.stats()
    assert stats["min_duration"] == 0


@pytest.mark.parametrize(
    "move", ["mark_running", "track", "integration", "forced kill while queued"]
)
def test_a_start_or_end_is_never_before_the_enqueue(move: str) -> None:
    """A web server whose clock is 3 s ahead of the worker's enqueued the run: its
    start (or, killed waiting, its end) was stamped before it was queued, and the run
    said ``waiting`` -3 s, in the API too (found by a red-team pass)."""
    from django_jobstatus import statements, track

    web_clock = timezone.now() + timedelta(seconds=3)
    run = JobRun.objects.enqueue(
        "tests.skew", source="tests", backend_job_id="job-1", queued_at=web_clock
    )
    if move == "mark_running":
        run.mark_running(worker="w:1")
    elif move == "track":
        with track(run.job_name, run=run):
            pass
    elif move == "integration":  # what the integrations' start writes
        statements.start_queued(
            "default", "tests", "job-1", worker="w:1", attempt=1, now=timezone.now()
        )
    else:
        assert JobRun.objects.filter(pk=run.pk).request_kill(force=True) == 1
    run.refresh_from_db()
    assert (run.started_at or run.finished_at) == web_clock
    assert run.waiting == timedelta(0)


@pytest.mark.parametrize("retry", [True, False])
def test_an_attempt_s_end_is_never_before_its_start(make_run, retry: bool) -> None:
    """The same for the end of an attempt kept in ``attempts``, by a retry or by a
    restart on another worker whose clock is behind."""
    worker_clock = timezone.now() + timedelta(seconds=3)
    run = make_run(started_at=worker_clock)
    if retry:
        run.mark_failed(ValueError("flaky"), retry=True)
    else:
        run.mark_running(worker="b:2")
    [entry] = _row(run)["attempts"]
    assert entry["finished_at"] == entry["started_at"] == worker_clock.isoformat()


def test_restart_bumps_attempt_and_keeps_history(make_run) -> None:
    run = make_run(status=Status.RUNNING, worker="a:1", error="stalled")
    first_start = run.started_at
    run.mark_running(worker="b:2")
    row = _row(run)
    assert row["status"] == Status.RUNNING
    assert row["attempt"] == run.attempt == 2
    assert row["worker"] == "b:2"
    assert row["error"] == ""
    assert row["started_at"] > first_start or row["started_at"] == run.started_at
    assert len(row["attempts"]) == 1
    entry = row["attempts"][0]
    assert entry["attempt"] == 1
    assert entry["status"] == "restarted"
    assert entry["started_at"] == first_start.isoformat()
    assert entry["finished_at"] is not None
    assert entry["error"] == "stalled"
    assert entry["worker"] == "a:1"


def test_retry_bumps_attempt_and_appends_error(make_run) -> None:
    run = make_run(status=Status.RUNNING, worker="a:1")
    first_start = run.started_at
    run.mark_failed(ValueError("flaky"), retry=True)
    row = _row(run)
    assert row["status"] == Status.RETRYING
    assert row["attempt"] == 2
    assert row["started_at"] is None
    assert row["attempts"] == [
        {
            "attempt": 1,
            "status": "retrying",
            "started_at": first_start.isoformat(),
            "finished_at": row["attempts"][0]["finished_at"],
            "worker": "a:1",
            "error": "ValueError: flaky",
        }
    ]
    run.mark_queued()
    run.mark_running(worker="b:2")
    run.mark_failed(KeyError("again"), retry=True)
    run.mark_running()
    run.mark_succeeded()
    row = _row(run)
    assert row["attempt"] == 3
    assert [entry["attempt"] for entry in row["attempts"]] == [1, 2]
    assert row["attempts"][1]["error"] == "KeyError: 'again'"
    assert row["attempts"][1]["worker"] == "b:2"
    assert row["status"] == Status.SUCCEEDED


@pytest.mark.parametrize("through_queued", [True, False])
def test_a_run_that_succeeds_after_failed_attempts_describes_its_final_attempt(
    make_run, through_queued: bool
) -> None:
    run = make_run(status=Status.RUNNING)
    run.mark_failed(ValueError("first"), retry=True)
    retrying = JobRun.objects.get(pk=run.pk)
    assert retrying.error == "ValueError: first"  # while it waits, the failure shows
    assert "ValueError: first" in retrying.traceback
    if through_queued:
        run.mark_queued()
    run.mark_running()
    started = JobRun.objects.get(pk=run.pk)
    assert (started.error, started.traceback) == ("", "")  # a new attempt starts clean
    run.mark_succeeded({"ok": True})
    row = JobRun.objects.get(pk=run.pk)
    assert (row.status, row.error, row.traceback) == (Status.SUCCEEDED, "", "")
    assert [entry["error"] for entry in row.attempts] == ["ValueError: first"]


def test_a_success_clears_an_error_left_by_an_earlier_attempt(make_run) -> None:
    # E.g. the failed attempt's retry was recorded after the next attempt had started.
    run = make_run(status=Status.RUNNING, error="ValueError: old", traceback="tb")
    run.mark_succeeded()
    row = JobRun.objects.get(pk=run.pk)
    assert (row.error, row.traceback) == ("", "")


def test_restart_from_a_stale_attempt_is_refused(make_run) -> None:
    run = make_run(status=Status.RUNNING)
    other = JobRun.objects.get(pk=run.pk)
    run.mark_running()
    before = _row(run)
    with pytest.raises(InvalidTransition, match="attempt 2, not 1"):
        other.mark_running()
    assert _row(run) == before


@pytest.mark.parametrize(
    "finish",
    [
        lambda run: run.mark_succeeded(),
        lambda run: run.mark_failed(ValueError("late")),
        lambda run: run.mark_killed(),
        lambda run: run.mark_lost(),
    ],
)
def test_the_end_of_an_attempt_cannot_end_the_next_one(make_run, finish) -> None:
    run = make_run(status=Status.RUNNING)
    first_worker = JobRun.objects.get(pk=run.pk)
    run.mark_running(worker="b:2")  # a restart: attempt 2 runs elsewhere
    before = _row(run)
    with pytest.raises(InvalidTransition, match="attempt 2, not 1"):
        finish(first_worker)
    assert _row(run) == before


def test_a_beat_of_an_attempt_does_not_keep_the_next_one_alive(make_run) -> None:
    """Worker A's copy of attempt 1 beat on attempt 2, which worker B started and died in:
    the run stayed running, never reaped (docs/guarantees.md: a next attempt lives and
    dies with the worker that started it)."""
    run = make_run(status=Status.RUNNING, worker="a:1")
    first_worker = JobRun.objects.get(pk=run.pk)
    run.mark_running(worker="b:2")  # a restart: attempt 2, whose worker dies at once
    an_hour_ago = timezone.now() - timedelta(hours=1)
    JobRun.objects.filter(pk=run.pk).update(
        heartbeat_at=an_hour_ago, started_at=an_hour_ago
    )
    first_worker.heartbeat()
    assert JobRun.objects.reap(300).reaped == 1
    run.refresh_from_db()
    assert (run.attempt, run.status) == (2, Status.LOST)


def test_progress_of_an_attempt_does_not_move_the_next_one(make_run) -> None:
    run = make_run(status=Status.RUNNING)
    first_worker = JobRun.objects.get(pk=run.pk)
    run.mark_running(worker="b:2")
    run.set_progress(1, 10, step="second attempt")
    first_worker.set_progress(9, 10, step="first attempt")
    run.refresh_from_db()
    assert (run.progress_current, run.step) == (1, "second attempt")


def test_a_move_from_a_status_the_run_has_left_is_refused(make_run) -> None:
    # retrying and queued may both start; a worker holding "retrying" must not start a run
    # that another process queued meanwhile, or the signal's previous would be wrong.
    run = make_run(status=Status.RUNNING)
    run.mark_failed(ValueError("first"), retry=True)
    holder = JobRun.objects.get(pk=run.pk)
    run.mark_queued()
    before = _row(run)
    with pytest.raises(InvalidTransition, match="is queued, not retrying; reload"):
        holder.mark_running()
    assert _row(run) == before


def test_mark_failed_records_error_and_traceback(run) -> None:
    try:
        raise RuntimeError("disk full")
    except RuntimeError as exc:
        run.mark_failed(exc)
    row = _row(run)
    assert row["status"] == Status.FAILED
    assert row["error"] == "RuntimeError: disk full"
    assert "Traceback" in row["traceback"]
    assert 'raise RuntimeError("disk full")' in row["traceback"]


def test_mark_failed_with_an_empty_message_keeps_the_class(run) -> None:
    run.mark_failed(KeyboardInterrupt())
    assert _row(run)["error"] == "KeyboardInterrupt"


def test_mark_succeeded_stores_result(run) -> None:
    run.mark_succeeded({"rows": [1, 2]})
    assert _row(run)["result"] == {"rows": [1, 2]}


def test_mark_killed_message_says_whether_asked(make_run) -> None:
    asked = make_run()
    asked.request_kill()
    asked.mark_killed()
    assert _row(asked)["message"] == "Killed on request."
    plain = make_run()
    plain.mark_killed()
    assert _row(plain)["message"] == "Killed."


# The signal.


@pytest.fixture
def received() -> Any:
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append({"sender": sender, **kwargs})

    job_status_changed.connect(receiver, dispatch_uid="tests.test_models")
    yield calls
    job_status_changed.disconnect(dispatch_uid="tests.test_models")


def test_signal_is_sent_after_commit(
    run, received, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run.mark_succeeded()
    assert received == []  # not before the commit
    assert len(callbacks) == 1
    callbacks[0]()
    assert len(received) == 1
    assert received[0]["sender"] is JobRun
    # The run as the move left it (a copy: a later move changes the instance).
    assert (received[0]["run"].pk, received[0]["run"].status) == (
        run.pk,
        Status.SUCCEEDED,
    )
    assert received[0]["previous"] == Status.RUNNING
    assert received[0]["status"] == Status.SUCCEEDED


def test_no_signal_for_an_illegal_move(
    make_run, received, django_capture_on_commit_callbacks
) -> None:
    run = make_run(status=Status.SUCCEEDED)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(InvalidTransition),
    ):
        run.mark_failed()
    assert callbacks == []
    assert received == []


@pytest.mark.django_db(transaction=True)
def test_signal_is_not_sent_when_the_transaction_rolls_back(received) -> None:
    run = JobRun.objects.start("tests.job")
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        run.mark_succeeded()
        assert received == []
        _ = 1 / 0
    assert received == []
    assert _row(run)["status"] == Status.RUNNING
    run.status = Status.RUNNING
    with transaction.atomic():
        run.mark_failed(ValueError("x"))
        assert received == []
    assert [(call["previous"], call["status"]) for call in received] == [
        (Status.RUNNING, Status.FAILED)
    ]


# Derived values.


def test_progress(make_run) -> None:
    assert make_run(progress_current=5).progress is None
    assert make_run(progress_current=5, progress_total=20).progress == 0.25
    assert make_run(progress_current=0, progress_total=0).progress is None
    assert (
        make_run(status=Status.SUCCEEDED, progress_current=0, progress_total=0).progress
        == 1.0
    )
    assert make_run(progress_current=20, progress_total=20).progress == 1.0


def test_duration_and_waiting(make_run) -> None:
    now = timezone.now()
    done = make_run(
        status=Status.SUCCEEDED,
        queued_at=now - timedelta(seconds=30),
        started_at=now - timedelta(seconds=20),
        finished_at=now,
    )
    assert done.duration == timedelta(seconds=20)
    assert done.waiting == timedelta(seconds=10)
    running = make_run(started_at=now - timedelta(seconds=60))
    assert running.duration >= timedelta(seconds=60)  # grows while it runs
    queued = make_run(status=Status.QUEUED, queued_at=now - timedelta(seconds=5))
    assert queued.duration is None
    assert queued.waiting >= timedelta(seconds=5)
    assert JobRun(job_name="x").waiting is None


def test_waiting_ends_at_the_first_start_whatever_the_attempt(make_run) -> None:
    now = timezone.now()
    run = make_run(queued_at=now - timedelta(seconds=100))
    JobRun.objects.filter(pk=run.pk).update(started_at=now - timedelta(seconds=90))
    run.refresh_from_db()
    run.mark_failed(ValueError("boom"), retry=True)
    assert run.waiting == timedelta(seconds=10)  # not 10 s and attempt 1's run time
    run.mark_running()
    run.mark_succeeded()
    assert JobRun.objects.get(pk=run.pk).waiting == timedelta(seconds=10)
    # attempts is JSON anyone may have written: what is not a time there is passed over.
    for attempts in ([{"started_at": "not a time"}], [{"started_at": 3}], ["x"]):
        odd = make_run(
            queued_at=now - timedelta(seconds=30),
            started_at=now - timedelta(seconds=20),
            attempts=attempts,
        )
        assert odd.waiting == timedelta(seconds=10)


def test_is_active_is_finished(make_run) -> None:
    for status in ALL:
        run = make_run(status=status)
        assert run.is_active is (status in Status.ACTIVE)
        assert run.is_finished is (status in Status.TERMINAL)
        assert run.is_active is not run.is_finished


def test_str(run) -> None:
    assert str(run) == f"tests.job (Running) {run.pk}"


def test_absolute_url_is_the_admin_page(run) -> None:
    from django.contrib import admin

    assert JobRun in admin.site._registry
    assert run.get_absolute_url() == f"/admin/django_jobstatus/jobrun/{run.pk}/change/"


def test_newest_first(make_run) -> None:
    now = timezone.now()
    old = make_run(created_at=now - timedelta(hours=1))
    new = make_run(created_at=now)
    assert list(JobRun.objects.all()) == [new, old]


# Kill requests.


def test_request_kill(make_run) -> None:
    run = make_run()
    assert run.kill_requested is False
    assert run.request_kill() is True
    assert run.kill_requested is True
    stamp = _row(run)["kill_requested_at"]
    assert stamp is not None
    assert (
        _row(run)["status"] == Status.RUNNING
    )  # a kill request does not change the state
    assert run.request_kill() is False  # asked already: the first stamp stays
    assert _row(run)["kill_requested_at"] == stamp
    done = make_run(status=Status.SUCCEEDED)
    assert done.request_kill() is False
    assert _row(done)["kill_requested_at"] is None


# Progress.


def test_set_progress(run) -> None:
    run.set_progress(3, 10, step="load", message="loading")
    row = _row(run)
    assert (
        row["progress_current"],
        row["progress_total"],
        row["step"],
        row["message"],
    ) == (3, 10, "load", "loading")
    assert row["heartbeat_at"] is not None
    run.set_progress(7)
    assert _row(run)["progress_total"] == 10
    assert run.progress == 0.7


@pytest.mark.parametrize(
    ("current", "total"),
    [
        (-1, None),
        (math.nan, None),
        (math.inf, None),
        (1, -1),
        (1, math.nan),
        (11, 10),
        ("3", None),
        (True, None),
    ],
)
def test_set_progress_rejects_bad_values(run, current: Any, total: Any) -> None:
    before = _row(run)
    with pytest.raises(ValueError, match="progress"):
        run.set_progress(current, total)
    assert _row(run) == before


def test_set_progress_past_the_stored_total_is_refused(run) -> None:
    run.set_progress(1, 5)
    with pytest.raises(ValueError, match="greater than total"):
        run.set_progress(6)
    assert _row(run)["progress_current"] == 1


def test_set_progress_on_an_older_copy_is_judged_on_the_stored_total(run) -> None:
    """``run.set_progress(50)`` without a total, on a copy read before another writer
    lowered the total (a new step: ``job.step("pass 2", total=10)``), raised
    IntegrityError from the ``progress <= total`` constraint, where a fresh copy gives a
    ValueError: the copy checked the total it held, and the UPDATE did not."""
    run.set_progress(0, 100)
    copy = JobRun.objects.get(pk=run.pk)
    run.set_progress(0, 10)
    with pytest.raises(ValueError, match=r"50\) is greater than total \(10\)"):
        copy.set_progress(50)
    assert copy.progress_total == 10
    assert _row(run)["progress_current"] == 0
    # A copy read before the total was raised may go up to the stored total.
    run.set_progress(0, 100)
    copy.set_progress(50)
    assert _row(run)["progress_current"] == copy.progress_current == 50


def test_progress_check_constraint(run) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        JobRun.objects.filter(pk=run.pk).update(progress_current=11, progress_total=10)
    with pytest.raises(IntegrityError), transaction.atomic():
        JobRun.objects.create(job_name="x", progress_current=2, progress_total=1)


def _database_now() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        return cursor.fetchone()[0]


def test_heartbeat(run) -> None:
    JobRun.objects.filter(pk=run.pk).update(heartbeat_at=None)
    if connection.vendor != "postgresql":  # one machine, one clock
        run.heartbeat()
        assert _row(run)["heartbeat_at"] == run.heartbeat_at is not None
        return
    # The database's clock, in the row; this process's, in the instance.
    before = _database_now()
    run.heartbeat()
    after = _database_now()
    assert run.heartbeat_at is not None
    assert before <= _row(run)["heartbeat_at"] <= after


def test_set_progress_and_heartbeat_leave_a_finished_run_alone(run) -> None:
    copy = JobRun.objects.get(pk=run.pk)  # e.g. the job's own, read before the end
    run.mark_succeeded()
    before = _row(run)
    copy.set_progress(1, 2, message="still going")
    copy.heartbeat()
    assert _row(run) == before
    assert (copy.message, copy.progress_current) == (run.message, 0)


# Logs.


def test_log_formats_and_stores(run) -> None:
    entry = run.log(20, "copied %d of %s", 3, "files", extra={"n": 3})
    stored = JobLog.objects.get()
    assert stored.pk == entry.pk
    assert (stored.run_id, stored.level, stored.message, stored.extra) == (
        run.pk,
        20,
        "copied 3 of files",
        {"n": 3},
    )
    assert stored.level_name == "INFO"
    assert str(stored) == "INFO: copied 3 of files"
    assert _row(run)["has_errors"] is False


def test_log_error_sets_has_errors(run) -> None:
    run.log(40, "bad row")
    assert run.has_errors is True
    assert _row(run)["has_errors"] is True
    assert list(JobRun.objects.with_errors()) == [run]


def test_an_error_line_and_has_errors_are_written_together(run) -> None:
    def refuse_the_flag(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("UPDATE") and "has_errors" in sql:
            raise DatabaseError("the database went away (test)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_the_flag), pytest.raises(DatabaseError):
        run.log(40, "bad row")
    assert (JobLog.objects.count(), _row(run)["has_errors"], run.has_errors) == (
        0,
        False,
        False,
    )


@pytest.mark.parametrize("limit", [100, 10000])
def test_log_cuts_long_messages_with_a_marker(run, settings, limit: int) -> None:
    settings.JOBSTATUS = {"LOG_MAX_LENGTH": limit}
    assert limit == jobstatus_settings.LOG_MAX_LENGTH
    run.log(20, "x" * (limit + 500))
    message = JobLog.objects.get().message
    assert len(message) == limit
    assert message.endswith("… [cut 500 characters]")
    assert message.startswith("x" * (limit - 30))
    run.log(20, "y" * limit)  # exactly the limit: kept whole
    assert JobLog.objects.filter(message="y" * limit).exists()


@pytest.mark.parametrize("level", [-1, "INFO", None, True])
def test_log_rejects_bad_levels(run, level: Any) -> None:
    with pytest.raises(ValueError, match="level"):
        run.log(level, "x")
    assert not JobLog.objects.exists()


def test_log_extra_must_be_json(run) -> None:
    with pytest.raises(TypeError, match="extra"):
        run.log(20, "x", extra={"when": object()})
    assert not JobLog.objects.exists()


def test_logs_go_with_their_run(run) -> None:
    run.log(20, "a")
    run.delete()
    assert not JobLog.objects.exists()


# wait().


def test_wait_returns_at_once_when_finished(make_run) -> None:
    run = make_run(status=Status.SUCCEEDED)
    assert run.wait(timeout=0) is run


def test_wait_times_out(run) -> None:
    with pytest.raises(TimeoutError, match="still running"):
        run.wait(timeout=0.05, interval=0.01)


def test_wait_for_given_statuses(make_run) -> None:
    run = make_run(status=Status.QUEUED)
    JobRun.objects.filter(pk=run.pk).update(status=Status.RUNNING)
    assert run.wait([Status.RUNNING], timeout=1).status == Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_wait_sees_another_thread_finish_the_run() -> None:
    from django.db import connections

    run = JobRun.objects.start("tests.job")
    started = threading.Event()

    def finish() -> None:
        from django.db import OperationalError

        try:
            started.wait(5)
            deadline = time.monotonic() + 5
            while True:
                try:
                    JobRun.objects.get(pk=run.pk).mark_succeeded({"done": 1})
                    return
                except OperationalError:
                    # SQLite's shared in-memory test database locks whole tables and
                    # does not wait: "database table is locked" while wait() reads.
                    if time.monotonic() > deadline:
                        raise
        finally:
            connections.close_all()

    thread = threading.Thread(target=finish)
    thread.start()
    started.set()
    assert run.wait(timeout=10, interval=0.01).status == Status.SUCCEEDED
    assert run.result == {"done": 1}
    thread.join(5)


# Bad input.


class NotJSON:
    pass


@pytest.mark.parametrize("field", ["params", "data"])
@pytest.mark.parametrize("create", ["enqueue", "start"])
def test_non_json_fields_raise_type_error_before_writing(
    field: str, create: str
) -> None:
    with pytest.raises(TypeError, match=f"^{field} must be JSON-serializable"):
        getattr(JobRun.objects, create)("tests.job", **{field: {"x": NotJSON()}})
    assert not JobRun.objects.exists()


@pytest.mark.parametrize("value", [{"x": NotJSON()}, {1, 2}, math.nan, {"x": math.inf}])
def test_non_json_result_raises_type_error_before_writing(run, value: Any) -> None:
    before = _row(run)
    with pytest.raises(TypeError, match="^result must be JSON-serializable"):
        run.mark_succeeded(value)
    assert _row(run) == before
    with pytest.raises(TypeError, match="^result must be JSON-serializable"):
        JobRun.objects.start("tests.job", result=value)
    assert JobRun.objects.count() == 1


def test_a_deleted_user_s_runs_stay_without_an_owner(django_user_model: Any) -> None:
    """On the database that holds the runs (``models.detach_owner``; with the runs on a
    database of their own: tests/test_split_database.py)."""
    alice = django_user_model.objects.create_user("alice")
    kept = JobRun.objects.start("tests.job", owner=alice)
    other = JobRun.objects.start("tests.job")
    alice.delete()
    assert set(JobRun.objects.values_list("pk", "owner")) == {
        (kept.pk, None),
        (other.pk, None),
    }


@pytest.mark.parametrize("name", ["", "   ", None, 42, "x" * 256])
def test_bad_job_names_raise_value_error(name: Any) -> None:
    with pytest.raises(ValueError, match="job_name"):
        JobRun.objects.start(name)
    with pytest.raises(ValueError, match="job_name"):
        JobRun.objects.enqueue(name)
    assert not JobRun.objects.exists()


def test_longest_job_name_is_accepted() -> None:
    assert JobRun.objects.start("x" * 255).job_name == "x" * 255


def _log_indexes() -> dict[str, Any]:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, JobLog._meta.db_table)


@pytest.mark.django_db(transaction=True)
def test_the_warning_index_is_partial_and_its_migrations_reverse() -> None:
    assert _log_indexes()["jobstatus_log_warn_level_idx"]["columns"] == [
        "created_at",
        "id",
        "level",
    ]
    assert "jobstatus_log_warning_idx" not in _log_indexes()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                ["jobstatus_log_warn_level_idx"],
            )
            assert "WHERE (level >= 30)" in cursor.fetchone()[0]
    call_command("migrate", "django_jobstatus", "0012", verbosity=0)
    try:
        logs = _log_indexes()
        assert logs["jobstatus_log_warning_idx"]["columns"] == ["created_at", "id"]
        assert "jobstatus_log_warn_level_idx" not in logs
        call_command("migrate", "django_jobstatus", "0002", verbosity=0)
        assert "jobstatus_log_warning_idx" not in _log_indexes()
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert "jobstatus_log_warn_level_idx" in _log_indexes()


FILTER_INDEXES = {
    "jobstatus_run_source_idx": (["source", "created_at", "id"], None),
    "jobstatus_run_worker_idx": (["worker", "created_at", "id"], None),
    "jobstatus_run_queue_idx": (["queue", "created_at", "id"], None),
    "jobstatus_run_kill_idx": (
        ["created_at", "id"],
        "WHERE (kill_requested_at IS NOT NULL)",
    ),
    "jobstatus_run_errors_idx": (["created_at", "id"], "WHERE has_errors"),
    "jobstatus_run_cause_idx": (
        ["error_fingerprint", "created_at", "id"],
        "WHERE ((status)::text = ANY",
    ),
}


@pytest.mark.django_db(transaction=True)
def test_each_runs_filter_has_its_index_and_the_migration_reverses() -> None:
    for name, (columns, where) in FILTER_INDEXES.items():
        assert _run_indexes()[name]["columns"] == columns, name
        if where and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name]
                )
                assert where in cursor.fetchone()[0], name
    call_command("migrate", "django_jobstatus", "0013", verbosity=0)
    try:
        assert not set(FILTER_INDEXES) & set(_run_indexes())
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert set(FILTER_INDEXES) <= set(_run_indexes())


# Text the database cannot store, through the writes integrations make.


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=ANY_TEXT)
def test_any_text_in_an_integration_s_writes_is_stored(text: str) -> None:
    run = JobRun.objects.start(
        "any.text",
        params={"args": [text], "kwargs": {text: text}},
        queue=text,
        worker=text,
        backend_job_id=text,
    )
    run.set_progress(1, step=text, message=text)
    run.log(40, text, extra={text: [text]})
    run.mark_failed(retry=True, error=text, traceback=text)
    run.mark_queued()
    run.mark_running(worker=text)
    run.mark_lost(error=text, traceback=text)
    row = JobRun.objects.get(pk=run.pk)
    clean = stored(text)
    assert (row.status, row.error, row.traceback) == (Status.LOST, clean, clean)
    assert (row.queue, row.worker, row.backend_job_id, row.step) == (clean,) * 4
    assert row.params == {"args": [clean], "kwargs": {clean: clean}}
    assert row.attempts[0]["error"] == clean
    assert row.logs.get().message == clean
    assert row.logs.get().extra == {clean: [clean]}


def _run_indexes() -> dict[str, Any]:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, JobRun._meta.db_table)


@pytest.mark.django_db(transaction=True)
def test_the_big_table_indexes_and_their_migration_reverses() -> None:
    assert _run_indexes()["jobstatus_run_created_id_idx"]["columns"] == [
        "created_at",
        "id",
    ]
    assert _log_indexes()["jobstatus_log_created_id_idx"]["columns"] == [
        "created_at",
        "id",
    ]
    postgres = connection.vendor == "postgresql"
    assert ("jobstatus_log_message_trgm" in _log_indexes()) is postgres
    # No index of the foreign key alone: jobstatus_log_run_idx starts with it.
    assert [
        name
        for name, index in _log_indexes().items()
        if index["index"] and index["columns"] == ["run_id"]
    ] == []
    call_command("migrate", "django_jobstatus", "0003", verbosity=0)
    try:
        logs, runs = _log_indexes(), _run_indexes()
        assert "jobstatus_log_message_trgm" not in logs
        assert "jobstatus_log_created_id_idx" not in logs
        assert "jobstatus_run_created_id_idx" not in runs
        assert logs["jobstatus_log_created_idx"]["columns"] == ["created_at"]
        assert runs["jobstatus_run_created_idx"]["columns"] == ["created_at"]
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert ("jobstatus_log_message_trgm" in _log_indexes()) is postgres
    assert "jobstatus_run_created_idx" not in _run_indexes()


def _sql_of_migrating(before: str, to: str) -> list[str]:
    """The statements that migrating from ``before`` to ``to`` sends (then back to the latest)."""
    call_command("migrate", "django_jobstatus", before, verbosity=0)
    try:
        with CaptureQueriesContext(connection) as queries:
            call_command("migrate", "django_jobstatus", to, verbosity=0)
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    return [query["sql"] for query in queries.captured_queries]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_run_indexes_of_0002_are_built_without_blocking_writes() -> None:
    """0002 built the runs' start and duration indexes with a plain CREATE INDEX: every
    write of a run waited for the whole build of each (found by a red-team pass)."""
    builds = [
        sql
        for sql in _sql_of_migrating("0001", "0002")
        if sql.lstrip().upper().startswith("CREATE INDEX")
        and f'"{JobRun._meta.db_table}"' in sql
    ]
    for name in ("jobstatus_run_started_idx", "jobstatus_run_duration_idx"):
        assert any(name in sql for sql in builds), builds
    assert all("CONCURRENTLY" in sql.upper() for sql in builds), builds


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_0004_drops_the_log_lines_key_index_alone_without_blocking_writes() -> None:
    """0004 dropped the log lines' foreign key index with Django's AlterField, which also
    dropped the key and added it again, checking every line while the lines and the runs
    were locked, and dropped the index with a plain DROP INDEX (found by a red-team pass)."""
    statements = _sql_of_migrating("0003", "0004")
    assert [sql for sql in statements if "FOREIGN KEY" in sql.upper()] == []
    drops = [sql for sql in statements if sql.lstrip().upper().startswith("DROP INDEX")]
    assert drops, statements
    assert all("CONCURRENTLY" in sql.upper() for sql in drops), drops


@pytest.mark.django_db(transaction=True)
def test_the_job_index_holds_the_id_and_its_migration_reverses() -> None:
    runs = _run_indexes()
    assert runs["jobstatus_run_job_id_idx"]["columns"] == [
        "job_name",
        "created_at",
        "id",
    ]
    assert "jobstatus_run_job_idx" not in runs
    call_command("migrate", "django_jobstatus", "0011", verbosity=0)
    try:
        runs = _run_indexes()
        assert runs["jobstatus_run_job_idx"]["columns"] == ["job_name", "created_at"]
        assert "jobstatus_run_job_id_idx" not in runs
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert "jobstatus_run_job_idx" not in _run_indexes()


@pytest.mark.django_db(transaction=True)
def test_the_finished_runs_index_and_its_migration_reverses() -> None:
    index = _run_indexes()["jobstatus_run_job_finished_idx"]
    assert index["columns"] == ["job_name", "finished_at", "id"]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                ["jobstatus_run_job_finished_idx"],
            )
            assert "WHERE (finished_at IS NOT NULL)" in cursor.fetchone()[0]
    call_command("migrate", "django_jobstatus", "0016", verbosity=0)
    try:
        assert "jobstatus_run_job_finished_idx" not in _run_indexes()
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert "jobstatus_run_job_finished_idx" in _run_indexes()


def _foreign_key_indexes() -> dict[str, list[str]]:
    """The runs' indexes of each nullable foreign key alone, by column."""
    return {
        column: sorted(
            name
            for name, index in _run_indexes().items()
            if index["index"] and index["columns"] == [column]
        )
        for column in ("parent_id", "owner_id")
    }


def _where(name: str) -> str:
    """The index's definition as the database holds it (its condition included)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name]
            )
        else:
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = %s", [name])
        return str(cursor.fetchone()[0])


def _delete_actions() -> list[tuple[str, str]]:
    """PostgreSQL: the ON DELETE action of each foreign key that points at a run."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, confdeltype FROM pg_constraint"
            " WHERE confrelid = %s::regclass ORDER BY 1",
            [JobRun._meta.db_table],
        )
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_parent_and_owner_are_indexed_where_set_and_the_migration_reverses() -> None:
    assert _foreign_key_indexes() == {
        "parent_id": ["jobstatus_run_parent_idx"],
        "owner_id": ["jobstatus_run_owner_idx"],
    }
    postgres = connection.vendor == "postgresql"
    for name, column in [
        ("jobstatus_run_parent_idx", "parent_id"),
        ("jobstatus_run_owner_idx", "owner_id"),
    ]:
        assert (
            f"WHERE ({column} IS NOT NULL)"
            if postgres
            else f'WHERE "{column}" IS NOT NULL'
        ) in _where(name)
    # Only the indexes change: the lines' CASCADE and the children's SET NULL (0008) stay.
    actions = [
        (JobLog._meta.db_table, "c"),
        (JobRun._meta.db_table, "n"),
    ]
    if postgres:
        assert _delete_actions() == actions
    parent = JobRun.objects.start("tests.parent")
    child = JobRun.objects.start("tests.child", parent=parent)
    call_command("migrate", "django_jobstatus", "0017", verbosity=0)
    try:
        before = _foreign_key_indexes()
        for column, names in before.items():
            assert len(names) == 1, before
            assert " WHERE " not in _where(names[0]).upper(), column
        assert not {"jobstatus_run_parent_idx", "jobstatus_run_owner_idx"} & set(
            _run_indexes()
        )
        if postgres:
            assert _delete_actions() == actions
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    assert _foreign_key_indexes() == {
        "parent_id": ["jobstatus_run_parent_idx"],
        "owner_id": ["jobstatus_run_owner_idx"],
    }
    if postgres:
        assert _delete_actions() == actions
    assert list(parent.children.all()) == [child]


def test_every_text_column_of_a_run_has_its_width_in_max_lengths() -> None:
    """storable() cuts to MAX_LENGTHS: a column missing there would be refused by PostgreSQL."""
    widths = {
        field.name: field.max_length
        for field in JobRun._meta.concrete_fields
        if isinstance(field, CharField)
    }
    assert widths == MAX_LENGTHS
