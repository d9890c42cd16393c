"""PostgreSQL: the write endpoints' answers when another process acts on the runs meanwhile.

Each test makes another connection (a thread) act at the moment the view is about to
write, waits for it to finish, and lets the view go on: the answer must say what the
view did, not what it meant to do.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections

from django_jobstatus import retention
from django_jobstatus.models import JobRun, Status
from django_jobstatus.querysets import JobRunQuerySet
from tests.api.conftest import BASE

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@contextlib.contextmanager
def meanwhile(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    action: Callable[[], Any],
    *,
    after: bool = False,
) -> Iterator[None]:
    """Before the first call of ``owner.name`` (``after``: once it returned), another
    connection does ``action``, to its end."""
    original = getattr(owner, name)
    done = threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()
            done.set()

    def act() -> None:
        if not done.is_set():
            threading.Thread(target=other).start()
            assert done.wait(timeout=30), "the other connection did not finish"

    def patched(*args: Any, **kwargs: Any) -> Any:
        if not after:
            act()
        result = original(*args, **kwargs)
        if after:
            act()
        return result

    monkeypatch.setattr(owner, name, patched)
    yield
    assert done.is_set(), f"{name} was never called"
    assert not errors, errors


def _finish(pk: Any) -> Callable[[], None]:
    return lambda: JobRun.objects.get(pk=pk).mark_succeeded({"ok": True})


# One run.


@pytest.mark.parametrize("force", [False, True])
def test_a_kill_of_a_run_that_finished_meanwhile_is_409(
    api, make_run, monkeypatch, force
):
    run = make_run()
    with meanwhile(monkeypatch, JobRunQuerySet, "request_kill", _finish(run.pk)):
        response = api.post(f"{BASE}{run.pk}/kill/", {"force": force}, format="json")
    assert response.status_code == 409, response.json()
    assert response.json()["status"] == Status.SUCCEEDED
    run.refresh_from_db()
    assert (run.status, run.kill_requested_at) == (Status.SUCCEEDED, None)


def test_a_kill_of_a_run_deleted_meanwhile_is_404(api, make_run, monkeypatch):
    run = make_run()
    gone = lambda: JobRun.objects.filter(pk=run.pk).delete()  # noqa: E731
    with meanwhile(monkeypatch, JobRunQuerySet, "request_kill", gone):
        response = api.post(f"{BASE}{run.pk}/kill/", {}, format="json")
    assert response.status_code == 404, response.content


def test_a_delete_of_a_run_deleted_meanwhile_is_404(api, make_run, monkeypatch):
    run = make_run(status=Status.FAILED)
    gone = lambda: JobRun.objects.filter(pk=run.pk).delete()  # noqa: E731
    with meanwhile(monkeypatch, JobRun, "delete", gone):
        response = api.delete(f"{BASE}{run.pk}/")
    assert response.status_code == 404, response.status_code


# Many runs.


def test_a_run_that_finished_before_the_bulk_delete_is_not_said_to_be_left(
    api, make_run, monkeypatch
):
    done = make_run("tests.race", status=Status.FAILED)
    active = make_run("tests.race")
    with meanwhile(monkeypatch, retention, "delete_finished", _finish(active.pk)):
        response = api.post(f"{BASE}delete/?job_name=tests.race", {}, format="json")
    assert response.status_code == 200
    assert not JobRun.objects.filter(pk__in=[done.pk, active.pk]).exists()
    assert response.json() == {
        "matched": 2,
        "deleted": 2,
        "logs": 0,
        "not_finished": 0,
        "held": 0,
    }


def test_a_bulk_retry_answers_for_the_runs_it_counted(
    api, make_run, monkeypatch, retry_backend
):
    make_run("tests.race", status=Status.FAILED, source="tests_backend")
    later = lambda: make_run(  # noqa: E731
        "tests.race", status=Status.FAILED, source="tests_backend"
    )
    with meanwhile(monkeypatch, JobRunQuerySet, "order_by", later, after=True):
        response = api.post(
            f"{BASE}retry/?job_name=tests.race&status=failed", {}, format="json"
        )
    assert response.status_code == 202
    data = response.json()
    assert data["matched"] == len(data["retried"]) + len(data["not_retried"]), data


def test_a_forced_bulk_kill_of_a_run_deleted_meanwhile_kills_the_others(
    api, make_run, monkeypatch
):
    gone, other = make_run("tests.race"), make_run("tests.race")
    delete = lambda: JobRun.objects.filter(pk=gone.pk).delete()  # noqa: E731
    # Deleted before the first kill, whichever run that is.
    with meanwhile(monkeypatch, JobRun, "mark_killed", delete):
        response = api.post(
            f"{BASE}kill/?job_name=tests.race", {"force": True}, format="json"
        )
    assert response.status_code == 200, response.content
    assert response.json()["killed"] == 1
    assert JobRun.objects.get(pk=other.pk).status == Status.KILLED


@pytest.mark.parametrize("move", ["retry", "restart"])
def test_a_forced_kill_of_a_run_its_worker_moved_on_meanwhile_kills_it(
    api, make_run, monkeypatch, move
):
    """The worker retried the run (running → retrying, attempt 2) or restarted it between
    the kill's read and its end: the end was refused, and taken for "it finished first".
    The answer said nothing went wrong (killed 0, nothing not stopped) and the run went
    on to its next attempt."""
    run = make_run("tests.race", status=Status.RUNNING, source="tests_backend")

    def worker() -> None:
        mine = JobRun.objects.get(pk=run.pk)
        if move == "retry":
            mine.mark_failed(ValueError("timeout"), retry=True)
        else:
            mine.mark_running()  # a restart: attempt 2

    with meanwhile(monkeypatch, JobRun, "mark_killed", worker):
        response = api.post(f"{BASE}{run.pk}/kill/", {"force": True}, format="json")
    assert response.status_code == 202, response.content
    run.refresh_from_db()
    assert (run.status, run.attempt) == (Status.KILLED, 2)
    assert response.json()["status"] == Status.KILLED


def test_a_bulk_delete_says_which_finished_runs_another_process_held(api, make_run):
    """A run another transaction holds is skipped (FOR UPDATE SKIP LOCKED): the answer
    counts it as left, not as gone nor as unfinished."""
    from django.db import transaction

    held, free = (make_run("tests.race", status=Status.FAILED) for _ in range(2))
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                list(JobRun.objects.filter(pk=held.pk).select_for_update())
                locked.set()
                assert release.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()
            locked.set()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(timeout=30)
        response = api.post(f"{BASE}delete/?job_name=tests.race", {}, format="json")
    finally:
        release.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert response.status_code == 200, response.content
    assert not JobRun.objects.filter(pk=free.pk).exists()
    assert JobRun.objects.filter(pk=held.pk).exists()
    assert response.json() == {
        "matched": 2,
        "deleted": 1,
        "logs": 0,
        "not_finished": 0,
        "held": 1,
    }
