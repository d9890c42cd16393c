"""track() / tracked() / current_job(): the handle, its throttle, kills, failures and durability."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import DataError, OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_jobstatus import JobKilled, contrib, current_job, track, tracked
from django_jobstatus.batches import start_batch
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.querysets import JobRunQuerySet
from django_jobstatus.tracking import HANDOVER_MAX_CHARS, SIDE_SUFFIX, JobHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db

INTERVAL = 0.02


@pytest.fixture(autouse=True)
def _fast_settings(settings) -> None:
    settings.JOBSTATUS = {"PROGRESS_INTERVAL": INTERVAL, "FINISH_RETRY_TIMEOUT": 2.0}


def _row(run: JobRun) -> JobRun:
    return JobRun.objects.get(pk=run.pk)


class FailingWrites:
    """An execute wrapper: UPDATE/INSERT on the app's tables raise OperationalError (``times`` times)."""

    def __init__(self, times: float = math.inf) -> None:
        self.times = times
        self.failed = 0

    def __call__(
        self, execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if (
            self.failed < self.times
            and sql.lstrip().upper().startswith(("UPDATE", "INSERT"))
            and "django_jobstatus_" in sql
        ):
            self.failed += 1
            raise OperationalError("the database went away (test)")
        return execute(sql, params, many, context)


@pytest.fixture
def failing_writes() -> Iterator[Callable[..., FailingWrites]]:
    """Install FailingWrites on the default connection; returns a factory."""
    stack: list[Any] = []

    def install(times: float = math.inf) -> FailingWrites:
        wrapper = FailingWrites(times)
        context = connection.execute_wrapper(wrapper)
        context.__enter__()
        stack.append(context)
        return wrapper

    yield install
    for context in reversed(stack):
        context.__exit__(None, None, None)


# track() and tracked().


def test_track_records_a_run(django_user_model) -> None:
    owner = django_user_model.objects.create(username="ann")
    with track(
        "tests.import",
        params={"days": 30},
        subject="auth.User:7",
        source="command",
        owner=owner,
        queue="low",
    ) as job:
        run = _row(job.run)
        assert run.status == Status.RUNNING
        assert (run.params, run.subject, run.source, run.owner, run.queue) == (
            {"days": 30},
            "auth.User:7",
            "command",
            owner,
            "low",
        )
        job.result = {"deleted": 3}
    run = _row(job.run)
    assert run.status == Status.SUCCEEDED
    assert run.result == {"deleted": 3}
    assert run.finished_at >= run.started_at
    assert job.run.status == Status.SUCCEEDED


def test_track_starts_an_existing_queued_run() -> None:
    run = JobRun.objects.enqueue("tests.job")
    with track("ignored", run=run) as job:
        assert job.run is run
        assert _row(run).status == Status.RUNNING
    assert _row(run).status == Status.SUCCEEDED
    assert JobRun.objects.count() == 1


def test_tracked_decorator() -> None:
    @tracked("tests.report", params={"kind": "daily"})
    def build(n: int) -> dict[str, int]:
        job = current_job()
        assert job is not None
        job.progress(n, total=n)
        return {"n": n}

    assert build(4) == {"n": 4}
    run = JobRun.objects.get()
    assert (run.job_name, run.status, run.params, run.result, run.progress_current) == (
        "tests.report",
        Status.SUCCEEDED,
        {"kind": "daily"},
        {"n": 4},
        4,
    )


def test_tracked_defaults_to_the_function_path_and_skips_non_json_results() -> None:
    @tracked()
    def make() -> object:
        return object()

    assert make() is not None
    run = JobRun.objects.get()
    assert (
        run.job_name
        == f"{__name__}.test_tracked_defaults_to_the_function_path_and_skips_non_json_results.<locals>.make"
    )
    assert run.result is None
    assert run.status == Status.SUCCEEDED


def test_tracked_killed_returns_none() -> None:
    @tracked("tests.kill")
    def work() -> int:
        raise JobKilled

    assert work() is None
    assert JobRun.objects.get().status == Status.KILLED


def test_tracked_refuses_async_functions() -> None:
    async def work() -> None:
        pass

    with pytest.raises(TypeError, match="async"):
        tracked("x")(work)


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_tracked_refuses_generator_functions(kind: str) -> None:
    """A generator function returns before its body runs: its run was recorded
    ``succeeded`` before any work, and a failure while it was consumed stayed unrecorded."""

    def rows() -> Iterator[int]:
        yield 1

    async def arows() -> Any:
        yield 1

    with pytest.raises(TypeError, match=f"{kind} functions.*track\\(\\) inside"):
        tracked("x")(rows if kind == "generator" else arows)
    assert not JobRun.objects.exists()


def test_tracked_without_parentheses_decorates_the_function() -> None:
    """``@tracked`` without parentheses, as the docs write it, took the function for the
    job name and returned the decorator: calling the function never ran it, recorded no
    run and returned a function instead of its value."""

    @tracked
    def build(n: int) -> int:
        assert current_job() is not None
        return n

    assert build(4) == 4
    run = JobRun.objects.get()
    assert (run.job_name, run.status, run.result) == (
        f"{__name__}.test_tracked_without_parentheses_decorates_the_function.<locals>.build",
        Status.SUCCEEDED,
        4,
    )


@pytest.mark.parametrize(
    ("job_name", "error", "match"),
    [
        ("", ValueError, "job_name must be a non-empty string"),
        ("  ", ValueError, "job_name must be a non-empty string"),
        (42, TypeError, '@tracked, @tracked\\(\\) or @tracked\\("name"\\)'),
    ],
)
def test_tracked_refuses_a_job_name_that_is_not_one(
    job_name: Any, error: type[Exception], match: str
) -> None:
    """``tracked("")`` recorded its runs under the function's module path, a name the
    caller never asked for, where ``track("")`` refuses the blank name; it is refused
    when it decorates, before any call."""

    def build() -> None:
        pass

    with pytest.raises(error, match=match):
        tracked(job_name)(build)
    assert not JobRun.objects.exists()


def _unawaited() -> Any:
    async def work() -> None:
        raise RuntimeError("the real work failed")

    return work


def _ungenerated() -> Any:
    def rows() -> Iterator[int]:
        yield 1

    return rows


def _async_ungenerated() -> Any:
    async def arows() -> Any:
        yield 1

    return arows


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_unawaited, "async"),
        (_ungenerated, "generator"),
        (_async_ungenerated, "async generator"),
    ],
)
def test_tracked_refuses_what_a_decorator_that_says_what_it_wraps_hides(
    make: Callable[[], Any], kind: str
) -> None:
    """An async or generator function behind a ``functools.wraps`` decorator (a timing
    or retry helper) passed tracked()'s check: each call recorded its run ``succeeded``
    at once and returned the coroutine, whose work (and failure) came after, unrecorded.
    The decorator says what it wraps: tracked() refuses it when it decorates."""
    func = make()

    @functools.wraps(func)
    def timed(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    with pytest.raises(TypeError, match=f"does not support {kind} functions"):
        tracked("tests.hidden")(timed)
    assert not JobRun.objects.exists()


def test_tracked_refuses_a_coroutine_returned_by_a_function_it_could_not_see() -> None:
    """Behind a decorator that does not say what it wraps, the call's value gives an async
    function away: the coroutine is closed, and the run ends failed with a TypeError."""
    func = _unawaited()

    def timed(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    work = tracked("tests.hidden")(timed)
    with pytest.raises(TypeError, match="returned a coroutine object.*sync code"):
        work()
    run = JobRun.objects.get()
    assert (run.status, run.error.split(":")[0]) == (Status.FAILED, "TypeError")


def test_a_plain_function_that_returns_a_generator_is_tracked() -> None:
    """A function that does its work and returns a lazy view of the result (``return
    (row.upper() for row in rows)``) was refused, its run failed, once tracked() refused
    every generator a call returned: its work had run."""
    calls: list[str] = []

    @tracked("reports.names")
    def names() -> Iterator[str]:
        calls.append("the work")
        return (row.upper() for row in ["ada", "grace"])

    assert list(names()) == ["ADA", "GRACE"]  # type: ignore[arg-type]
    assert calls == ["the work"]
    assert JobRun.objects.get().status == Status.SUCCEEDED


# current_job().


def _nested() -> JobHandle | None:
    return current_job()


def test_current_job_in_nested_code() -> None:
    assert current_job() is None
    with track("outer") as outer:
        assert _nested() is outer
        with track("inner") as inner:
            assert _nested() is inner
        assert _nested() is outer
    assert current_job() is None
    assert JobRun.objects.succeeded().count() == 2


def test_current_job_is_reset_after_an_exception() -> None:
    with pytest.raises(KeyError), track("x"):
        raise KeyError("k")
    assert current_job() is None


def test_current_job_in_threads() -> None:
    seen: dict[str, Any] = {}
    with track("x") as job:
        context = contextvars.copy_context()
        copied = threading.Thread(
            target=context.run,
            args=(lambda: seen.__setitem__("copied", current_job()),),
        )
        plain = threading.Thread(
            target=lambda: seen.__setitem__("plain", current_job())
        )
        copied.start()
        plain.start()
        copied.join(5)
        plain.join(5)
    assert seen == {"copied": job, "plain": None}


def test_activate_and_deactivate(run) -> None:
    handle = JobHandle(run)
    token = handle.activate()
    assert current_job() is handle
    handle.deactivate(token)
    assert current_job() is None


def _rows(name: str, n: int) -> Iterator[int]:
    """The docs' pattern: ``track()`` inside a generator function."""
    with track(name) as job:
        for i in range(n):
            job.advance()
            yield i


@pytest.mark.parametrize("first_to_end", ["a", "b"])
def test_generators_consumed_interleaved_leave_no_ended_run_current(
    first_to_end: str,
) -> None:
    """Two generators with ``track()`` inside, consumed interleaved (``zip()``, a merge):
    once both had ended, ``current_job()`` outside any block was the first one's handle,
    of an ended run (the second block's end reset the token to what it saw at its start),
    so the logging integration and any ``current_job()`` reported into an ended run."""
    gens = {"a": _rows("tests.a", 2), "b": _rows("tests.b", 2)}
    handles = {}
    for key, gen in gens.items():
        next(gen)
        handles[key] = current_job()
    second = "b" if first_to_end == "a" else "a"
    assert list(gens[first_to_end]) == [1]
    assert current_job() is handles[second]  # the block still running
    assert list(gens[second]) == [1]
    assert current_job() is None
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}


def test_a_suspended_generator_s_block_is_its_consumer_s_current_job() -> None:
    """What tracking.md says: a generator has no context of its own, so while one is
    suspended inside its ``track()`` block, ``current_job()`` in the job consuming it is
    the generator's handle (a line logged through it lands on the generator's run); the
    job's own handle still logs on its run, and once the generator is closed
    ``current_job()`` is the job's again."""
    with track("tests.outer") as outer:
        rows = _rows("tests.rows", 3)
        next(rows)
        inner = current_job()
        assert inner is not None
        assert inner.run.job_name == "tests.rows"
        outer.info("the outer job's line")
        rows.close()
        assert current_job() is outer
    line = JobLog.objects.get(message="the outer job's line")
    assert line.run_id == outer.run.pk


async def _next_in_threads(gen: Iterator[int]) -> list[int]:
    items: list[int] = []
    end = object()
    while (item := await asyncio.to_thread(next, gen, end)) is not end:
        items.append(item)
    return items


@pytest.mark.django_db(transaction=True)
def test_a_generator_advanced_through_asyncio_to_thread_ends_succeeded() -> None:
    """A generator with ``track()`` inside consumed from async code with
    ``asyncio.to_thread(next, gen)``: each step runs in a fresh copy of the context, so the
    block's end reset its token in another context than it was made in, and
    ``ValueError: <Token ...> was created in a different Context`` came out of ``next()``,
    the run already recorded succeeded: the caller saw its job crash."""
    assert asyncio.run(_next_in_threads(_rows("tests.threads", 3))) == [0, 1, 2]
    run = JobRun.objects.get()
    assert (run.status, run.progress_current) == (Status.SUCCEEDED, 3)
    assert current_job() is None


# The throttle.


def test_advance_within_one_interval_writes_nothing(
    django_assert_max_num_queries,
) -> None:
    with track("x", interval=3600) as job:
        job.progress(0, total=100_000)
        with django_assert_max_num_queries(0):
            for _ in range(50_000):
                job.advance()
                job.heartbeat()
                job.check_kill()
            job.step("second")
            job.message("half way")
            job.info("buffered")
        assert _row(job.run).progress_current == 0
    # The last value is flushed at exit.
    run = _row(job.run)
    assert (run.progress_current, run.progress_total, run.step, run.message) == (
        50_000,
        100_000,
        "second",
        "half way",
    )
    assert JobLog.objects.get().message == "buffered"


def test_writes_are_bounded_by_elapsed_time() -> None:
    with (
        track("x", interval=INTERVAL) as job,
        CaptureQueriesContext(connection) as queries,
    ):
        start = time.monotonic()
        deadline = start + 12 * INTERVAL
        calls = 0
        while time.monotonic() < deadline:
            job.advance()
            calls += 1
        elapsed = time.monotonic() - start
    writes = len(_updates(queries))
    assert 1 <= writes <= elapsed / INTERVAL + 3
    assert calls > writes * 10  # most calls made no write
    assert _row(job.run).progress_current == calls


def test_settings_interval_is_the_default(settings) -> None:
    settings.JOBSTATUS = {"PROGRESS_INTERVAL": 3600}
    with track("x") as job, CaptureQueriesContext(connection) as queries:
        for _ in range(1000):
            job.advance()
    assert queries.captured_queries == []


def test_kill_is_read_at_most_once_per_interval(
    run, django_assert_max_num_queries
) -> None:
    with track("x", interval=3600) as job:
        JobRun.objects.filter(pk=job.run.pk).update(
            kill_requested_at=job.run.started_at
        )
        with django_assert_max_num_queries(0):
            for _ in range(10_000):
                assert job.kill_requested is False
    with track("y", interval=INTERVAL) as job:
        assert job.kill_requested is False
        JobRun.objects.get(pk=job.run.pk).request_kill()
        with CaptureQueriesContext(connection) as queries:
            start = time.monotonic()
            wait_for(
                lambda: job.kill_requested,
                timeout=10,
                what="the handle to read the kill request",
                interval=0.005,
            )
            elapsed = time.monotonic() - start
        # Each read is the throttled progress write itself.
        statements = _writes(queries)
        assert 1 <= len(statements) <= elapsed / INTERVAL + 2
        assert all(sql.startswith("UPDATE") for sql in statements)
        with django_assert_max_num_queries(0):
            assert job.kill_requested is True  # once seen, never read again
        with pytest.raises(JobKilled):
            job.check_kill()
        job.result = {"stopped": True}
        raise JobKilled  # swallowed by track()
    run = _row(job.run)
    assert run.status == Status.KILLED
    assert run.message == "Killed on request."


def test_advance_past_what_the_column_holds_is_capped() -> None:
    with track("x", interval=0) as job:
        job.advance(2**62)
        job.advance(2**62)
        job.advance(2**62)
    assert _row(job.run).progress_current == 2**63 - 1


def test_fractional_advances_add_up() -> None:
    """Each amount was cut to its whole part before it was added: four ``advance(0.5)``
    of a total of 2 left the run that succeeded at 0 of 2."""
    with track("files.copy", interval=3600) as job:
        job.progress(0, total=2)
        for _ in range(4):
            job.advance(0.5)
        for _ in range(10):
            job.advance(0.1)  # 0.999… in floating point: written as 1
    run = _row(job.run)
    assert (run.status, run.progress_current, run.progress_total) == (
        Status.SUCCEEDED,
        2,
        2,
    )
    with track("files.copy", interval=3600) as job:
        for _ in range(10):
            job.advance(0.1)
    assert _row(job.run).progress_current == 1


def test_advance_past_total_is_capped(caplog) -> None:
    with track("x", interval=3600) as job:
        job.progress(0, total=3)
        for _ in range(5):
            job.advance()
    assert _row(job.run).progress_current == 3
    assert caplog.text.count("advanced past its total") == 1


def test_step_with_total_restarts_progress() -> None:
    with track("x", interval=3600) as job:
        job.progress(5, total=5)
        job.step("write", total=10)
        job.advance(4)
    run = _row(job.run)
    assert (run.step, run.progress_current, run.progress_total) == ("write", 4, 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.progress(-1),
        lambda job: job.progress(math.nan),
        lambda job: job.progress(1, total=-1),
        lambda job: job.progress(6, total=5),
        lambda job: job.advance(-1),
        lambda job: job.advance(math.nan),
        lambda job: job.advance(math.inf),
        lambda job: job.step("s", total=-3),
        lambda job: job.advance("1"),
        lambda job: job.advance(True),
        lambda job: job.step("s", total="10"),
        lambda job: job.progress(2**63),  # more than the column holds
        lambda job: job.progress(0, total=2**64),
    ],
)
def test_bad_progress_raises_value_error(call: Callable[[JobHandle], None]) -> None:
    with pytest.raises(ValueError), track("x", interval=3600) as job:
        call(job)
    assert _row(job.run).status == Status.FAILED


# Kill and failure.


def test_check_kill_raises_job_killed() -> None:
    with track("x") as job:
        JobRun.objects.get(pk=job.run.pk).request_kill()
        job._due = 0.0  # the next read is due
        with pytest.raises(JobKilled):
            job.check_kill()
    assert (
        _row(job.run).status == Status.SUCCEEDED
    )  # caught inside: the job chose to finish


PROGRESS_CALLS: dict[str, Callable[[JobHandle, int], None]] = {
    "progress": lambda job, i: job.progress(i),
    "advance": lambda job, i: job.advance(),
    "step": lambda job, i: job.step(f"step {i}"),
    "message": lambda job, i: job.message(f"message {i}"),
    "heartbeat": lambda job, i: job.heartbeat(),
}


def _updates(queries: CaptureQueriesContext) -> list[str]:
    """The UPDATEs sent: one per write of the handle (the run's row)."""
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]


def _writes(queries: CaptureQueriesContext) -> list[str]:
    """The statements sent, without the savepoints around them."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))
    ]


@pytest.mark.parametrize("name", sorted(PROGRESS_CALLS))
def test_every_progress_call_stops_a_job_asked_to_stop(name: str) -> None:
    call = PROGRESS_CALLS[name]
    calls = 0
    with track("x", interval=INTERVAL) as job:
        call(job, 0)
        assert JobRun.objects.filter(pk=job.run.pk).request_kill() == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the README's loop: no check_kill()
            calls += 1
            call(job, calls)
        pytest.fail(f"{name}() never raised JobKilled")
    run = _row(job.run)
    assert run.status == Status.KILLED
    assert run.kill_requested_at is not None
    assert calls >= 1


def test_the_kill_is_read_by_the_progress_write_itself() -> None:
    with track("x", interval=3600) as job:
        JobRun.objects.filter(pk=job.run.pk).request_kill()
        job.advance()  # not due: no query
        job._due = 0.0
        with CaptureQueriesContext(connection) as queries, pytest.raises(JobKilled):
            job.advance()
        (sql,) = _writes(queries)
        assert sql.startswith("UPDATE")
        assert "RETURNING" in sql
        assert _row(job.run).progress_current == 2
        job.info("cleaning up")
        job.flush()  # a write after the kill (the run is still running) ...
        # ... and still, once seen, every progress call raises at once, without a query.
        with CaptureQueriesContext(connection) as queries:
            for call in PROGRESS_CALLS.values():
                with pytest.raises(JobKilled):
                    call(job, 3)
            with pytest.raises(JobKilled):
                job.check_kill()
        assert queries.captured_queries == []


def test_a_run_killed_by_force_stops_its_job_at_the_next_progress_call(
    caplog,
) -> None:
    with track("x", interval=INTERVAL) as job:
        job.progress(1)
        job.flush()
        JobRun.objects.get(pk=job.run.pk).mark_killed()
        killed = _row(job.run)
        with CaptureQueriesContext(connection) as queries, pytest.raises(JobKilled):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # no check_kill()
                job.advance()
        assert len([sql for sql in _writes(queries) if sql.startswith("UPDATE")]) == 1
        with CaptureQueriesContext(connection) as queries:
            with pytest.raises(JobKilled):
                job.heartbeat()
            assert job.kill_requested is True
        assert queries.captured_queries == []
        raise JobKilled  # leaving as the job would
    run = _row(job.run)
    assert (run.status, run.finished_at) == (Status.KILLED, killed.finished_at)
    # The refused write changed nothing.
    assert (run.progress_current, run.heartbeat_at, run.updated_at) == (
        1,
        killed.heartbeat_at,
        killed.updated_at,
    )
    assert "ended elsewhere" in caplog.text


@pytest.mark.parametrize("end", ["mark_lost", "mark_failed"])
def test_a_handle_whose_run_ended_elsewhere_goes_quiet(end: str, caplog) -> None:
    with track("x", interval=INTERVAL) as job:
        job.progress(1)
        job.flush()
        getattr(JobRun.objects.get(pk=job.run.pk), end)()
        ended = _row(job.run)
        with CaptureQueriesContext(connection) as queries:
            deadline = time.monotonic() + 10 * INTERVAL
            i = 1
            while time.monotonic() < deadline:
                i += 1
                for call in PROGRESS_CALLS.values():
                    call(job, i)
                job.info("line %d", i)
                assert job.kill_requested is False
        # One refused write, then quiet.
        assert len([sql for sql in _writes(queries) if sql.startswith("UPDATE")]) == 1
        assert i > 10
    run = _row(job.run)
    assert run.status == ended.status
    assert (run.progress_current, run.heartbeat_at, run.updated_at) == (
        1,
        ended.heartbeat_at,
        ended.updated_at,
    )
    assert caplog.text.count("ended elsewhere") == 1


def test_a_handle_whose_run_ended_elsewhere_keeps_its_newest_10000_lines() -> None:
    """A job reaped as lost that carried on held every line it logged in memory."""
    with track("x", interval=INTERVAL) as job:
        job.flush()
        JobRun.objects.get(pk=job.run.pk).mark_lost()
        job.info("first line after the reap")
        job.flush()  # refused: the run ended elsewhere
        for index in range(12_000):
            job.info("item %d", index)
        assert len(job._logs) == 10_000
        assert job._logs[0].message == "item 2000"
    assert _row(job.run).status == Status.LOST
    lines = JobLog.objects.for_run(job.run)
    assert lines.count() == 10_000 + 2  # + the reaper's line, + the job's own end:
    assert lines.filter(message__startswith="The job went on after").count() == 1


def test_a_handle_does_not_write_onto_a_newer_attempt() -> None:
    with track("x", interval=INTERVAL) as job:
        job.flush()
        newer = JobRun.objects.get(pk=job.run.pk)
        newer.mark_running()  # a restart elsewhere: attempt 2
        job.progress(7)
        job.flush()
        assert _row(job.run).progress_current == 0
    run = _row(job.run)
    assert (run.status, run.attempt) == (Status.RUNNING, 2)


def test_job_killed_ends_killed_and_is_swallowed() -> None:
    with track("x") as job:
        job.info("stopping")
        raise JobKilled("asked")
    run = _row(job.run)
    assert run.status == Status.KILLED
    assert run.error == ""
    assert JobLog.objects.get().message == "stopping"


def test_an_outer_run_s_kill_seen_inside_a_nested_block_stops_both() -> None:
    """The outer job, asked to stop, sees it inside a nested ``track()`` block of its own:
    the inner block took the kill as its own, swallowed it, and the outer job went on to
    succeed. Now the inner run ends killed saying why, and the outer one is killed."""
    went_on = False
    with track("outer") as outer:
        assert JobRun.objects.filter(pk=outer.run.pk).request_kill() == 1
        outer._due = 0.0  # the next read is due (as after PROGRESS_INTERVAL)
        with track("inner") as inner:
            outer.check_kill()
        went_on = True
    assert not went_on
    _assert_both_stopped(outer, inner)
    assert _row(outer.run).message == "Killed on request."


def _assert_both_stopped(outer: JobHandle, inner: JobHandle) -> None:
    """The outer run was asked to stop and ended killed; the inner one ended killed with it, saying why."""
    outer_row, inner_row = _row(outer.run), _row(inner.run)
    assert (outer_row.status, inner_row.status) == (Status.KILLED, Status.KILLED)
    assert inner_row.kill_requested_at is None
    assert inner_row.message == (
        f"Stopped: run {outer.run.pk}, which it ran in, was asked to stop."
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.advance(),
        lambda job: job.heartbeat(),
        lambda job: job.check_kill(),
    ],
    ids=["advance", "heartbeat", "check_kill"],
)
def test_an_outer_run_s_kill_stops_a_step_that_reports_through_its_own_handle(
    call: Callable[[JobHandle], None],
) -> None:
    """A job that tracks a long step as a run of its own reports through the step's
    handle (``current_job()``) while the step lasts: a kill of the job's run was read by
    no progress call until the step ended on its own. The step's calls now read the runs
    it runs in too."""
    went_on = False
    with (
        track("imports.nightly") as job,
        track("imports.file", parent=job.run) as step,
    ):
        step.progress(0, total=1000)
        assert JobRun.objects.filter(pk=job.run.pk).request_kill() == 1
        job._due = step._due = 0.0  # both reads due (as after PROGRESS_INTERVAL)
        call(current_job())
        went_on = True
    assert not went_on
    _assert_both_stopped(job, step)


def test_an_outer_run_s_kill_is_seen_by_the_step_s_kill_requested() -> None:
    """``if job.kill_requested: ...`` (the clean stop) read the step's own run only, while
    its progress calls and ``check_kill()`` read the runs it runs in (found by a review)."""
    with (
        track("imports.nightly") as job,
        track("imports.file", parent=job.run) as step,
    ):
        assert JobRun.objects.filter(pk=job.run.pk).request_kill() == 1
        job._due = step._due = 0.0  # both reads due (as after PROGRESS_INTERVAL)
        assert current_job() is step
        assert step.kill_requested is True
        with pytest.raises(JobKilled) as raised:
            step.check_kill()
        assert raised.value.run_id == job.run.pk
        raise raised.value
    _assert_both_stopped(job, step)


def test_a_queued_run_asked_to_stop_is_seen_asked_when_track_starts_it() -> None:
    """A worker holds a copy of the queued run read before the kill, and starts it with
    ``track(run=...)``: the handle kept the copy's (no) request until its first read, a
    ``PROGRESS_INTERVAL`` away, and a short job ran to its end."""
    queued = JobRun.objects.enqueue("x")
    held = JobRun.objects.get(pk=queued.pk)  # read before the kill
    assert JobRun.objects.filter(pk=queued.pk).request_kill() == 1
    went_on = False
    with track("x", run=held) as job:
        job.check_kill()
        went_on = True
    assert (went_on, _row(queued).status) == (False, Status.KILLED)


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.advance(),
        lambda job: job.progress(1, 5),
        lambda job: job.step("next"),
        lambda job: job.message("on"),
    ],
    ids=["advance", "progress", "step", "message"],
)
def test_a_run_asked_to_stop_before_its_handle_stops_at_the_first_progress_call(
    call: Callable[[Any], None],
) -> None:
    """The handle of a run asked to stop while it waited (a Celery worker took a task the
    reaper had ended killed) raised only once a progress write was due, a
    ``PROGRESS_INTERVAL`` later: a short job that never called ``check_kill()`` ran to its
    end under a run that said killed."""
    queued = JobRun.objects.enqueue("x")
    assert JobRun.objects.filter(pk=queued.pk).request_kill() == 1
    calls = 0
    with track("x", run=queued, interval=3600) as job:
        for _ in range(3):
            call(job)
            calls += 1
    assert (calls, _row(queued).status) == (0, Status.KILLED)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fails", [False, True])
def test_a_job_whose_run_was_purged_meanwhile_ends_as_it_would_have(
    fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``purge(include_active=True)`` deleted the run under its job: leaving ``track()``
    raised ``JobRun.DoesNotExist`` into the job, in place of its own exception when it had
    one (an integration then recorded, or retried, the wrong error)."""
    raised: BaseException | None = None
    try:
        with track("x") as job:
            job.info("working")
            assert (
                JobRun.objects.purge(days=0, keep_last=0, include_active=True).runs == 1
            )
            job.info("still working")
            if fails:
                raise BoomError("the job's own error")
    except BaseException as exc:
        raised = exc
    assert type(raised) is (BoomError if fails else type(None))
    assert "was not recorded" in caplog.text
    assert not JobRun.objects.exists()


def test_exception_ends_failed_and_is_re_raised() -> None:
    with pytest.raises(ValueError, match="bad row 7"), track("x") as job:
        job.progress(3, total=10)
        raise ValueError("bad row 7")
    run = _row(job.run)
    assert run.status == Status.FAILED
    assert run.error == "ValueError: bad row 7"
    assert run.traceback.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("bad row 7")' in run.traceback
    assert run.progress_current == 3


def test_base_exceptions_end_failed_too() -> None:
    with pytest.raises(KeyboardInterrupt), track("x") as job:
        raise KeyboardInterrupt
    assert _row(job.run).error == "KeyboardInterrupt"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0, Status.SUCCEEDED),
        (None, Status.SUCCEEDED),
        (1, Status.FAILED),
        ("no input file", Status.FAILED),
    ],
)
def test_sys_exit_ends_succeeded_with_status_0_and_is_re_raised(
    code: Any, status: str
) -> None:
    """``sys.exit(0)`` (a command with nothing to do) exits 0, as Python counts it: its
    run was recorded failed, "SystemExit: 0"."""
    with pytest.raises(SystemExit) as caught, track("x") as job:
        job.result = {"nothing": "to do"}
        sys.exit(code)
    assert caught.value.code == code
    run = _row(job.run)
    assert run.status == status
    if status == Status.SUCCEEDED:
        assert (run.error, run.result) == ("", {"nothing": "to do"})
    else:
        assert run.error.startswith("SystemExit")


def test_an_error_logged_through_the_handle_after_the_end_marks_the_run() -> None:
    """docs/tracking.md: the run is marked ``has_errors`` once the job logged an error,
    whatever state the run is in. A line logged through the handle after its block (a
    thread of the job that goes on) was written, but the run was not marked: the
    admin's *has errors* filter and ``with_errors()`` never found it."""
    with track("reports.build") as job:
        job.info("built")
    job.error("upload of the report failed")
    run = _row(job.run)
    assert run.status == Status.SUCCEEDED
    assert list(run.logs.order_by("id").values_list("message", flat=True)) == [
        "built",
        "upload of the report failed",
    ]
    assert JobRun.objects.with_errors().filter(pk=run.pk).exists()


def test_error_sets_has_errors_and_logs_are_buffered(
    django_assert_max_num_queries,
) -> None:
    with track("x", interval=3600) as job:
        with django_assert_max_num_queries(0):
            job.debug("d")
            job.info("copied %d rows", 5)
            job.warning("w")
            job.error("row %s is bad", "x1", extra={"row": "x1"})
        assert not JobLog.objects.exists()
        job.flush()
        assert _row(job.run).has_errors is True
        job.info("after")
    logs = list(
        JobLog.objects.for_run(job.run)
        .order_by("id")
        .values_list("level", "message", "extra")
    )
    assert logs == [
        (10, "d", {}),
        (20, "copied 5 rows", {}),
        (30, "w", {}),
        (40, "row x1 is bad", {"row": "x1"}),
        (20, "after", {}),
    ]
    assert _row(job.run).status == Status.SUCCEEDED
    assert JobRun.objects.with_errors().count() == 1


def test_log_lines_are_cut(settings) -> None:
    settings.JOBSTATUS = {"LOG_MAX_LENGTH": 50}
    with track("x") as job:
        job.info("z" * 80)
    message = JobLog.objects.get().message
    assert len(message) == 50
    assert message.endswith("[cut 30 characters]")


def test_many_logs_flush_before_the_interval() -> None:
    with track("x", interval=3600) as job:
        with CaptureQueriesContext(connection) as queries:
            for i in range(500):
                job.info("line %d", i)
        assert JobLog.objects.count() == 500
        assert len(_updates(queries)) == 1


def test_a_line_logged_while_the_handle_writes_is_kept() -> None:
    """Another thread of the job logging while the handle wrote: the line was dropped
    (the buffer was emptied after the write, not swapped before it)."""
    logged_meanwhile: list[str] = []

    def log_meanwhile(execute: Any, sql: str, params: Any, *args: Any) -> Any:
        if "django_jobstatus_joblog" in sql and not logged_meanwhile:
            logged_meanwhile.append(sql)
            job.info("meanwhile")  # as another thread of the job would
        return execute(sql, params, *args)

    with track("x", interval=3600) as job:
        job.info("before")
        with connection.execute_wrapper(log_meanwhile):
            job.flush()
        assert logged_meanwhile
    messages = JobLog.objects.for_run(job.run).order_by("id")
    assert list(messages.values_list("message", flat=True)) == ["before", "meanwhile"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_lines_a_job_s_threads_log_are_each_written_once() -> None:
    """A job logging from a thread pool lost lines and wrote others twice: each thread
    wrote the shared buffer, then emptied it."""
    threads, lines = 8, 1500

    def work(index: int) -> None:
        try:
            for line in range(lines):
                job.info("t%d line %d", index, line)
                job.advance()
        finally:
            connection.close()

    with track("x", interval=0.01) as job:
        job.progress(0, total=threads * lines)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
    messages = list(JobLog.objects.for_run(job.run).values_list("message", flat=True))
    assert len(messages) == len(set(messages)) == threads * lines
    assert _row(job.run).progress_current == threads * lines


# Handing what a handle did not write to another (an RQ work horse to its worker).


def test_what_a_handle_did_not_write_is_written_by_the_handle_it_is_handed_to(
    make_run,
) -> None:
    run = make_run("x")
    horse = JobHandle(JobRun.objects.get(pk=run.pk), interval=3600)
    horse.step("load", total=4)
    horse.advance(3)
    horse.message("3 of 4")
    horse.info("a %s line", "first", extra={"n": 1})
    horse.error("then an error")
    horse.result = {"rows": 3}
    # Through JSON, as RQ's JSON serializer would carry it.
    unwritten = json.loads(json.dumps(horse.unwritten()))
    assert not JobLog.objects.exists()  # nothing written yet

    worker = JobHandle(JobRun.objects.get(pk=run.pk), interval=3600)
    worker.take(unwritten)
    worker.finish()
    done = _row(run)
    assert (done.status, done.step, done.message) == (
        Status.SUCCEEDED,
        "load",
        "3 of 4",
    )
    assert (done.progress_current, done.progress_total) == (3, 4)
    assert (done.has_errors, done.result) == (True, {"rows": 3})
    lines = list(done.logs.order_by("id"))
    assert [(line.level, line.message, line.extra) for line in lines] == [
        (20, "a first line", {"n": 1}),
        (40, "then an error", {}),
    ]
    # Each line keeps the time it was logged at, not the time it was written.
    assert [line.created_at for line in lines] == [
        line.created_at for line in horse._logs
    ]


def test_a_handle_that_wrote_or_holds_too_much_hands_nothing_over(
    make_run, settings
) -> None:
    settings.JOBSTATUS = {"LOG_MAX_LENGTH": 10_000}
    handle = JobHandle(make_run("x"), interval=3600)
    assert handle.unwritten() == {
        "progress": None,
        "has_errors": False,
        "result": None,
        "logs": [],
    }
    lines = (
        HANDOVER_MAX_CHARS // 10_000
    )  # 6 lines of 10,000 characters: 60,000 and more
    for _ in range(lines):
        handle.info("x" * 10_000)
    assert handle.unwritten() is not None
    handle.info("x" * 10_000)
    assert handle.unwritten() is None  # too much to hand over
    handle.flush()
    handle.info("one more")
    assert handle.unwritten() is None  # it has written: it writes the rest itself


def test_a_result_json_can_no_longer_hold_is_not_handed_over(make_run) -> None:
    handle = JobHandle(make_run("x"), interval=3600)
    handle.result = {"at": []}
    handle.result["at"].append(timezone.now())  # its finish() fails the run
    assert handle.unwritten() is None


# Bad input.


def test_result_must_be_json() -> None:
    with (
        pytest.raises(TypeError, match="^result must be JSON-serializable"),
        track("x") as job,
    ):
        job.result = {"when": object()}
    run = _row(job.run)
    assert run.status == Status.FAILED
    assert run.error.startswith("TypeError: result must be JSON-serializable")
    assert run.result is None


def test_a_result_changed_after_it_was_set_fails_the_run_as_its_setting_would() -> None:
    """``job.result = {}`` then ``job.result["when"] = now()``: the setter saw a valid
    value; the end finds it no longer is. The run ends failed, not left running."""
    with (
        pytest.raises(TypeError, match="^result must be JSON-serializable"),
        track("x") as job,
    ):
        job.result = {}
        job.result["when"] = timezone.now()
    run = _row(job.run)
    assert (run.status, run.result) == (Status.FAILED, None)
    assert run.error.startswith("TypeError: result must be JSON-serializable")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"params": {"x": object()}}, TypeError, "^params"),
        ({"data": {"x": {1, 2}}}, TypeError, "^data"),
        ({}, ValueError, "job_name"),
    ],
)
def test_bad_input_writes_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    body_ran = False
    with pytest.raises(error, match=match), track("" if not kwargs else "x", **kwargs):
        body_ran = True
    assert body_ran is False
    assert not JobRun.objects.exists()


# Best-effort writes and durable ends.


def test_failed_progress_write_is_logged_and_retried(failing_writes, caplog) -> None:
    with track("x", interval=3600) as job:
        job.progress(5, total=10)
        job.error("bad")
        wrapper = failing_writes()
        job.flush()  # does not raise into the job
        assert wrapper.failed == 1
        assert "Could not record the progress of run" in caplog.text
        assert _row(job.run).progress_current == 0
        wrapper.times = 0  # the database is back
        job.advance()
        job.flush()
        run = _row(job.run)
        assert (run.progress_current, run.has_errors) == (6, True)
        assert list(JobLog.objects.values_list("message", flat=True)) == ["bad"]
    assert _row(job.run).status == Status.SUCCEEDED


def test_failed_kill_read_is_logged_not_raised(failing_writes, caplog) -> None:
    with track("x") as job:
        JobRun.objects.get(pk=job.run.pk).request_kill()
        job._due = 0.0
        wrapper = failing_writes(times=1)
        assert job.kill_requested is False  # the read failed with the write
        assert wrapper.failed == 1
        assert "Could not record the progress of run" in caplog.text
        job._due = 0.0
        assert job.kill_requested is True  # read again at the next write


def test_finish_retries_until_the_database_is_back(failing_writes, caplog) -> None:
    with track("x") as job:
        job.info("last words")
        wrapper = failing_writes(times=2)
    assert wrapper.failed == 2
    run = _row(job.run)
    assert run.status == Status.SUCCEEDED
    assert JobLog.objects.get().message == "last words"


def test_finish_gives_up_after_the_retry_timeout(
    failing_writes, settings, caplog
) -> None:
    settings.JOBSTATUS = {"FINISH_RETRY_TIMEOUT": 0.3}
    with track("x") as job:
        wrapper = failing_writes()
    assert wrapper.failed >= 2
    assert "Could not record the end of run" in caplog.text
    wrapper.times = 0
    assert _row(job.run).status == Status.RUNNING


def test_a_reaped_run_stays_lost(caplog) -> None:
    with track("x", interval=3600) as job:
        JobRun.objects.get(pk=job.run.pk).mark_lost()
        job.info("still here")
    assert _row(job.run).status == Status.LOST
    assert "was not recorded" in caplog.text
    # Its last log lines are kept all the same, and a line says how the job ended.
    assert list(job.run.logs.order_by("pk").values_list("message", flat=True)) == [
        "still here",
        "The job went on after its run had ended lost, and ended succeeded (attempt 1); "
        "the run stays lost.",
    ]
    with pytest.raises(RuntimeError), track("y") as job:
        JobRun.objects.get(pk=job.run.pk).mark_lost()
        raise RuntimeError("late")
    assert _row(job.run).status == Status.LOST


def test_an_end_that_failed_at_commit_is_tried_again_from_the_start(
    monkeypatch, caplog
) -> None:
    # The first try moves the instance, then the connection drops before COMMIT.
    moves = []
    original = JobRun._transition

    def drop_after_the_update(run: JobRun, *args: Any, **kwargs: Any) -> None:
        original(run, *args, **kwargs)
        moves.append(run.status)
        if len(moves) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    with track("x", interval=3600) as job:
        job.info("last words")
        monkeypatch.setattr(JobRun, "_transition", drop_after_the_update)
    assert moves == [Status.SUCCEEDED, Status.SUCCEEDED]
    run = _row(job.run)
    assert run.status == Status.SUCCEEDED
    assert list(run.logs.values_list("message", flat=True)) == ["last words"]
    assert "was not recorded" not in caplog.text


def test_an_end_whose_answer_was_lost_counts_as_recorded(monkeypatch, caplog) -> None:
    # The first try commits, then its answer is lost with the connection.
    tries = []
    original = JobHandle._write_logs_then

    def commit_then_drop(handle: JobHandle, *args: Any, **kwargs: Any) -> None:
        original(handle, *args, **kwargs)
        tries.append(1)
        if len(tries) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    with track("x", interval=3600) as job:
        job.info("last words")
        monkeypatch.setattr(JobHandle, "_write_logs_then", commit_then_drop)
    assert len(tries) == 1  # the second try found the end recorded
    assert job.run.status == Status.SUCCEEDED
    assert _row(job.run).status == Status.SUCCEEDED
    assert JobLog.objects.filter(run_id=job.run.pk).count() == 1
    assert "was not recorded" not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_an_end_whose_commit_answer_was_lost_is_announced_once(monkeypatch) -> None:
    """COMMIT went through and its answer was lost with the connection: the end is found
    written on the next try, but Django drops the ``on_commit`` hooks of a COMMIT that
    raised, so ``job_status_changed`` was never sent (a batch's parent was not refreshed,
    a monitored job's failure not checked)."""
    from django_jobstatus.signals import job_status_changed

    connection = connections["default"]
    real_commit = connection._commit
    lost = []

    def commit_then_lose_the_answer() -> None:
        real_commit()
        if not lost:
            lost.append(True)
            raise OperationalError("server closed the connection unexpectedly")

    ends: list[str] = []

    def receiver(sender: Any, run: JobRun, status: str, **kwargs: Any) -> None:
        if status in Status.TERMINAL:
            ends.append(status)

    job_status_changed.connect(receiver, dispatch_uid="test.lost_answer")
    try:
        with track("x", interval=3600) as job:
            job.info("one line: the end is written in a transaction")
            monkeypatch.setattr(connection, "_commit", commit_then_lose_the_answer)
        monkeypatch.undo()
    finally:
        job_status_changed.disconnect(dispatch_uid="test.lost_answer")
    assert lost
    assert _row(job.run).status == Status.SUCCEEDED
    assert ends == [Status.SUCCEEDED]


def test_a_start_whose_answer_was_lost_records_one_run(monkeypatch) -> None:
    # The first try commits, then its answer is lost with the connection.
    original = JobRunQuerySet.start
    tries = []

    def commit_then_drop(queryset: JobRunQuerySet, *args: Any, **kwargs: Any) -> Any:
        run = original(queryset, *args, **kwargs)
        tries.append(run.pk)
        if len(tries) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return run

    monkeypatch.setattr(JobRunQuerySet, "start", commit_then_drop)
    with track("x") as job:
        pass
    assert tries == [job.run.pk]  # the second try found the run recorded
    assert list(JobRun.objects.values_list("pk", "status")) == [
        (job.run.pk, Status.SUCCEEDED)
    ]


def test_a_run_killed_by_force_stays_killed() -> None:
    with track("x") as job:
        JobRun.objects.get(pk=job.run.pk).mark_killed()
    assert _row(job.run).status == Status.KILLED


@pytest.mark.parametrize("flush", [True, False])
def test_an_error_logged_after_a_forced_kill_marks_the_run_has_errors(
    flush: bool,
) -> None:
    """A job killed by force that cannot be stopped at once (a thread pool, a solo
    worker) goes on and logs ``job.error(...)``: its ERROR line was written on the
    killed run, by its next write or by its end, but the run kept ``has_errors =
    False``, so the admin's "has errors" filter and ``with_errors()`` missed it. The
    flag went only with the progress write, refused once the run had ended, while
    ``JobRun.log()`` at ERROR sets it whatever the run's state."""
    with track("x", interval=3600) as job:
        JobRun.objects.get(pk=job.run.pk).mark_killed()
        job.error("row 7 could not be written")
        if flush:
            job.flush()  # refused: the run ended elsewhere; its lines are written
            assert _row(job.run).has_errors is True
    run = _row(job.run)
    assert run.status == Status.KILLED
    assert JobLog.objects.for_run(run).errors().count() == 1
    assert list(JobRun.objects.with_errors()) == [run]


@pytest.mark.parametrize("raised", [None, ValueError("boom")])
def test_a_job_that_went_on_after_its_run_ended_says_so_on_the_run(
    raised: Exception | None,
) -> None:
    """Celery's terminate sends SIGTERM and reports the run killed at once; a task that
    handles SIGTERM runs on and ends. The run said *killed* with nothing to tell that the
    job went on to its end: the record claimed a stop that did not happen."""
    with contextlib.suppress(ValueError), track("x") as job:
        JobRun.objects.get(pk=job.run.pk).mark_killed(message="Killed: terminated.")
        if raised is not None:
            raise raised
    run = _row(job.run)
    assert (run.status, run.message) == (Status.KILLED, "Killed: terminated.")
    ended = "failed" if raised else "succeeded"
    [line] = run.logs.filter(level=logging.WARNING)
    assert line.message == (
        f"The job went on after its run had ended killed, and ended {ended} "
        "(attempt 1); the run stays killed."
    )


def test_restarting_an_unknown_run_fails_loudly(make_run) -> None:
    run = make_run(status=Status.SUCCEEDED)
    with pytest.raises(InvalidTransition), track("x", run=run):
        pass


# PostgreSQL: a second connection for tracking, and races.


@pytest.fixture
def close_side_connections() -> Iterator[None]:
    yield
    alias = connection.alias + SIDE_SUFFIX
    if alias in connections.settings:
        connections[alias].close()


def _in_thread(func: Callable[[], Any]) -> Any:
    """Run ``func`` in another thread (its own database connection) and return its value."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.postgres
# The side connection is an alias of its own: a test that lets the job write through it
# names it (or "__all__"), as Django's TransactionTestCase.databases wants.
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_progress_is_visible_while_the_job_runs_inside_atomic(
    close_side_connections,
) -> None:
    with (
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
        track("x", interval=3600) as job,
    ):
        JobRun.objects.create(job_name="rolled back")  # the job's own work
        job.progress(5, total=10)
        job.info("half way")
        job.flush()
        seen = _in_thread(
            lambda: (
                JobRun.objects.filter(pk=job.run.pk)
                .values_list("status", "progress_current", "heartbeat_at")
                .get()
            )
        )
        assert seen[:2] == (Status.RUNNING, 5)
        assert seen[2] is not None
        assert _in_thread(
            lambda: list(
                JobLog.objects.filter(run_id=job.run.pk).values_list(
                    "message", flat=True
                )
            )
        ) == ["half way"]
        # A kill request from another process reaches the job.
        assert (
            _in_thread(lambda: JobRun.objects.get(pk=job.run.pk).request_kill()) is True
        )
        job._due = 0.0
        assert job.kill_requested is True
        _ = 1 / 0
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.status == Status.FAILED
    assert run.error == "ZeroDivisionError: division by zero"
    assert run.progress_current == 5
    assert not JobRun.objects.filter(job_name="rolled back").exists()


@pytest.mark.postgres
# The side connection is an alias of its own: a test that lets the job write through it
# names it (or "__all__"), as Django's TransactionTestCase.databases wants.
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_job_inside_atomic_that_succeeds(close_side_connections) -> None:
    with transaction.atomic(), track("x") as job:
        assert _in_thread(lambda: JobRun.objects.filter(pk=job.run.pk).exists())
    assert JobRun.objects.get(pk=job.run.pk).status == Status.SUCCEEDED


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failed_log_write_leaves_the_job_s_own_connection_open(
    django_user_model,
) -> None:
    """A refused write (the run purged under its job: the lines' foreign key) closed the
    connection it went through, outside a transaction the job's own: the job's
    server-side cursor died with "connection is closed"."""
    for index in range(6):
        django_user_model.objects.create(username=f"user{index}")
    seen = []
    with track("x", interval=0) as job:
        users = django_user_model.objects.order_by("pk").iterator(chunk_size=2)
        for index, user in enumerate(users):
            if index == 1:
                JobRun.objects.purge(days=0, keep_last=0, include_active=True)
            job.info("user %s", user.username)
            seen.append(user.username)
    assert seen == [f"user{index}" for index in range(6)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_run_created_in_the_job_s_transaction_is_tracked_in_it(
    close_side_connections,
) -> None:
    """``start_batch()`` or ``enqueue()`` then ``track(run=...)`` in one
    ``transaction.atomic()`` raised ``JobRun.DoesNotExist``: the second connection
    cannot see a run that is not committed."""
    with transaction.atomic():
        parent = start_batch("x.all", ["x.one"])
        for child in parent.children.all():
            with track(child.job_name, run=child, interval=0) as job:
                job.info("in the transaction")
                job.progress(1, total=1)
                job.flush()
                assert (
                    _in_thread(lambda: JobRun.objects.filter(pk=job.run.pk).exists())
                    is False
                )
    run = _row(job.run)
    assert (run.status, run.progress_current) == (Status.SUCCEEDED, 1)
    assert JobLog.objects.for_run(run).count() == 1
    assert _row(parent).status == Status.SUCCEEDED
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        rolled_back = JobRun.objects.enqueue("x")
        with track("x", run=rolled_back):
            _ = 1 / 0
    assert not JobRun.objects.filter(pk=rolled_back.pk).exists()


TARGETS: dict[str, Callable[[JobRun], None]] = {
    "succeeded": lambda run: run.mark_succeeded({"by": "worker"}),
    "failed": lambda run: run.mark_failed(ValueError("x")),
    "lost": lambda run: run.mark_lost(),
    "killed": lambda run: run.mark_killed(),
    "retrying": lambda run: run.mark_failed(ValueError("x"), retry=True),
    "restart": lambda run: run.mark_running(),
}


def _race(run_id: Any, moves: list[Callable[[JobRun], None]]) -> list[str]:
    """Each move in its own thread and connection, released together; their outcomes."""
    barrier = threading.Barrier(len(moves))
    outcomes: list[str] = [""] * len(moves)

    def worker(i: int) -> None:
        try:
            run = JobRun.objects.get(pk=run_id)
            barrier.wait(10)
            try:
                moves[i](run)
                outcomes[i] = "won"
            except InvalidTransition:
                outcomes[i] = "lost"
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(moves))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_transitions_have_one_winner() -> None:
    for _ in range(5):
        run = JobRun.objects.start("race")
        outcomes = _race(run.pk, list(TARGETS.values()))
        assert sorted(outcomes) == ["lost"] * (len(TARGETS) - 1) + ["won"]
        winner = list(TARGETS)[outcomes.index("won")]
        row = JobRun.objects.get(pk=run.pk)
        if winner == "restart":
            assert (row.status, row.attempt) == (Status.RUNNING, 2)
        elif winner == "retrying":
            assert (row.status, row.attempt) == (Status.RETRYING, 2)
        else:
            assert (row.status, row.attempt) == (winner, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_workers_start_a_queued_run_once() -> None:
    for _ in range(5):
        run = JobRun.objects.enqueue("race")
        workers = [f"w:{i}" for i in range(4)]
        outcomes = _race(
            run.pk, [lambda run, w=w: run.mark_running(worker=w) for w in workers]
        )
        assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
        row = JobRun.objects.get(pk=run.pk)
        assert (row.status, row.attempt, row.worker) == (
            Status.RUNNING,
            1,
            workers[outcomes.index("won")],
        )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_restarts_bump_the_attempt_once() -> None:
    run = JobRun.objects.start("race")
    outcomes = _race(run.pk, [lambda run: run.mark_running()] * 4)
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    row = JobRun.objects.get(pk=run.pk)
    assert row.attempt == 2
    assert len(row.attempts) == 1


# Text the database cannot store, and sizes.

# Any text: every code point, lone surrogates included, with NUL and surrogates often.
ANY_TEXT = st.text(
    st.one_of(
        st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d"]),
        st.characters(exclude_categories=()),
    ),
    max_size=30,
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)


def stored(value: Any) -> Any:
    """What the database keeps of ``value``: NUL and lone surrogates as U+FFFD, at any depth."""
    if isinstance(value, str):
        return "".join(
            "\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value
        )
    if isinstance(value, dict):
        return {stored(key): stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [stored(item) for item in value]
    return value


class BoomError(Exception):
    pass


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    texts=st.lists(ANY_TEXT, min_size=7, max_size=7),
    value=ANY_JSON,
    outcome=st.sampled_from([Status.SUCCEEDED, Status.FAILED, Status.KILLED]),
)
def test_any_text_never_wedges_a_run(
    texts: list[str], value: Any, outcome: str
) -> None:
    subject, key, step, message, line, error_text, kill_text = texts
    raised = BoomError(error_text)
    try:
        with track(
            "any.text",
            params={key: value},
            data={"v": value},
            subject=subject,
            interval=0,  # every call writes
        ) as job:
            job.step(step, total=10)
            job.progress(1)
            job.advance()
            job.message(message)
            job.log(logging.INFO, line, extra={key: value})
            for log in (job.debug, job.info, job.warning, job.error):
                log(line)
            job.heartbeat()
            job.check_kill()
            assert job.kill_requested is False
            job.result = {key: value}
            job.flush()
            if outcome == Status.FAILED:
                raise raised
            if outcome == Status.KILLED:
                raise JobKilled(kill_text)
    except BoomError as caught:
        assert caught is raised  # the job's own exception, re-raised
    else:
        assert outcome != Status.FAILED
    run = _row(job.run)
    assert run.status == outcome
    assert (run.subject, run.step, run.progress_current) == (
        stored(subject),
        stored(step),
        2,
    )
    assert (run.params, run.data) == (stored({key: value}), {"v": stored(value)})
    assert run.has_errors is True
    assert list(run.logs.values_list("message", flat=True)) == [stored(line)] * 5
    assert run.logs.order_by("id").first().extra == stored({key: value})
    if outcome == Status.SUCCEEDED:
        assert (run.result, run.message) == (stored({key: value}), stored(message))
    elif outcome == Status.FAILED:
        name = BoomError.__qualname__
        assert run.error == stored(f"{name}: {error_text}" if error_text else name)
        assert "raise raised" in run.traceback


def test_an_exception_whose_text_cannot_be_printed_is_still_re_raised() -> None:
    raised = UnprintableError()
    with pytest.raises(UnprintableError) as caught, track("x"):
        raise raised
    assert caught.value is raised
    run = JobRun.objects.get()
    assert (run.status, run.error) == (Status.FAILED, "UnprintableError: <unprintable>")


def test_an_end_the_database_refuses_is_recorded_alone(caplog) -> None:
    refused = []

    def refuse_details(execute: Any, sql: str, params: Any, *args: Any) -> Any:
        if sql.startswith("UPDATE") and "BoomError: details" in (params or ()):
            refused.append(sql)
            raise DataError("value refused (test)")
        return execute(sql, params, *args)

    raised = BoomError("details")
    with (
        pytest.raises(BoomError) as caught,
        connection.execute_wrapper(refuse_details),
        track("x") as job,
    ):
        job.info("a line")
        raise raised
    assert caught.value is raised
    assert refused
    run = _row(job.run)
    assert (run.status, run.error, run.traceback) == (Status.FAILED, "BoomError", "")
    assert "recording the end alone" in caplog.text
    assert JobLog.objects.for_run(run).get().message == "a line"  # the lines stay


@pytest.mark.parametrize("level", [32768, 40000, -1])
def test_a_log_level_the_column_cannot_hold_is_a_value_error(level: int) -> None:
    """``job.log(40000, ...)`` was buffered, and on PostgreSQL every later write failed on
    it: the run lost its progress, result and every other line."""
    with track("x") as job:
        job.info("first")
        with pytest.raises(ValueError, match=f"not {level}"):
            job.log(level, "a custom level")
        job.log(32767, "the highest level")
        job.result = {"done": 1}
    lines = JobLog.objects.for_run(job.run).order_by("id")
    assert list(lines.values_list("level", "message")) == [
        (20, "first"),
        (32767, "the highest level"),
    ]
    assert _row(job.run).result == {"done": 1}


def test_an_end_whose_log_lines_the_database_refuses_keeps_the_rest(caplog) -> None:
    """A log line the database refused at the end dropped every line, the progress and
    the result with it ("recording the end alone")."""

    def refuse_one_line(execute: Any, sql: str, params: Any, *args: Any) -> Any:
        if "django_jobstatus_joblog" in sql and "refused line" in str(params):
            raise DataError("value refused (test)")
        return execute(sql, params, *args)

    with connection.execute_wrapper(refuse_one_line), track("x", interval=3600) as job:
        job.info("first")
        job.info("refused line")
        job.info("second")
        job.progress(5, total=10)
        job.result = {"done": 5}
    run = _row(job.run)
    assert (run.status, run.result, run.progress_current) == (
        Status.SUCCEEDED,
        {"done": 5},
        5,
    )
    lines = JobLog.objects.for_run(run).order_by("id")
    assert list(lines.values_list("message", flat=True)) == ["first", "second"]
    assert "recording the end alone" not in caplog.text


def test_a_megabyte_of_text_or_json_is_capped(settings) -> None:
    settings.JOBSTATUS = {"REDACT_KEYS": ["password"]}
    big = "x" * 1_000_000
    with (
        pytest.raises(BoomError),
        track("x", params={"password": "hunter2", "a": big}) as job,
    ):
        job.message(big)
        job.step(big)
        job.info("line", extra={"a": big})
        raise BoomError(big)
    run = _row(job.run)
    assert len(run.message) == 2000
    assert run.message.endswith("… [cut 998000 characters]")
    assert len(run.step) == 255
    assert run.step.endswith("characters]")
    assert len(run.error) == 10_000
    assert run.error.startswith("BoomError: xxx")
    assert len(run.traceback) == 100_000
    assert run.traceback.startswith("[cut ")
    assert run.traceback.endswith("x" * 1000 + "\n")  # keeps its end
    for value in (run.params, run.logs.get().extra):
        assert value["cut"] is True
        assert value["length"] > 1_000_000
        assert len(value["preview"]) == 1000
        assert "hunter2" not in value["preview"]  # redacted before the preview is cut
    assert run.params["preview"].startswith('{"password": "********", "a": "xxx')
    with pytest.raises(ValueError, match="too big to keep"):
        contrib.retry(run)  # not with other arguments than the job had
    with track("y") as job:
        job.result = {"rows": [big]}
    assert _row(job.run).result["cut"] is True


@pytest.mark.parametrize("name", ["subject", "source"])
def test_a_name_too_long_is_a_value_error_before_anything_is_written(name: str) -> None:
    body_ran = False
    with (
        pytest.raises(ValueError, match=f"{name} is 256 characters long"),
        track("x", **{name: "s" * 256}),
    ):
        body_ran = True
    assert body_ran is False
    assert not JobRun.objects.exists()
    with track("x", subject="s" * 255):  # the most it holds
        pass
    assert JobRun.objects.get().subject == "s" * 255


def test_task_system_names_too_long_are_cut() -> None:
    long = "q" * 300
    with track("x", queue=long, worker=long, backend_job_id=long):
        pass
    run = JobRun.objects.get()
    for value in (run.queue, run.worker, run.backend_job_id):
        assert len(value) == 255
        assert value.endswith("… [cut 45 characters]")


# while_database_away(): the one retry loop of the start, the end and the integrations' writes.


def _failing(times: int, error: Exception) -> tuple[Callable[[str], str], list[str]]:
    """An action that raises ``error`` ``times`` times, then returns the alias it was given."""
    calls: list[str] = []

    def action(alias: str) -> str:
        calls.append(alias)
        if len(calls) <= times:
            raise error
        return alias

    return action, calls


def test_while_database_away_tries_again_with_a_doubling_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_jobstatus import tracking

    pauses: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", pauses.append)
    action, calls = _failing(3, OperationalError("away"))
    assert tracking.while_database_away(action, attempts=4, delay=0.2) == "default"
    assert (len(calls), pauses) == (4, [0.2, 0.4, 0.8])


def test_while_database_away_raises_after_its_attempts_or_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_jobstatus import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    action, calls = _failing(5, OperationalError("away"))
    with pytest.raises(OperationalError):
        tracking.while_database_away(action, attempts=2, delay=0)
    assert len(calls) == 2
    action, calls = _failing(5, OperationalError("away"))
    with pytest.raises(OperationalError):
        tracking.while_database_away(action, timeout=0.05, delay=0.1)
    assert len(calls) == 1  # the next try would come after the timeout


def test_while_database_away_raises_other_errors_at_once() -> None:
    from django_jobstatus import tracking

    action, calls = _failing(1, DataError("refused"))
    with pytest.raises(DataError):
        tracking.while_database_away(action, attempts=3)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="timeout or a number of attempts"):
        tracking.while_database_away(action)


def _run_a_forking_job(name: str, child: Callable[[], None]) -> tuple[str, str]:
    """A tracked job that forks ``child`` and waits for it: its run's status once the child
    exited (the job still running), and at its end."""
    parent = os.getpid()
    seen: list[str] = []
    try:
        with track(name) as job:
            connections.close_all()  # Django's advice: no connection shared with a fork
            pid = os.fork()
            if pid == 0:
                child()
                os._exit(0)
            os.waitpid(pid, 0)
            seen.append(JobRun.objects.get(pk=job.run.pk).status)
            job.info("the job goes on after its child")
    except BaseException:
        if os.getpid() != parent:
            os._exit(0)  # the child, out of track(): never back into pytest
        raise
    return seen[0], JobRun.objects.get(pk=job.run.pk).status


@pytest.mark.postgres  # a child's connection to SQLite's in-memory test database sees none of it
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["sys.exit", "an exception"])
def test_a_forked_child_leaving_the_block_does_not_end_its_parent_s_run(how):
    """A child forked inside ``track()`` unwinds through the block when it calls
    ``sys.exit()`` or raises: it ended the run (succeeded, or failed with the child's
    error) while the job went on, and the job's own end was then refused."""

    def child() -> None:
        if how == "sys.exit":
            sys.exit(0)
        raise RuntimeError("only the child failed")

    while_running, at_end = _run_a_forking_job(f"tests.fork.{how}", child)
    assert while_running == Status.RUNNING
    assert at_end == Status.SUCCEEDED
