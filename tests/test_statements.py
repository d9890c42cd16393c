"""The statements of the hot paths (issue 12): SQL text made once, no ORM query built or compiled per task.

They must write exactly what the ORM would: the same row for a new run, the same
conditional moves, the same instance back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db.models.signals import post_save
from django.db.models.sql import compiler

from django_jobstatus import statements
from django_jobstatus.contrib import _execution
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobRun, Status

pytestmark = pytest.mark.django_db(transaction=True)

COMPILERS = (
    compiler.SQLCompiler,
    compiler.SQLInsertCompiler,
    compiler.SQLUpdateCompiler,
    compiler.SQLDeleteCompiler,
)


@contextlib.contextmanager
def compiled() -> Iterator[list[str]]:
    """The ORM compilers that built SQL while the block ran (their class names)."""
    names: list[str] = []
    with contextlib.ExitStack() as stack:
        for cls in COMPILERS:
            original = cls.__dict__["as_sql"]

            def spy(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
                names.append(type(self).__name__)
                return _original(self, *args, **kw)

            stack.enter_context(mock.patch.object(cls, "as_sql", spy))
        yield names


def row(run: JobRun) -> dict[str, Any]:
    """Every column of ``run`` as the database holds it, but its id."""
    values = JobRun.objects.filter(pk=run.pk).values().get()
    values.pop("id")
    return values


def test_an_enqueue_builds_no_orm_query() -> None:
    with compiled() as names:
        run = JobRun.objects.enqueue("tests.job", source="celery", backend_job_id="t")
    assert names == []
    assert JobRun.objects.get(pk=run.pk).status == Status.QUEUED


def test_a_task_s_start_and_end_build_no_orm_query() -> None:
    with compiled() as names:
        _execution.record_queued("celery", "t-1", "tests.job", fresh=True)
        task = Execution("celery", "t-1", "tests.job", worker="w:1")
        task.start()
        task.end(result={"n": 1})
        task.close()
    assert names == []
    run = JobRun.objects.get(backend_job_id="t-1")
    assert (run.status, run.result, run.worker) == (Status.SUCCEEDED, {"n": 1}, "w:1")
    assert run.queued_at <= run.started_at <= run.finished_at


def test_an_enqueue_writes_the_row_the_orm_would() -> None:
    user = get_user_model().objects.create(username="owner")
    parent = JobRun.objects.start("tests.parent")
    fields: dict[str, Any] = {
        "source": "celery",
        "backend_job_id": "t-2",
        "queue": "q",
        "priority": 3,
        "params": {"args": [1, "é\x00"], "kwargs": {"k": None}},
        "subject": "s",
        "owner": user,
        "parent": parent,
    }
    fast = JobRun.objects.enqueue("tests.job", **fields)
    with mock.patch.object(statements, "usable", return_value=False):
        slow = JobRun.objects.enqueue("tests.job", **fields)
    fast_row, slow_row = row(fast), row(slow)
    for stamp in ("created_at", "updated_at", "queued_at"):
        assert fast_row.pop(stamp) is not None and slow_row.pop(stamp) is not None
    assert fast_row == slow_row
    assert fast_row["params"] == {"args": [1, "é\ufffd"], "kwargs": {"k": None}}
    # The instance is the row, as a query would load it.
    assert fast.parent == parent and fast.owner == user
    assert not fast._state.adding and fast._state.db == "default"
    loaded = JobRun.objects.get(pk=fast.pk)
    assert {f.attname: getattr(fast, f.attname) for f in JobRun._meta.fields} == {
        f.attname: getattr(loaded, f.attname) for f in JobRun._meta.fields
    }


def test_an_enqueue_refuses_what_a_model_refuses() -> None:
    with pytest.raises(TypeError, match="nope"):
        JobRun.objects.enqueue("tests.job", nope=1)
    with pytest.raises(ValueError, match="source is 1000 characters long"):
        JobRun.objects.enqueue("tests.job", source="s" * 1000)
    assert not JobRun.objects.exists()


def test_a_post_save_receiver_still_sees_a_new_run() -> None:
    seen: list[tuple[str, bool]] = []

    def receiver(sender: Any, instance: JobRun, created: bool, **kwargs: Any) -> None:
        seen.append((instance.job_name, created))

    post_save.connect(receiver, sender=JobRun, dispatch_uid="test-statements")
    try:
        JobRun.objects.enqueue("tests.job")
    finally:
        post_save.disconnect(sender=JobRun, dispatch_uid="test-statements")
    assert seen == [("tests.job", True)]


def test_the_start_returns_the_row_it_wrote() -> None:
    queued = JobRun.objects.enqueue(
        "tests.job", source="rq", backend_job_id="t-3", params={"a": [1]}
    )
    started = statements.start_queued(
        "default",
        "rq",
        "t-3",
        worker="w:2",
        attempt=2,
        now=queued.created_at,
    )
    assert started is not None
    loaded = JobRun.objects.get(pk=queued.pk)
    assert {f.attname: getattr(started, f.attname) for f in JobRun._meta.fields} == {
        f.attname: getattr(loaded, f.attname) for f in JobRun._meta.fields
    }
    assert (loaded.status, loaded.worker, loaded.attempt, loaded.params) == (
        Status.RUNNING,
        "w:2",
        2,
        {"a": [1]},
    )
    # Running now: a second start finds no queued run.
    again = statements.start_queued(
        "default", "rq", "t-3", worker="w:3", attempt=1, now=queued.created_at
    )
    assert again is None


def test_a_move_names_a_field_the_run_does_not_have() -> None:
    run = JobRun.objects.start("tests.job")
    with pytest.raises(FieldDoesNotExist, match="nope"):
        run.mark_failed(RuntimeError("x"), nope=1)
    run.refresh_from_db()
    assert run.status == Status.RUNNING


def test_a_move_is_still_conditional() -> None:
    run = JobRun.objects.start("tests.job")
    stale = JobRun.objects.get(pk=run.pk)
    run.mark_succeeded({"ok": True})
    with pytest.raises(InvalidTransition):
        stale.mark_failed(RuntimeError("late"))
    run.refresh_from_db()
    assert (run.status, run.result, run.error) == (Status.SUCCEEDED, {"ok": True}, "")
    assert run.started_at is not None and run.finished_at is not None
