"""django_jobstatus.batches: runs under one parent, whose status and progress follow its children."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from django_jobstatus import JobKilled, batches, compat, track
from django_jobstatus.batches import (
    aggregate,
    batch,
    batch_status,
    refresh_batch,
    request_kill_batch,
    start_batch,
)
from django_jobstatus.models import JobRun, Status

Q, R, S, F, K, L, T = (
    Status.QUEUED,
    Status.RUNNING,
    Status.SUCCEEDED,
    Status.FAILED,
    Status.KILLED,
    Status.LOST,
    Status.RETRYING,
)


# The tests that run a task through Django's tasks framework.
needs_tasks = pytest.mark.skipif(
    not compat.task_signal_modules(),
    reason="needs a tasks framework: Django 6, or the tasks extra on Django 5.2",
)


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ([Q, Q, Q], Q),
        ([R, Q, Q], R),
        ([S, Q], R),
        ([T, S], R),
        ([S, S, S], S),
        ([S, F, R], F),
        ([Q, F], F),
        ([S, L], F),
        ([S, K], K),
        ([K, R], R),
    ],
)
def test_aggregate(children: list[str], expected: str) -> None:
    counts: dict[str, int] = {}
    for status in children:
        counts[status] = counts.get(status, 0) + 1
    assert aggregate(counts) == expected


def test_start_batch_records_a_parent_and_queued_children(
    db: None, django_user_model: Any
) -> None:
    owner = django_user_model.objects.create(username="ada")
    parent = start_batch(
        "import.all",
        [
            "import.one",
            {
                "job_name": "import.two",
                "params": {"file": "b.csv"},
                "subject": "files.File:2",
            },
        ],
        owner=owner,
        source="api",
    )
    assert (
        parent.job_name,
        parent.status,
        parent.progress_total,
        parent.source,
        parent.owner,
    ) == ("import.all", Q, 2, "api", owner)
    children = list(parent.children.order_by("job_name"))
    assert [(c.job_name, c.status, c.source, c.owner_id) for c in children] == [
        ("import.one", Q, "api", owner.pk),
        ("import.two", Q, "api", owner.pk),
    ]
    assert (children[1].params, children[1].subject) == (
        {"file": "b.csv"},
        "files.File:2",
    )
    assert all(child.queued_at is not None for child in children)
    state = batch_status(parent)
    assert (state.status, state.done, state.total, state.progress) == (Q, 0, 2, 0.0)


@pytest.mark.parametrize(
    "children",
    [[], [""], [{"params": {}}], [{"job_name": "x", "params": {"bad": object()}}]],
)
def test_start_batch_refuses_bad_children(db: None, children: list[Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        start_batch("batch", children)
    assert not JobRun.objects.exists()


def test_parent_follows_its_children(
    db: None, django_capture_on_commit_callbacks: Any
) -> None:
    parent = start_batch("batch", ["a", "b", "c"])
    a, b, c = parent.children.order_by("job_name")
    with django_capture_on_commit_callbacks(execute=True), track("a", run=a):
        pass
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current, parent.progress_total) == (R, 1, 3)
    assert parent.started_at is not None
    with django_capture_on_commit_callbacks(execute=True):
        with track("b", run=b):
            pass
        with track("c", run=c):
            pass
    parent.refresh_from_db()
    assert (
        parent.status,
        parent.progress_current,
        parent.progress,
        parent.finished_at is not None,
    ) == (S, 3, 1.0, True)
    assert parent.result == {"children": {"succeeded": 3}}


def test_one_failed_child_fails_the_parent(
    db: None, django_capture_on_commit_callbacks: Any
) -> None:
    parent = start_batch("batch", ["a", "b"])
    a, _b = parent.children.order_by("job_name")
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(ZeroDivisionError),
        track("a", run=a),
    ):
        1 / 0  # noqa: B018
    parent.refresh_from_db()
    assert parent.status == F
    assert parent.error == "1 of 2 child runs failed."
    assert (parent.progress_current, parent.progress_total) == (1, 2)


def test_a_failed_batch_s_error_and_result_follow_its_children_to_their_end(
    db: None, django_capture_on_commit_callbacks: Any
) -> None:
    """The parent failed with its first failed child, and its error and result stayed as
    they were then: "1 of 3 child runs failed." and two children queued, for good, while
    two had failed and one succeeded."""
    parent = start_batch("batch", ["a", "b", "c"])
    first, second, third = parent.children.order_by("job_name")
    for child in (first, second, third):  # each refresh runs as its child's end commits
        with (
            django_capture_on_commit_callbacks(execute=True),
            contextlib.suppress(ValueError),
            track(child.job_name, run=child),
        ):
            if child != second:
                raise ValueError("bad file")
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current) == (F, 3)
    assert parent.error == "2 of 3 child runs failed."
    assert parent.result == {"children": {"failed": 2, "succeeded": 1}}
    assert (
        parent.error_fingerprint == JobRun.objects.get(pk=parent.pk).error_fingerprint
    )


def test_a_running_parent_is_not_reaped_while_a_child_is_active(db: None) -> None:
    """No process beats for a parent: it is alive while a child is queued, running or retrying."""
    parent = start_batch("batch", ["a", "b", "c"])
    a, b, c = parent.children.order_by("job_name")
    a.mark_running()
    a.mark_succeeded()
    assert refresh_batch(parent).status == R
    b.mark_running()  # b's worker beats for it; nothing beats for the parent
    long_ago = timezone.now() - timedelta(hours=1)
    JobRun.objects.filter(pk=parent.pk).update(heartbeat_at=long_ago)
    assert list(JobRun.objects.stale(300)) == []
    assert JobRun.objects.reap(300).reaped == 0
    assert JobRun.objects.get(pk=parent.pk).status == R
    # b's worker went silent too: b is stale, the parent (c still queued) is not.
    JobRun.objects.filter(pk=b.pk).update(heartbeat_at=long_ago)
    assert set(JobRun.objects.stale(300).values_list("job_name", flat=True)) == {"b"}
    # With no child active, a silent parent is stale like any run (the refresh on the
    # children's last move, left out here, would have ended it) ...
    b.mark_succeeded()
    c.mark_running()
    c.mark_succeeded()
    assert list(JobRun.objects.stale(300)) == [JobRun.objects.get(pk=parent.pk)]
    # ... and the reaper ends it as its children add up, never lost: no worker beats for it.
    assert JobRun.objects.reap(300, dry_run=True).settled == 1
    reaped = JobRun.objects.reap(300)
    assert (reaped.reaped, reaped.settled) == (0, 1)
    parent.refresh_from_db()
    assert (parent.status, parent.result) == (S, {"children": {S: 3}})


def test_a_reap_between_the_last_child_s_end_and_its_parent_s_refresh_does_not_lose_the_batch(
    db: None, django_capture_on_commit_callbacks: Any
) -> None:
    """The parent is refreshed once its last child's end commits: a reaper that runs in
    between finds it running, silent and with no active child. It was marked lost (the
    refresh then could not leave lost): every child succeeded, the batch said lost."""
    parent = start_batch("batch", ["a", "b"])
    a, b = parent.children.order_by("job_name")
    with django_capture_on_commit_callbacks(execute=True):
        a.mark_running()
        a.mark_succeeded()
        b.mark_running()
    long_ago = timezone.now() - timedelta(hours=1)  # the batch has run for an hour
    JobRun.objects.filter(pk=parent.pk).update(heartbeat_at=long_ago)
    with django_capture_on_commit_callbacks(execute=False) as refreshes:
        b.mark_succeeded()  # committed; its parent's refresh waits for the commit hook
    assert JobRun.objects.reap(300).reaped == 0  # reap_jobstatus, from cron, then
    for refresh in refreshes:
        refresh()
    parent.refresh_from_db()
    assert (parent.status, parent.message) == (S, "")


def test_a_batch_settled_by_the_reaper_ran_when_its_children_did(db: None) -> None:
    """The parent's refresh after its children was missed (the worker died between the
    child's commit and the on-commit refresh). Two hours later the reaper settled it "as
    the refresh would have", but stamped it started and finished at the reap: the record
    said the batch ran for no time, two hours after its last child ended."""
    parent = start_batch("tests.batch", ["tests.a", "tests.b"])
    a, b = parent.children.order_by("job_name")
    for child in (a, b):
        child.mark_running()
        child.mark_succeeded()  # a `db` test: the on-commit refresh never runs
    now = timezone.now()
    first_start = now - timedelta(hours=3)
    last_end = now - timedelta(hours=2)
    a_end = now - timedelta(hours=2.5)
    JobRun.objects.filter(pk=a.pk).update(
        started_at=first_start, finished_at=a_end, updated_at=a_end
    )
    JobRun.objects.filter(pk=b.pk).update(
        started_at=a_end, finished_at=last_end, updated_at=last_end
    )
    JobRun.objects.filter(pk=parent.pk).update(
        created_at=now - timedelta(hours=4),
        queued_at=now - timedelta(hours=4),
        updated_at=last_end,
    )

    assert JobRun.objects.reap(300, queued_timeout=3600).settled == 1

    parent.refresh_from_db()
    assert parent.status == S
    assert parent.finished_at is not None
    assert abs((parent.finished_at - last_end).total_seconds()) < 60
    assert parent.started_at == first_start


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_a_batch_killed_while_its_children_wait_stops_those_its_workers_start_after() -> (
    None
):
    """A worker's loop holds the children it read before the batch's kill, and starts each
    with ``track(run=child)``: the start used to keep the copy's (no) kill request, so every
    child ran to its end and the batch ended succeeded."""
    parent = start_batch("batch", ["a", "b"])
    children = list(parent.children.order_by("job_name"))
    assert request_kill_batch(parent) == 3
    finished = 0
    for child in children:
        with track(child.job_name, run=child) as job:
            job.check_kill()
            finished += 1
    parent.refresh_from_db()
    statuses = {child.status for child in JobRun.objects.filter(parent=parent)}
    assert (finished, statuses, parent.status) == (0, {K}, K)


def test_killing_a_batch_asks_every_active_run(db: None) -> None:
    parent = start_batch("batch", ["a", "b", "c"])
    a, b, c = parent.children.order_by("job_name")
    a.mark_running()
    a.mark_succeeded()
    assert request_kill_batch(parent) == 3  # the parent, b and c
    assert set(JobRun.objects.kill_requested().values_list("job_name", flat=True)) == {
        "batch",
        "b",
        "c",
    }
    with track("c", run=JobRun.objects.get(pk=c.pk)) as job:
        job.check_kill()
        pytest.fail("check_kill() did not raise")
    b.mark_running()
    b.mark_killed()
    state = refresh_batch(parent)
    parent.refresh_from_db()
    assert (state.status, parent.status, state.done, state.counts) == (
        K,
        K,
        3,
        {S: 1, K: 2},
    )


def test_killing_a_batch_s_parent_alone_asks_the_runs_under_it(db: None) -> None:
    """No worker runs a batch's parent: asked alone (the admin's button, the API's kill),
    nobody read its request, its children ran on and the batch ended succeeded. A batch
    inside it is asked down to its own children; the count says what it counts."""
    outer = start_batch("outer", ["a"])
    (a,) = outer.children.all()
    a.mark_running()
    inner = start_batch("inner", ["b", "c"], parent=outer)
    done = JobRun.objects.filter(parent=inner, job_name="c").get()
    done.mark_running()
    done.mark_succeeded()
    result = JobRun.objects.filter(pk=outer.pk).request_kill()
    assert (result, result.asked, result.in_batches) == (1, 1, 3)  # a, inner, b
    assert set(JobRun.objects.kill_requested().values_list("job_name", flat=True)) == {
        "outer",
        "a",
        "inner",
        "b",
    }
    again = JobRun.objects.filter(pk=outer.pk).request_kill()
    assert (again.asked, again.in_batches) == (0, 0)
    forced = JobRun.objects.filter(pk=inner.pk).request_kill(force=True)
    assert (forced, forced.killed, forced.in_batches) == (1, 1, 1)  # inner, then b
    assert JobRun.objects.get(job_name="b").status == K


def test_a_run_a_worker_runs_is_killed_without_its_children(db: None) -> None:
    """A job's own run with steps tracked as runs of their own is no batch: its worker
    reads its kill request, and the steps are its job's business."""
    job = JobRun.objects.start("job", worker="w1")
    step = JobRun.objects.start("step", worker="w1", parent=job)
    result = JobRun.objects.filter(pk=job.pk).request_kill()
    assert (result, result.in_batches) == (1, 0)
    step.refresh_from_db()
    assert step.kill_requested_at is None


def test_a_batch_still_gathering_holds_its_runs(db: None) -> None:
    """Which runs a delete must leave (``held_by_batch()``): the purge's rule."""
    parent = start_batch("batch", ["a", "b"])
    a, b = parent.children.order_by("job_name")
    a.mark_running()
    a.mark_killed()
    lone = JobRun.objects.start("lone")
    lone.mark_succeeded()
    assert set(JobRun.objects.held_by_batch().values_list("job_name", flat=True)) == {
        "batch",
        "a",
        "b",
    }
    b.mark_running()
    b.mark_succeeded()
    refresh_batch(parent)
    assert not JobRun.objects.held_by_batch().exists()


def _older_refresh_moves_first(
    monkeypatch: pytest.MonkeyPatch, parent: JobRun, *, between: Callable[[], None]
) -> None:
    """Refresh A reads the children, then ``between()`` moves them, then refresh B reads
    them; A's move of the parent comes first, B's right after it (each a thread, as two
    workers' refreshes are). Fails on any error raised in a refresh."""
    original = batches._move
    a_at_move, b_at_move, a_moved = (threading.Event() for _ in range(3))
    errors: list[BaseException] = []

    def move(run: JobRun, target: str, state: Any, error: Any = None) -> None:
        name = threading.current_thread().name
        if name == "refresh-A":
            a_at_move.set()
            assert b_at_move.wait(30)
            try:
                original(run, target, state, error)
            finally:
                a_moved.set()
            return
        if name == "refresh-B":
            b_at_move.set()
            assert a_moved.wait(30)
        original(run, target, state, error)

    monkeypatch.setattr(batches, "_move", move)

    def refresh() -> None:
        try:
            refresh_batch(JobRun.objects.get(pk=parent.pk))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=refresh, name="refresh-A")
    first.start()
    assert a_at_move.wait(30)
    between()
    second = threading.Thread(target=refresh, name="refresh-B")
    second.start()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert not errors, errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refresh_that_loses_the_start_to_an_older_one_still_ends_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two children's refreshes at once, in two workers, both reading the parent queued:
    A read child a just started (target: running), B read both children succeeded. A
    starts the parent first; B's own start was then refused, and B gave up, taking it
    for "another process moved it first": the parent stayed running for good, every
    child succeeded (until a reaper's settle, a STALE_TIMEOUT later)."""
    batches.disconnect()  # the refreshes are run by hand below, as the signal would
    try:
        parent = start_batch("batch", ["a", "b"])
        a, b = parent.children.order_by("job_name")
        a.mark_running()

        def children_end() -> None:
            a.mark_succeeded()
            b.mark_running()
            b.mark_succeeded()

        _older_refresh_moves_first(monkeypatch, parent, between=children_end)
    finally:
        batches.connect()
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current, parent.result) == (
        S,
        2,
        {"children": {S: 2}},
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refresh_that_loses_the_end_to_an_older_one_still_writes_the_final_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two children end at once in two workers. Refresh A read the children when only a
    had failed (b running): target failed, "1 of 2". Refresh B read both failed and the
    parent still running. A ended the parent first; B's end was refused, it read the
    parent again, found it ended, and stopped. No refresh comes after that (every child
    has ended): the parent said "1 of 2 child runs failed." and counted a running child
    for good, while both children failed."""
    batches.disconnect()  # the refreshes are run by hand below, as the signal would
    try:
        parent = start_batch("batch", ["a", "b"])
        a, b = parent.children.order_by("job_name")
        a.mark_running()
        b.mark_running()
        refresh_batch(JobRun.objects.get(pk=parent.pk))  # the parent is running
        a.mark_failed(RuntimeError("bad a"))
        _older_refresh_moves_first(
            monkeypatch, parent, between=lambda: b.mark_failed(RuntimeError("bad b"))
        )
    finally:
        batches.connect()
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current) == (F, 2)
    assert (parent.error, parent.result) == (
        "2 of 2 child runs failed.",
        {"children": {F: 2}},
    )


def test_refresh_is_idempotent_and_never_undoes_a_finish(db: None) -> None:
    parent = start_batch("batch", ["a"])
    (a,) = parent.children.all()
    a.mark_running()
    a.mark_succeeded()
    assert refresh_batch(parent).status == S
    assert refresh_batch(parent).status == S
    parent.refresh_from_db()
    assert parent.status == S
    JobRun.objects.filter(pk=parent.pk).update(progress_current=1)
    stale = JobRun.objects.get(pk=parent.pk)
    a.delete()  # a later view sees fewer finished children: progress does not go back
    refresh_batch(stale)
    stale.refresh_from_db()
    assert (stale.status, stale.progress_current) == (S, 1)


@needs_tasks
def test_runs_recorded_inside_batch_are_its_children(
    db: None, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django_jobstatus.contrib import tasks as integration
    from tests.contrib.tasks_app import tasks

    settings.TASKS = {
        "default": {"BACKEND": f"{tasks.FRAMEWORK}.backends.immediate.ImmediateBackend"}
    }
    integration.connect()
    try:
        with django_capture_on_commit_callbacks(execute=True), batch("sums") as parent:
            tasks.add.enqueue(1, 2)
            tasks.add.enqueue(3, 4)
        outside = tasks.add.enqueue(5, 6)
    finally:
        integration.disconnect()
    parent.refresh_from_db()
    assert sorted(parent.children.values_list("result", flat=True)) == [3, 7]
    assert (parent.status, parent.progress_current, parent.progress_total) == (S, 2, 2)
    assert JobRun.objects.get(backend_job_id=outside.id).parent is None


def test_a_task_enqueued_inside_batch_through_celery_or_rq_is_a_child(db: None) -> None:
    from django_jobstatus.contrib._execution import record_queued

    with batch("imports.all") as parent:
        record_queued("celery", "task-1", "imports.one")
        record_queued("rq", "job-1", "imports.one")
    record_queued("rq", "job-2", "imports.one")  # outside: no parent
    children = JobRun.objects.filter(parent=parent)
    assert sorted(children.values_list("source", "backend_job_id")) == [
        ("celery", "task-1"),
        ("rq", "job-1"),
    ]
    assert JobRun.objects.get(backend_job_id="job-2").parent is None


def test_children_s_text_is_stored_like_any_run_s(db: None) -> None:
    parent = start_batch(
        "b", [{"job_name": "c", "subject": "a\x00b", "params": {"\ud800": "x\x00"}}]
    )
    child = parent.children.get()
    assert (child.subject, child.params) == ("a\ufffdb", {"\ufffd": "x\ufffd"})
    with pytest.raises(ValueError, match="subject is 256 characters long"):
        start_batch("b2", ["c", {"job_name": "c", "subject": "s" * 256}])
    assert not JobRun.objects.filter(job_name="b2").exists()  # nothing half-written


def test_a_killed_batch_s_result_counts_its_children(db: None) -> None:
    """docs/tracking.md says a parent's ``result`` is ``{"children": counts}``: a killed
    one was ended with a bare ``mark_killed()`` and showed no count of what its children
    did (here one succeeded, one was killed). A parent killed before its children ended
    keeps its counts current, as a failed one does."""
    parent = start_batch("batch", ["a", "b"])
    a, b = parent.children.order_by("job_name")
    with track("a", run=a):
        pass
    b.mark_killed()
    refresh_batch(parent)
    parent.refresh_from_db()
    assert (parent.status, parent.result) == (K, {"children": {S: 1, K: 1}})

    early = start_batch("batch", ["a", "b"])
    early.mark_killed()  # by hand, or a forced kill, while its children wait
    a, b = early.children.order_by("job_name")
    with track("a", run=a):
        pass
    refresh_batch(early)
    early.refresh_from_db()
    assert (early.status, early.result) == (K, {"children": {S: 1, Q: 1}})


def test_a_batch_block_that_records_no_child_ends_succeeded(db: None) -> None:
    """``with batch(...): for f in files: import_file.enqueue(f.pk)`` on a day with no
    files left its parent ``queued`` for ever: with no child, a refresh keeps the parent's
    own status. It was an active run nothing would start (the dashboard's queued count,
    the metrics' oldest queued age), until the reaper killed it as a lost message."""
    files: list[int] = []
    with batch("imports.all") as parent:
        for _ in files:
            pytest.fail("no file to import")
    parent.refresh_from_db()
    assert (parent.status, parent.result) == (S, {"children": {}})
    assert (parent.progress_current, parent.progress_total) == (0, 0)


@pytest.mark.django_db(
    transaction=True
)  # each child's end refreshes its parent on commit
def test_a_batch_does_not_end_while_its_block_still_records_children() -> None:
    """A worker quick enough (or an immediate backend) ended the first child before the
    block enqueued the second: the parent added up to 1 of 1 succeeded and ended
    ``succeeded``. The second child then failed, and the batch stayed succeeded."""
    from django_jobstatus.contrib._execution import record_queued

    with batch("imports.all") as parent:
        first = JobRun.objects.get(pk=record_queued("rq", "job-1", "imports.one"))
        with track(first.job_name, run=first):
            pass
        parent.refresh_from_db()
        # Its total is not known yet: it waits for the block.
        assert (parent.status, parent.progress_current, parent.progress_total) == (
            Q,
            1,
            None,
        )
        second = JobRun.objects.get(pk=record_queued("rq", "job-2", "imports.one"))
        with contextlib.suppress(RuntimeError), track(second.job_name, run=second):
            raise RuntimeError("file 2 is broken")
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (F, "1 of 2 child runs failed.")
    assert (parent.progress_current, parent.progress_total) == (2, 2)


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_block_was_asked_to_stop_ends_killed() -> None:
    """The job that ran the block was asked to stop (JobKilled at its progress call): the
    batch ends killed, as that job does, not failed with "JobKilled"."""
    from django_jobstatus.contrib._execution import record_queued

    with pytest.raises(JobKilled), batch("imports.all") as parent:
        record_queued("rq", "job-1", "imports.one")
        raise JobKilled("asked to stop")
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (Status.KILLED, "")
    assert parent.result == {"children": {Q: 1}}


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_block_saw_its_kill_in_a_task_group_ends_killed() -> None:
    """The block enqueued, then fanned its work out to an asyncio.TaskGroup whose tasks
    saw the kill: Python hands their JobKilled back in an exception group, and the batch
    ended failed with it. (The children are enqueued one by one: SQLite refuses writes
    from two threads at once.)"""
    from django_jobstatus.contrib._execution import record_queued

    async def stop() -> None:
        await asyncio.sleep(0)
        raise JobKilled("asked to stop")

    async def fan_out() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(2):
                group.create_task(stop())

    with pytest.raises(ExceptionGroup), batch("imports.all") as parent:
        for n in range(2):
            record_queued("rq", f"job-{n}", "imports.one")
        asyncio.run(fan_out())
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (Status.KILLED, "")
    assert parent.result == {"children": {Q: 2}}


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_block_raised_fails_with_its_exception() -> None:
    """The enqueue loop failed after the first of ten files: the exception went to the
    caller, but the parent recorded nothing of it, and once the one child enqueued
    succeeded the batch read ``succeeded``, 1 of 1. The children enqueued go on; the
    parent keeps the block's error and counts them."""
    from django_jobstatus.contrib._execution import record_queued

    with pytest.raises(ConnectionError), batch("imports.all") as parent:
        child_id = record_queued("rq", "job-1", "imports.one")
        raise ConnectionError("broker away after file 1 of 10")
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (
        F,
        "ConnectionError: broker away after file 1 of 10",
    )
    assert "raise ConnectionError" in parent.traceback
    assert parent.result == {"children": {Q: 1}}
    child = JobRun.objects.get(pk=child_id)
    with track(child.job_name, run=child):  # its worker runs it
        pass
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (
        F,
        "ConnectionError: broker away after file 1 of 10",
    )
    assert parent.result == {"children": {S: 1}}
    assert (parent.progress_current, parent.progress_total) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_batch_block_left_by_sys_exit_0_does_not_fail_the_batch() -> None:
    """A management command enqueues its files in a ``batch()`` block and leaves with
    ``sys.exit(0)`` (a success, "for Python and for cron", as ``track()`` records it).
    The batch ended failed with "SystemExit: 0" and a traceback, and stayed failed once
    its only child succeeded."""
    import sys

    from django_jobstatus.contrib._execution import record_queued

    with pytest.raises(SystemExit), batch("imports.all") as parent:
        child_id = record_queued("rq", "job-1", "imports.one")
        sys.exit(0)
    child = JobRun.objects.get(pk=child_id)
    with track(child.job_name, run=child):  # its worker runs it
        pass
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (S, "")
    assert parent.result == {"children": {S: 1}}


@pytest.mark.django_db(transaction=True)
def test_a_batch_block_in_a_generator_advanced_through_asyncio_to_thread_ends() -> None:
    """A ``batch()`` block in a generator, each step advanced with ``asyncio.to_thread()``
    (a fresh copy of the context each), ends in another context than it began, as
    ``track()``'s blocks may. Resetting its ContextVar token there raised ValueError
    before the block was closed: the parent stayed queued with no total (until the
    reaper killed it), and the consumer got a ValueError from a block that did nothing
    wrong."""
    import asyncio

    def steps() -> Any:
        with batch("imports.all") as parent:
            yield parent
        yield None

    async def consume() -> JobRun:
        gen = steps()
        parent = await asyncio.to_thread(next, gen)
        await asyncio.to_thread(next, gen)  # leaves the block
        return parent

    try:
        parent = asyncio.run(consume())
    finally:
        connections.close_all()
    parent.refresh_from_db()
    assert (parent.status, parent.progress_total) == (S, 0)
    assert batches.current_parent() is None


@pytest.mark.django_db(transaction=True)
def test_a_refresh_that_read_the_children_while_the_block_was_open_does_not_end_it(
    monkeypatch: Any,
) -> None:
    """A worker's refresh read the children (1 of 1 succeeded) while the block was still
    open; the block then recorded a second child and ended; the refresh wrote after that:
    total 1 over the block's 2, and the parent ``succeeded`` with the second child
    queued (and later failed)."""
    from django_jobstatus import batches
    from django_jobstatus.contrib._execution import record_queued

    real = batches.batch_status
    calls: list[int] = []

    def block_goes_on_meanwhile(parent: JobRun) -> batches.BatchStatus:
        state = real(parent)
        if not calls:  # the worker's read; then the block records one more and ends
            calls.append(1)
            record_queued("rq", "job-2", "imports.one")
            batches._parent.set(None)
            batches._close(JobRun.objects.get(pk=parent.pk))
        return state

    batches.disconnect()  # the worker's refresh is made by hand, at its moment
    try:
        with batch("imports.all") as parent:
            first = JobRun.objects.get(pk=record_queued("rq", "job-1", "imports.one"))
            first.mark_running(worker="w:1")
            first.mark_succeeded()
            monkeypatch.setattr(batches, "batch_status", block_goes_on_meanwhile)
            batches.refresh_batch(JobRun.objects.get(pk=parent.pk))
            monkeypatch.undo()
        second = JobRun.objects.get(backend_job_id="job-2")
        second.mark_running(worker="w:2")
        second.mark_failed(RuntimeError("file 2 is broken"))
        batches.refresh_batch(JobRun.objects.get(pk=parent.pk))
    finally:
        batches.connect()
    parent.refresh_from_db()
    assert (parent.status, parent.progress_total) == (F, 2), parent.result


@pytest.mark.django_db(transaction=True)
def test_a_batch_inside_a_batch_block_is_one_of_its_children() -> None:
    """The inner batches were recorded with no parent: the outer block recorded no child
    and its parent ended ``succeeded``, ``{"children": {}}``, with every inner batch's
    tasks still queued."""
    from django_jobstatus.contrib._execution import record_queued

    with batch("nightly") as outer:
        with batch("tenant.import") as inner:
            record_queued("rq", "job-1", "imports.one")
        listed = start_batch("tenant.report", ["tenant.one"])
    outer.refresh_from_db()
    assert set(outer.children.values_list("pk", flat=True)) == {inner.pk, listed.pk}
    assert outer.status == Q
    assert outer.progress_total == 2


@pytest.mark.django_db(transaction=True)
def test_a_run_recorded_at_the_commit_by_a_batch_s_block_is_its_child() -> None:
    """``with batch("imports.all"): queue.enqueue(...)`` inside ``transaction.atomic()``
    (or ATOMIC_REQUESTS) with django-rq's default COMMIT_MODE, Celery's
    ``delay_on_commit()`` or Django's ``transaction.on_commit(lambda: task.delay())``:
    the push, and the recording of its run, wait for the commit. The parent ended
    ``succeeded`` 0 of 0 at the block's end (at once on SQLite, where only django-rq's
    push was carried over; at the commit before the push on PostgreSQL for the others),
    and the runs recorded at the commit were children of a finished batch, or of none.
    A push made in a savepoint that rolled back is dropped with it."""
    from django.db import transaction

    from django_jobstatus.contrib._execution import record_queued

    with transaction.atomic():
        with batch("imports.all") as parent:
            transaction.on_commit(lambda: record_queued("rq", "job-1", "imports.one"))
            with contextlib.suppress(ValueError), transaction.atomic():
                transaction.on_commit(
                    lambda: record_queued("rq", "job-2", "imports.one")
                )
                raise ValueError("file 2 is bad")
        parent.refresh_from_db()
        assert (parent.status, parent.progress_total) == (Q, None)  # not over yet
    parent.refresh_from_db()
    runs = JobRun.objects.filter(source="rq")
    assert list(runs.values_list("backend_job_id", "parent_id")) == [
        ("job-1", parent.pk)
    ]
    assert (parent.status, parent.progress_total) == (Q, 1)


@pytest.mark.django_db(transaction=True)
def test_a_child_recorded_after_its_batch_was_asked_to_stop_is_asked_too() -> None:
    """A batch killed (``request_kill_batch()``, the run page's kill) while its block still
    enqueued, a command looping over 10,000 files: the children recorded after the kill
    had no kill request, their workers ran them to their end, and the parent followed
    them to ``succeeded`` as if no kill had been asked."""
    from django_jobstatus.contrib._execution import record_queued

    with batch("imports.all") as parent:
        record_queued("rq", "job-1", "imports.one")
        assert request_kill_batch(parent) == 2  # the parent and job-1
        late = JobRun.objects.get(pk=record_queued("rq", "job-2", "imports.one"))
    late.refresh_from_db()
    assert late.kill_requested_at is not None
    with track(late.job_name, run=late) as job:  # its worker starts it
        job.check_kill()
        pytest.fail("the batch was asked to stop before this child was recorded")
    parent.refresh_from_db()
    assert (parent.status, late.parent_id) == (K, parent.pk)


@pytest.mark.django_db(transaction=True)  # the parent is refreshed on the commit
def test_a_step_tracked_as_a_run_of_its_own_does_not_end_the_job_that_runs_it() -> None:
    """``track()`` takes run fields, ``parent`` among them: a job that tracks one step as a
    run of its own, ``track("import.file", parent=job.run)``, had its own run (which its
    worker was still running) ended ``succeeded`` the moment the step ended, its progress
    1 of 5 overwritten with the step's 1 of 1; the job's later failure was then refused
    ("cannot move from succeeded to failed") and the record said succeeded. The batches'
    refresh took any run with a child for a batch's parent; a worker runs this one."""
    with pytest.raises(ZeroDivisionError), track("import.all", interval=0) as job:
        job.progress(1, total=5)
        with track("import.file", parent=job.run):
            pass
        seen = JobRun.objects.get(pk=job.run.pk)
        assert (seen.status, seen.progress_current, seen.progress_total) == (R, 1, 5)
        _ = 1 / 0
    assert JobRun.objects.get(pk=job.run.pk).status == F


# A block that leaves work for the commit (django-rq's push, Celery's delay_on_commit()).


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_a_block_that_raised_its_parent_on_a_database_apart_ends_failed(
    settings: Any,
) -> None:
    """JOBSTATUS["DATABASE"] apart from the app's ("replica" stands for a jobs database),
    a view under ATOMIC_REQUESTS: the block left a push for the commit, then raised, and
    the view's error rolled the request back. The parent, committed on the jobs
    database, waited for that commit, which never came: queued with no total for ever,
    its error lost. It ends failed with the block's error at once."""
    from django.db import transaction

    from django_jobstatus.contrib._execution import record_queued

    settings.JOBSTATUS = {"DATABASE": "replica"}
    with (
        contextlib.suppress(ValueError),
        transaction.atomic(),
        batch("imports.all") as parent,
    ):
        transaction.on_commit(lambda: record_queued("rq", "job-1", "imports.one"))
        raise ValueError("file 2 is bad")
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (F, "ValueError: file 2 is bad")


@pytest.mark.django_db(transaction=True)
def test_a_push_that_fails_at_the_commit_ends_its_batch_failed() -> None:
    """The broker down at the commit: the block's second push raised. Django stops at a
    callback that raises and drops the rest, the block's close too: the parent stayed
    queued with no total for ever. It ends failed with the push's error, its first
    child counted."""
    from django.db import transaction

    from django_jobstatus.contrib._execution import record_queued

    def push_fails() -> None:
        raise ConnectionError("Error 111 connecting to redis:6379")

    with (
        pytest.raises(ConnectionError),
        transaction.atomic(),
        batch("imports.all") as parent,
    ):
        transaction.on_commit(lambda: record_queued("rq", "job-1", "imports.one"))
        transaction.on_commit(push_fails)
    parent.refresh_from_db()
    assert (parent.status, parent.progress_total) == (F, 1)
    assert parent.error.startswith("ConnectionError: Error 111")


@pytest.mark.django_db(transaction=True)
def test_a_close_that_fails_at_the_commit_leaves_the_app_s_callbacks_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The block's close failed at the commit (the database away a moment): Django
    stopped at it, the view's own on_commit (a confirmation mail) never ran, and the
    caller got the app's OperationalError after its data had committed. The close is a
    robust callback: its failure is logged."""
    from django.db import OperationalError, transaction

    from django_jobstatus import batches
    from django_jobstatus.contrib._execution import record_queued

    def away(parent: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    sent: list[str] = []
    with transaction.atomic():
        with batch("imports.all"):
            transaction.on_commit(lambda: record_queued("rq", "job-1", "imports.one"))
        monkeypatch.setattr(batches, "batch_status", away)
        transaction.on_commit(lambda: sent.append("confirmation mail"))
    assert sent == ["confirmation mail"]


def test_the_children_of_a_start_batch_inside_a_user_s_batch_block_are_theirs(
    db: None, django_user_model: Any
) -> None:
    """The inner batch's parent was alice's (inherit_owner()), but its children were
    created with only the owner start_batch() was given (none) (found by a review)."""
    alice = django_user_model.objects.create_user("alice")
    with batch("imports.all", owner=alice):
        inner = start_batch("imports.files", ["imports.one", "imports.two"])
    inner.refresh_from_db()
    assert inner.owner_id == alice.pk  # the batch inside hers: hers
    owners = set(inner.children.values_list("owner", flat=True))
    assert owners == {alice.pk}


@needs_tasks
def test_an_immediate_task_recorded_in_a_user_s_batch_block_is_theirs(
    db: None, django_user_model: Any, settings: Any
) -> None:
    """Django's ImmediateBackend runs the task inside ``enqueue()``: its run is recorded
    by its start (``JobRun.objects.start(parent=...)``), which took the batch as parent
    but not its owner (found by a review)."""
    from django_jobstatus.contrib import tasks as integration
    from tests.contrib.tasks_app import tasks

    settings.TASKS = {
        "default": {
            "BACKEND": f"{tasks.FRAMEWORK}.backends.immediate.ImmediateBackend",
            "QUEUES": [],
        }
    }
    alice = django_user_model.objects.create_user("alice")
    integration.connect()
    try:
        with batch("imports.all", owner=alice) as parent:
            result = tasks.add.enqueue(1, 2)
    finally:
        integration.disconnect()
    run = JobRun.objects.get(source="django_tasks", backend_job_id=str(result.id))
    assert run.parent_id == parent.pk  # recorded as a child of her batch
    assert run.owner_id == alice.pk
