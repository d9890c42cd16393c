"""A kill of batches counts and says what it ended, parents included, and settles a batch
that had ended (found by reviews)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import connections, transaction

from django_jobstatus import batches
from django_jobstatus.batches import start_batch
from django_jobstatus.models import JobRun, Status

URL = "/admin/django_jobstatus/jobrun/"


def said(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.mark.django_db(transaction=True)  # the batches follow their children on commit
def test_forced_kill_of_an_outer_batch_counts_the_inner_batch_it_killed() -> None:
    """Killing the outer batch by force ends killed: a, the inner batch's parent, b and c.
    ``in_batches`` is documented as the runs under the parent that the kill ended killed:
    4. The inner parent must be killed by the kill (before its children), not left to
    end as its children add up, and counted."""
    outer = start_batch("outer", ["a"])
    inner = start_batch("inner", ["b", "c"], parent=outer)
    result = JobRun.objects.filter(pk=outer.pk).request_kill(force=True)
    statuses = dict(JobRun.objects.values_list("job_name", "status"))
    assert statuses == dict.fromkeys(["outer", "a", "inner", "b", "c"], Status.KILLED)
    inner.refresh_from_db()
    assert (result.killed, result.in_batches) == (1, 4)
    assert inner.message == "Killed by force."


@pytest.mark.django_db(transaction=True)
def test_forced_kill_page_button_on_outer_batch_says_how_many_it_killed(
    admin_client,
) -> None:
    outer = start_batch("outer", ["a"])
    start_batch("inner", ["b", "c"], parent=outer)
    response = admin_client.post(f"{URL}{outer.pk}/force-kill/", follow=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    assert said(response) == ["Killed the run.", "Killed 4 runs under this batch."]


@pytest.mark.django_db(transaction=True)
def test_forced_kill_of_a_batch_with_its_children_selected_counts_the_parent() -> None:
    """Every active run picked (a batch's parent and its children) and killed by force:
    the three end killed through this kill, and ``killed`` (the runs picked it ended
    killed) says 3. The children were killed first (newest first), the parent then
    ended as they added up and the kill's own move on it was refused: 2."""
    parent = start_batch("imports.all", ["a", "b"])
    result = JobRun.objects.active().request_kill(force=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    parent.refresh_from_db()
    assert result.killed == 3
    assert parent.message == "Killed by force."


@pytest.mark.django_db(transaction=True)
def test_admin_mark_as_killed_on_a_batch_and_its_children_says_no_run_was_skipped(
    admin_client,
) -> None:
    """The bulk "Mark as killed (forced)" on a batch's parent and its children (all active):
    all three end killed by it; the admin said "Marked 2 runs as killed." and "Skipped 1
    run: it is already finished." of a run that was active when picked."""
    parent = start_batch("imports.all", ["a", "b"])
    picked = [parent, *parent.children.all()]
    response = admin_client.post(
        URL,
        {"action": "mark_killed", "_selected_action": [str(r.pk) for r in picked]},
        follow=True,
    )
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    assert said(response) == ["Marked 3 runs as killed."]


# A batch's last child ended, its parent's refresh not made yet.


@contextlib.contextmanager
def parents_not_refreshed() -> Iterator[None]:
    """The children's moves, their parents' refreshes held back: the moment between a
    child's committed end and its parent's refresh (the child's receiver), held open."""
    batches.disconnect()
    try:
        yield
    finally:
        batches.connect()


def batch_whose_children_succeeded() -> JobRun:
    parent = start_batch("imports.all", ["a", "b"])
    for child in parent.children.all():
        child.mark_running(worker="host:1")
    with parents_not_refreshed():
        for child in parent.children.all():
            child.mark_succeeded()
    parent.refresh_from_db()
    assert parent.status == Status.RUNNING  # its refresh is still to come
    return parent


@pytest.mark.django_db(transaction=True)
def test_forced_kill_of_a_batch_whose_children_all_ended_settles_it() -> None:
    """Every child had succeeded before the kill: the batch succeeded, and the kill
    counts nothing killed (it was ended killed, and counted)."""
    parent = batch_whose_children_succeeded()
    result = JobRun.objects.filter(pk=parent.pk).request_kill(force=True)
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current, parent.progress_total) == (
        Status.SUCCEEDED,
        2,
        2,
    )
    assert parent.kill_requested_at is None
    assert (result, result.killed, result.asked, result.in_batches) == (0, 0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_kill_request_to_a_batch_whose_children_all_ended_settles_it() -> None:
    """Asking such a batch to stop: it is not asked (it was, and counted), it ends as
    its children add up."""
    parent = batch_whose_children_succeeded()
    result = JobRun.objects.filter(pk=parent.pk).request_kill()
    parent.refresh_from_db()
    assert parent.status == Status.SUCCEEDED
    assert parent.kill_requested_at is None
    assert (result, result.asked, result.in_batches) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_forced_kill_of_nested_batches_whose_runs_all_ended_settles_each() -> None:
    """Every run under the outer batch ended, no parent refreshed; the kill runs in a
    transaction, so a parent's end refreshes the one around it only at its commit: the
    innermost batch ends first, then each around it, all succeeded, nothing killed."""
    outer = start_batch("outer", ["a"])
    middle = start_batch("middle", ["b"], parent=outer)
    start_batch("inner", ["c"], parent=middle)
    with parents_not_refreshed():
        for child in JobRun.objects.filter(job_name__in=["a", "b", "c"]):
            child.mark_running(worker="host:1")
            child.mark_succeeded()
    with transaction.atomic():
        result = JobRun.objects.filter(pk=outer.pk).request_kill(force=True)
    names = ["outer", "a", "middle", "b", "inner", "c"]
    statuses = dict(JobRun.objects.values_list("job_name", "status"))
    assert statuses == dict.fromkeys(names, Status.SUCCEEDED)
    assert (result.killed, result.in_batches) == (0, 0)
    assert not JobRun.objects.filter(kill_requested_at__isnull=False).exists()


@pytest.mark.django_db(transaction=True)
def test_admin_mark_as_killed_on_a_batch_whose_children_all_ended_says_it_is_finished(
    admin_client,
) -> None:
    parent = batch_whose_children_succeeded()
    response = admin_client.post(
        URL,
        {"action": "mark_killed", "_selected_action": [str(parent.pk)]},
        follow=True,
    )
    parent.refresh_from_db()
    assert parent.status == Status.SUCCEEDED
    assert said(response) == ["Skipped 1 run: it is already finished."]


def _in_thread(name: str, body: Any, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
@pytest.mark.parametrize("child_ends", ["before the kill", "after the kill settled"])
@pytest.mark.django_db(transaction=True)
def test_forced_kill_between_the_last_child_s_end_and_its_parent_s_refresh_settles_the_batch(
    monkeypatch: pytest.MonkeyPatch, child_ends: str
) -> None:
    """The worker of a batch's last child commits its success; the parent's refresh (the
    child's job_status_changed receiver, in the worker's thread) comes a moment after.
    A forced kill in between found the parent still running and ended it killed (1 of 1
    succeeded), counting a run it killed. It settles it instead, as the reaper does;
    also when the child's end comes after the kill settled the ended batches and before
    it moves the parent (found by a red-team pass)."""
    parent = start_batch("rt.batch", ["rt.child"])
    (child,) = parent.children.all()
    child.mark_running(worker="host:1")
    parent.refresh_from_db()
    assert parent.status == Status.RUNNING  # refreshed by the child's start

    original, settle = batches.refresh_batch, batches.settle_ended
    committed, killed = threading.Event(), threading.Event()

    def refresh(run: JobRun) -> Any:
        if threading.current_thread().name == "child-worker":
            committed.set()  # the child's end is committed: its refresh is under way
            assert killed.wait(30)
        return original(run)

    monkeypatch.setattr(batches, "refresh_batch", refresh)
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def child_succeeds() -> None:
        def worker() -> None:
            JobRun.objects.get(pk=child.pk).mark_succeeded(result={"ok": True})

        threads.append(_in_thread("child-worker", worker, errors))
        assert committed.wait(30)

    if child_ends == "before the kill":
        child_succeeds()
        assert JobRun.objects.get(pk=child.pk).status == Status.SUCCEEDED
    else:

        def settle_then_child_succeeds(*selections: Any) -> None:
            settle(*selections)
            child_succeeds()

        monkeypatch.setattr(batches, "settle_ended", settle_then_child_succeeds)
    result = JobRun.objects.filter(pk=parent.pk).request_kill(force=True)
    killed.set()
    (thread,) = threads
    thread.join(30)
    assert not thread.is_alive() and not errors, errors

    parent.refresh_from_db()
    assert list(parent.children.values_list("status", flat=True)) == [Status.SUCCEEDED]
    assert (parent.status, parent.progress_current, parent.progress_total) == (
        Status.SUCCEEDED,
        1,
        1,
    )
    assert result.killed == 0


@pytest.mark.django_db(transaction=True)
def test_forced_kill_in_a_transaction_settles_a_nested_batch_found_in_an_earlier_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runs under a selection are read in chunks of ids (SQLite caps a statement's
    parameters: 998). Inside a transaction an inner batch's end refreshes the batch around
    it only at the commit: settled a chunk at a time, once each, a middle batch in an
    earlier chunk than the inner batch whose end completes it was left active, and the
    forced kill ended it killed though every run under it had succeeded (found by a review)."""
    from django_jobstatus import querysets

    monkeypatch.setattr(querysets, "_chunk_size", lambda db: 2)
    outer = start_batch("outer", ["first"])
    middle = start_batch("middle", ["b"], parent=outer)
    inner = start_batch("inner", ["c"], parent=middle)
    batches.disconnect()  # the children's ends, their parents' refreshes not made yet
    try:
        for child in JobRun.objects.filter(job_name__in=["b", "c"]):
            child.mark_running(worker="host:1")
            child.mark_succeeded()
    finally:
        batches.connect()
    # The premise: the middle batch is in the first chunk, the inner one in a later one.
    under = JobRun.objects.filter(pk=outer.pk)._under_batches()
    assert under.index(middle.pk) < 2 <= under.index(inner.pk)

    with transaction.atomic():
        result = JobRun.objects.filter(pk=outer.pk).request_kill(force=True)

    statuses = dict(
        JobRun.objects.filter(pk__in=[outer.pk, middle.pk, inner.pk]).values_list(
            "job_name", "status"
        )
    )
    assert statuses == {
        "outer": Status.KILLED,  # its first child still waited: killed with it
        "middle": Status.SUCCEEDED,
        "inner": Status.SUCCEEDED,
    }, result
    assert result.in_batches == 1


@pytest.mark.django_db(transaction=True)
def test_forced_kill_of_a_running_batch_does_not_list_its_parent_as_not_stopped() -> (
    None
):
    """A forced kill of a batch whose child has started ends every run of it killed, and
    rightly lists the child (no integration can stop a manual run). It listed the parent
    too, "it stops at its next progress call or heartbeat", though no worker runs a
    batch's parent and the kill ended it and its children (found by a review)."""
    parent = start_batch("imports.all", ["a", "b"])
    parent.children.get(job_name="a").mark_running(worker="host:1")
    result = JobRun.objects.filter(pk=parent.pk).request_kill(force=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    assert (result.killed, result.in_batches) == (1, 2)
    listed = {problem.job_name for problem in result.not_stopped}
    assert listed == {"a"}, result.not_stopped


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_a_forced_kill_of_a_batch_on_sqlite_while_a_worker_writes(
    tmp_path: Path,
) -> None:
    """SQLite in WAL mode (the demo's): the forced kill of a batch's parent reads the runs
    under it, then ends it, in one transaction. A deferred one: a worker's write
    committed in between refused the kill's write at once ("database is locked"), and
    the batch's runs were left running (found by a review). ``tests/sqlite_kill.py``."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sqlite_kill", str(tmp_path / "db.sqlite3")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, report["err"]
    assert report["statuses"] == {
        "tests.batch": "killed",
        "tests.child": "killed",
        "tests.other": "killed",
    }
