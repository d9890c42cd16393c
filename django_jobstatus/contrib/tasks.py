"""Record every run of Django's tasks framework: ``django.tasks`` (Django 6+) or the django-tasks backport.

Enable with ``JOBSTATUS = {"INTEGRATIONS": ["django_jobstatus.contrib.tasks"]}``. The
receivers listen to ``task_enqueued``, ``task_started`` and ``task_finished`` of every
importable signals module (both Django's and the backport's), with no ``sender=``
(django-tasks-db's worker sends the backend class or instance, inconsistently), and
keep one run per task result: ``source="django_tasks"``, ``backend_job_id`` = the
result id. Inside a running task ``current_job()`` returns its handle, so the task can
report progress, log and check for a kill. A kill is cooperative (the framework cannot
stop a task): the task sees it at its next ``check_kill()``, and a task asked to stop
before it started is refused when the worker picks it up (``task_started`` raises
JobKilled, the one exception a receiver lets through). The process beats for the runs
it executes (``django_jobstatus.heartbeats``), so a task that reports nothing is not
reaped as lost.
The ImmediateBackend runs a task inside ``enqueue()``, which is wrapped (once, on
``connect()``) to end the runs no ``task_finished`` ended: the backend lets
KeyboardInterrupt through with no signal, and another project's ``task_finished``
receiver that raises before ours keeps ours from running.
A ``task_finished`` for a run that has already ended (db_worker sends it again, as
FAILED, when a receiver after ours raises on a success) records no second run: the
run keeps its terminal state, and a warning line on it tells the task system's word;
one for an attempt before the run's current one leaves that attempt to its own end.
With django-tasks-db installed, a task its worker records FAILED with no signal (its
``task_path`` no longer imports, or names no Task) ends its queued run failed: a
``post_save`` receiver on the task result model. (A task result deleted while it
waited leaves its run queued: a ``post_delete`` receiver would make Django load every row
of each delete, django-tasks-db's prune included; ``QUEUED_TIMEOUT`` ends such runs.)
With ``JOBSTATUS["DATABASE"]`` apart from django-tasks-db's database, the queued run of
a task enqueued in a transaction there is recorded when it commits.
While a task runs, the ``batch()`` block that enqueued it (an ImmediateBackend task runs
inside ``enqueue()``) is hidden: what the task enqueues is no child of that batch.
Retry enqueues the task again (same path, arguments, queue, priority and the backend it
ran on) and records the queued run itself, as ``on_enqueued`` would: the run it answers
is the one recorded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router, transaction
from django.db.models.signals import post_save
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from django_jobstatus import (
    batches,
    compat,
    contrib,
    own_connections,
    statements,
    writebehind,
)
from django_jobstatus.conf import settings
from django_jobstatus.contrib._execution import (
    Execution,
    best_effort,
    find_or_enqueue,
    find_run,
)
from django_jobstatus.exceptions import JobKilled
from django_jobstatus.fingerprints import last_line
from django_jobstatus.routers import write_database
from django_jobstatus.tracking import JobHandle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from django.dispatch import Signal

    from django_jobstatus.models import JobRun

SOURCE = "django_tasks"

SIGNAL_MODULES = compat.task_signal_modules()
if not SIGNAL_MODULES:
    raise ImproperlyConfigured(
        "django_jobstatus.contrib.tasks needs Django 6 (django.tasks) or, on Django 5.2, the django-tasks package."
    )
INLINE_BACKENDS = compat.inline_task_backends()
KILLED_PATH = f"{JobKilled.__module__}.{JobKilled.__qualname__}"

logger = logging.getLogger(__name__)

# The task result executing in this context, its execution, the entry it replaced (an
# ImmediateBackend task enqueued by a running task nests) and the batch parent it hid.
_running: ContextVar[tuple[Any, Execution, Any, JobRun | None] | None] = ContextVar(
    "django_jobstatus_task", default=None
)
# True while TasksBackend.retry() enqueues: it records the queued run, not on_enqueued.
_retrying: ContextVar[bool] = ContextVar("django_jobstatus_task_retry", default=False)


class TaskFailed(Exception):  # noqa: N818 (names what happened, like JobKilled)
    """Stands for a task's exception, known only by its class path and traceback."""


# What is recorded.


# The key of params that names the backend a task ran on, when not the framework's default.
BACKEND = "backend"
# The framework's DEFAULT_TASK_BACKEND_ALIAS: the backend of a run whose params name none.
DEFAULT_BACKEND = "default"


def _fields(task_result: Any) -> dict[str, Any]:
    """What is known of a task result when it is enqueued."""
    task = task_result.task
    params = contrib.params_of(task_result.args, task_result.kwargs)
    if task_result.backend != DEFAULT_BACKEND:
        # A retry goes to the same backend: with none named, the default one, whatever
        # backend the task declares (task.using(backend=...) overrides it).
        params[BACKEND] = task_result.backend
    return {
        "queue": task.queue_name or "",
        "priority": task.priority,
        "params": params,
        "parent": batches.current_parent(),
        "due_at": task.run_after,
    }


def _is_inline(sender: Any) -> bool:
    backend = sender if isinstance(sender, type) else type(sender)
    return issubclass(backend, INLINE_BACKENDS)


def _error(path: str, traceback: str) -> str:
    """``"Class: message"`` from the end of a formatted traceback (the framework keeps no message).

    An exception group's lines are drawn in a box (``  | ExceptionGroup: …``, then its
    sub-exceptions' boxes): its own line is found inside, and read without the box.
    """
    lines = traceback.rstrip().splitlines()
    short = path.rpartition(".")[2]
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index].lstrip(" |")
        if path and line.startswith((path, short)):
            box = lines[index][: len(lines[index]) - len(line)]
            message = [line]
            for following in lines[index + 1 :]:
                if not following.startswith(box) or following.lstrip().startswith("+"):
                    break
                message.append(following[len(box) :])
            return "\n".join(message)
    return last_line(traceback) or path


# The first line of a formatted traceback's last exception; a group's, within its box.
_TRACEBACK = "Traceback (most recent call last):"
_GROUP_TRACEBACK = "Exception Group Traceback (most recent call last):"


def _killed(path: str, traceback: str) -> bool:
    """Whether a task failed with JobKilled, or with an exception group of JobKilled alone
    (an ``asyncio.TaskGroup`` whose tasks saw the kill; ``tracking.kills_in()``).

    The framework keeps the class path and the formatted traceback only: a group's
    sub-exceptions are read from their boxes. Anything the boxes do not show (the
    sub-exceptions past the 15th, a group nested deeper than 10) is taken for a failure.
    """
    if path == KILLED_PATH:
        return True
    lines = traceback.rstrip().splitlines()
    # The task's own group: the last one at the top level (the others are its context).
    tops = [n for n, line in enumerate(lines) if line == f"  + {_GROUP_TRACEBACK}"]
    if not tops:
        return False
    rows: list[tuple[int, str | None]] = []
    for line in lines[tops[-1] :]:
        text = line.lstrip(" ")
        column = len(line) - len(text)
        if text.startswith("+-+"):  # ends a box's own lines, opens its first sub-box
            rows.append((column + 2, None))
        elif text.startswith("+-"):  # a border between sub-boxes, or their end
            rows.append((column, None))
        elif text[:2] in ("| ", "+ ") or text == "|":
            rows.append((column, text[2:]))
        else:
            return False
    return _killed_box(rows, 2)


def _killed_box(rows: list[tuple[int, str | None]], column: int) -> bool:
    """Whether the box drawn at ``column`` (its rows: column and text, None for a border)
    ends with a JobKilled, or with a group whose sub-boxes all do.

    A box shows its exception's chain (context, cause) first: its own exception begins
    at its last traceback header.
    """
    headers = [
        n
        for n, (at, text) in enumerate(rows)
        if at == column and text in (_TRACEBACK, _GROUP_TRACEBACK)
    ]
    if not headers:
        return False  # not raised, or not drawn: unknown
    start = headers[-1]
    if rows[start][1] == _GROUP_TRACEBACK:
        boxes: list[list[tuple[int, str | None]]] = []
        for at, text in rows[start + 1 :]:
            if at == column + 2 and text is None:
                boxes.append([])
            elif boxes:
                boxes[-1].append((at, text))
        boxes = [box for box in boxes if box]
        return bool(boxes) and all(_killed_box(box, column + 2) for box in boxes)
    for at, text in rows[start + 1 :]:
        if at == column and text and not text.startswith(" "):
            # The exception's line, after its frames.
            return text == KILLED_PATH or text.startswith(f"{KILLED_PATH}:")
    return False


# Receivers: each catches and logs its errors, so the task system never sees them.


def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """Record a queued run: one INSERT (in the caller's transaction: a rollback takes it with the task; outside one on PostgreSQL, written behind the caller).

    With the runs' database apart from the one the task's row is written to, a
    transaction there cannot hold the run: it is recorded once that one commits (a worker
    that starts the task first records its run, and the queued twin is merged into it).
    """
    if _is_inline(sender):
        return  # it runs inside enqueue(): task_started records it, once
    if _retrying.get():
        return  # TasksBackend.retry() records it, and answers it
    try:
        values = _queued_values(task_result)
        row = _waited_for(sender)
        if row is not None:
            transaction.on_commit(
                functools.partial(_record_queued, values), using=row, robust=True
            )
            return
        _write_queued(values)
    except Exception:
        _not_recorded(str(task_result.id))


def _queued_values(task_result: Any) -> dict[str, Any]:
    """The checked values of the queued run of an enqueued task."""
    from django_jobstatus.models import JobRun

    return JobRun.objects.db_manager(settings.DATABASE).queued_values(
        task_result.task.module_path,
        source=SOURCE,
        backend_job_id=str(task_result.id),
        queued_at=task_result.enqueued_at or timezone.now(),
        **_fields(task_result),
    )


def _waited_for(sender: Any) -> str | None:
    """The database whose commit the queued run of a task ``sender`` enqueued waits for:
    django-tasks-db's, when a transaction is open there and the runs are kept apart (one
    transaction cannot hold both the task's row and its run); None: written now."""
    row = _row_database(sender)
    if row is None or row == settings.DATABASE or not connections[row].in_atomic_block:
        return None
    return row


def _not_recorded(backend_job_id: str) -> None:
    logger.exception(
        "Could not record the enqueueing of task %s; it will be recorded when it starts.",
        backend_job_id,
    )


def _row_database(sender: Any) -> str | None:
    """The database django-tasks-db writes the task's row to; None for another backend
    (its task is no row that a transaction could take back)."""
    model = _result_model()
    if model is None:
        return None
    from django_tasks_db.backend import DatabaseBackend

    backend = sender if isinstance(sender, type) else type(sender)
    if not issubclass(backend, DatabaseBackend):
        return None
    return str(router.db_for_write(model))


def _record_queued(values: dict[str, Any]) -> None:
    """``_write_queued()`` once the task's row is committed."""
    try:
        _write_queued(values)
    except Exception:
        _not_recorded(values["backend_job_id"])


def _write_queued(values: dict[str, Any]) -> JobRun | None:
    """Write a queued run (``values`` from ``_queued_values()``, its ``id`` kept if set);
    the run, or None when it is written behind or merged into a worker's run."""
    from django_jobstatus.models import uuid7

    alias = settings.DATABASE
    if writebehind.accepts(alias):
        # Outside a transaction on PostgreSQL: written behind the caller (writebehind.py).
        values.setdefault("id", uuid7())
        if writebehind.writer.put(alias, values):
            return None
    in_atomic = connections[alias].in_atomic_block
    # Inside the caller's transaction, a savepoint keeps a failed write from breaking it;
    # outside, the one statement is atomic by itself.
    with transaction.atomic(using=alias) if in_atomic else contextlib.nullcontext():
        run, alone = _insert_alone(values, alias)
    if not alone and _merge_twins(values["backend_job_id"], alias):
        return None  # a worker recorded the task first (committed before this write)
    return run


def _insert_alone(values: dict[str, Any], alias: str) -> tuple[JobRun, bool]:
    """INSERT the run of ``values``; the run, and whether no other run of its task was
    recorded before.

    One statement where the database returns columns from an INSERT (``INSERT …
    RETURNING EXISTS (…)``, SQL text made once), else an INSERT and a SELECT.
    """
    from django_jobstatus.models import JobRun

    if statements.usable(alias) and not statements.observed():
        return statements.insert_alone(alias, values)
    run = JobRun(**values)
    run.save(force_insert=True, using=alias)
    return run, not (
        JobRun.objects.using(alias)
        .filter(source=run.source, backend_job_id=run.backend_job_id)
        .exclude(pk=run.pk)
        .exists()
    )


def _merge_twins(backend_job_id: str, alias: str) -> bool:
    """Drop the queued twin of a run a worker recorded at the same moment; True if it did.

    Outside a transaction the task is committed before ``task_enqueued`` is sent, so a
    worker may record its start before the enqueueing is recorded, and both create a
    run. Each side checks after its own write, so the later one sees both rows: the
    worker's run is kept, with the queued twin's parent, owner and kill request.
    """
    from django_jobstatus.models import JobRun, Status

    runs = JobRun.objects.using(alias).filter(
        source=SOURCE, backend_job_id=backend_job_id
    )
    rows = list(
        runs.values("pk", "status", "parent_id", "owner_id", "kill_requested_at")
    )
    queued = [row for row in rows if row["status"] == Status.QUEUED]
    kept = [row["pk"] for row in rows if row["status"] != Status.QUEUED]
    if not queued or not kept:
        return False
    for row in queued:
        if row["parent_id"] is not None:
            runs.filter(pk__in=kept, parent__isnull=True).update(
                parent_id=row["parent_id"]
            )
        if row["owner_id"] is not None:
            runs.filter(pk__in=kept, owner__isnull=True).update(
                owner_id=row["owner_id"]
            )
        if row["kill_requested_at"] is not None:
            runs.filter(pk__in=kept).not_kill_requested().update(
                kill_requested_at=row["kill_requested_at"]
            )
    runs.filter(pk__in=[row["pk"] for row in queued]).queued().delete()
    return True


def _attempt(task_result: Any) -> int:
    """The attempt of a task result: the framework counts none until a worker takes it."""
    return max(int(task_result.attempts), 1)


def _begin(task_result: Any) -> Execution:
    """Record the start (an upsert: the enqueueing may not have been seen); activate current_job()."""
    from django_jobstatus.models import default_worker

    fields = _fields(task_result)
    if task_result.enqueued_at is not None:
        fields["queued_at"] = task_result.enqueued_at
    execution = Execution(
        SOURCE,
        str(task_result.id),
        task_result.task.module_path,
        worker=default_worker(),
        attempt=_attempt(task_result),
        **fields,
    )
    execution.start()  # with the database away: an unsaved run, recorded at the end
    return execution


def on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """Mark the run running and make it ``current_job()`` for the task's code.

    The task's code runs outside the ``batch()`` block that enqueued it (an
    ImmediateBackend task runs inside ``enqueue()``): the tasks it enqueues are no
    children of that batch, as with a worker. The batch is back when the run ends.
    """
    if sender is not None and not _is_inline(sender):
        # A worker (db_worker, an RQ worker of django-tasks-rq): a connection kept open
        # across tasks. db_worker connects anew for every task, and in a new PostgreSQL
        # session the first statement on the run table reads the descriptions of the
        # table and its indexes first (about 3 ms a task).
        own_connections.track_through_own()
    try:
        execution = _begin(task_result)
    except Exception:
        logger.exception("Could not record the start of task %s.", task_result.id)
        return
    hidden = batches.replace_parent(None)
    _running.set((task_result, execution, _running.get(), hidden))
    run = execution.handle.run if execution.handle is not None else None
    if not _is_inline(sender):
        _merge_into(execution, str(task_result.id))
    asked = execution.killed_before_start or (run is not None and run.kill_requested)
    if asked and run is not None and not _is_inline(sender):
        # Asked to stop (or ended killed) while it waited: the worker records this as
        # the task's failure, which ends the run killed, and the task's code never runs.
        raise JobKilled(f"Run {run.pk} was asked to stop before it started.")


def _merge_into(execution: Execution, backend_job_id: str) -> None:
    """Merge a queued twin into the run a worker started without finding the queued one.

    Called when the task starts and again when it ends: the enqueueing's INSERT may land
    in between (it checks for an earlier run in its own statement, which cannot see a
    run committed while it runs).
    """
    run = execution.handle.run if execution.handle is not None else None
    if run is None or not execution.created:
        return
    try:
        db = write_database(run._state.db)
        if _merge_twins(backend_job_id, db):
            run.refresh_from_db(using=db, fields=["parent", "kill_requested_at"])
    except Exception:
        logger.exception("Could not merge the runs of task %s.", backend_job_id)


def _failure(task_result: Any) -> tuple[str, str, str]:
    """The exception class path, ``"Class: message"`` and traceback of a failed task result."""
    error = task_result.errors[-1] if task_result.errors else None
    path = error.exception_class_path if error is not None else ""
    traceback = error.traceback if error is not None else ""
    return path, _error(path, traceback) or str(task_result.status), traceback


def _outcome(
    task_result: Any, handle: JobHandle
) -> tuple[BaseException | None, dict[str, Any]]:
    """The exception (None: succeeded) and the extra fields that end the run."""
    if str(task_result.status) == "SUCCESSFUL":
        with contextlib.suppress(Exception):  # a value JSON cannot hold is not kept
            handle.result = task_result.return_value
        return None, {}
    path, text, traceback = _failure(task_result)
    if _killed(path, traceback):
        return JobKilled(), {}
    return TaskFailed(text), {"error": text, "traceback": traceback}


def _end(execution: Execution, task_result: Any, exc: BaseException | None) -> None:
    """End the run as the task result says, or failed with ``exc`` when the task system
    decided nothing (KeyboardInterrupt left the task); make ``current_job()`` as before."""
    try:
        if execution.handle is not None:
            values: dict[str, Any] = {}
            if exc is None or str(task_result.status) in {"SUCCESSFUL", "FAILED"}:
                exc, values = _outcome(task_result, execution.handle)
            # Durable: retried while the database is away, then logged.
            execution.end(exc, **values)
    finally:
        execution.close()
        writebehind.flush()  # runs this task enqueued


def _ended_already(task_result: Any, run: JobRun) -> None:
    """Keep the run of a task that ends again, or whose end comes for an attempt before
    the run's current one, and note a word of the task system that the run does not tell.

    db_worker records a task FAILED and sends ``task_finished`` again when a receiver
    after ours raises on its success. Nothing leaves a terminal state: the run keeps it
    (one run, as the task ran once), and a warning line on it tells what the task system
    recorded last.

    The end of an old attempt can come after the next attempt started (the task was
    given to another worker, and the old one's ``task_finished`` comes where its start
    was not seen: django-tasks-rq's callbacks): the current attempt goes on to its own
    end, and the warning line keeps the old attempt's outcome.
    """
    from django_jobstatus.models import Status

    succeeded = str(task_result.status) == "SUCCESSFUL"
    path, text, traceback = ("", "", "") if succeeded else _failure(task_result)
    said = (
        Status.SUCCEEDED
        if succeeded
        else Status.KILLED
        if _killed(path, traceback)
        else Status.FAILED
    )
    if run.status == said:
        return  # the same end, told twice
    if run.is_finished:
        message = _(
            "The task system recorded this task as %(status)s after its run had ended "
            "(%(state)s); the run keeps its state."
        ) % {"status": task_result.status, "state": Status(run.status).label}
    else:
        message = _(
            "The task system recorded attempt %(attempt)s of this task as %(status)s "
            "after attempt %(current)s had begun; the run goes on with attempt "
            "%(current)s."
        ) % {
            "attempt": _attempt(task_result),
            "status": task_result.status,
            "current": run.attempt,
        }
    extra = {"task_status": str(task_result.status)}
    if traceback:
        extra["traceback"] = traceback
    run.log(
        logging.WARNING,
        f"{message}\n{text}" if text else message,
        extra=extra,
        using=run._state.db,
    )


def _ending(task_result: Any) -> Execution | None:
    """The execution to end when its start was not seen in this context; None when the
    run of this attempt has ended already, or has gone on to a later attempt.

    A run another process or context started (django-tasks-rq finishes in RQ's
    callbacks) is ended as it is, not restarted; otherwise the start is recorded now.
    A run at a later attempt than the one that ended is that attempt's to end.
    """
    from django_jobstatus.models import Status

    try:
        run = find_run(SOURCE, str(task_result.id))
    except DatabaseError:
        run = None
    attempt = _attempt(task_result)
    if run is not None and (
        run.attempt > attempt or (run.is_finished and run.attempt == attempt)
    ):
        _ended_already(task_result, run)
        return None
    if run is None or run.status != Status.RUNNING:
        return _begin(task_result)
    execution = Execution(
        SOURCE, run.backend_job_id, run.job_name, worker=run.worker, attempt=run.attempt
    )
    execution.handle = JobHandle(run)
    execution.adopt(run)
    return execution


def on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """End the run succeeded, failed (with error and traceback) or killed (JobKilled)."""
    try:
        entry = _running.get()
        if entry is not None and str(entry[0].id) == str(task_result.id):
            _running.set(entry[2])
            batches.replace_parent(entry[3])
            execution: Execution | None = entry[1]
            if not _is_inline(sender):
                _merge_into(entry[1], str(task_result.id))
        else:  # the start was seen elsewhere or not at all, or the run has ended
            execution = _ending(task_result)
        if execution is not None:
            _end(execution, task_result, None)
    except Exception:
        logger.exception("Could not record the end of task %s.", task_result.id)


@contrib.never_raises  # save() of the task result must not fail for our sake
def on_result_saved(
    sender: Any, *, instance: Any, created: bool, update_fields: Any, **kwargs: Any
) -> None:
    """End failed the queued run of a task django-tasks-db recorded FAILED before it started.

    db_worker cannot build a task whose ``task_path`` no longer imports or names no Task
    (a deploy renamed or removed it while it waited): it records the task FAILED and
    sends neither ``task_started`` nor ``task_finished``, which carry the task. A run
    whose start was seen is left to ``task_finished``, so no end is recorded twice.
    """
    if created or str(instance.status) != "FAILED":
        return
    if update_fields is not None and "status" not in update_fields:
        return
    entry = _running.get()
    if entry is not None and str(entry[0].id) == str(instance.id):
        return  # the normal failure: task_finished ends the run
    from django_jobstatus.models import Status, default_worker

    backend_job_id = str(instance.id)
    path, traceback = instance.exception_class_path, instance.traceback

    def record(alias: str) -> None:
        run = find_or_enqueue(SOURCE, backend_job_id, None, alias)
        if run is None or run.status != Status.QUEUED:
            return  # a run that started is task_finished's to end
        run.mark_running(worker=default_worker(), using=alias)
        run.mark_failed(using=alias, error=_error(path, traceback), traceback=traceback)

    best_effort(record, f"the failure of task {backend_job_id} before it started")


def _end_unfinished(
    before: tuple[Any, Execution, Any, JobRun | None] | None, exc: BaseException
) -> None:
    """End the runs started in this context since ``before`` that no ``task_finished`` ended."""
    entry = _running.get()
    while entry is not None and entry is not before:
        task_result, execution, previous, hidden = entry
        _running.set(previous)
        batches.replace_parent(hidden)
        try:
            _end(execution, task_result, exc)
        except Exception:
            logger.exception("Could not record the end of task %s.", task_result.id)
        entry = previous


def _guard(backend: type) -> None:
    """Make ``backend.enqueue()`` (an inline backend's) end the runs that no ``task_finished`` ended.

    The ImmediateBackend lets KeyboardInterrupt through with no ``task_finished``, and
    an exception of another ``task_finished`` receiver leaves ``enqueue()`` before ours
    may run. The run then ends as the task result says (succeeded or failed), or failed
    with the exception, as ``track()`` ends a block left by one; it is re-raised.
    """
    enqueue = backend.enqueue  # type: ignore[attr-defined]
    if getattr(enqueue, "_jobstatus_guard", False):
        return

    @functools.wraps(enqueue)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = _running.get()
        try:
            return enqueue(self, *args, **kwargs)
        except BaseException as exc:
            _end_unfinished(before, exc)
            raise

    guarded._jobstatus_guard = True  # type: ignore[attr-defined]
    backend.enqueue = guarded  # type: ignore[attr-defined]


# Kill and retry from the admin and the API.


class TasksBackend:
    """Kill is cooperative; retry enqueues the task again with the same arguments."""

    def kill(self, run: JobRun, *, force: bool = False) -> str | None:
        # The request is already recorded: the task sees it at its next progress call or
        # check_kill(), and a task still waiting is refused when a worker picks it up.
        if run.started_at is None:
            return None
        return str(
            _(
                "Django's tasks framework cannot stop a running task: it stops at its next "
                "progress call or check_kill(), or runs to its end."
            )
        )

    def retry(self, run: JobRun) -> JobRun:
        """Enqueue the task again and record its queued run here (on_enqueued leaves it).

        As ``on_enqueued`` would, with the runs' database apart from the task's row in an
        open transaction: the run answered is saved when that transaction commits, and
        never if it rolls back (with the task). Else it is written now, before the
        caller shows it.
        """
        from django_jobstatus.models import JobRun

        task = import_string(run.job_name)
        params = run.params or {}
        # Where it ran: a run with no backend in its params ran on the default one, even
        # when the task declares another (it was enqueued with task.using()).
        backend = params.get(BACKEND) or DEFAULT_BACKEND
        if (
            (run.queue and run.queue != task.queue_name)
            or run.priority != task.priority
            or backend != task.backend
        ):
            task = task.using(
                queue_name=run.queue or task.queue_name,
                priority=run.priority,
                backend=backend,
            )
        sender = task.get_backend()
        # Not around an inline backend's enqueue(): the task runs in it, and the tasks
        # it enqueues are recorded as usual.
        token = _retrying.set(not _is_inline(sender))
        try:
            result = task.enqueue(*params.get("args", []), **params.get("kwargs", {}))
        finally:
            _retrying.reset(token)
        if _is_inline(sender):  # it ran inside enqueue(): task_started recorded it
            ran = find_run(SOURCE, str(result.id), settings.DATABASE)
            if ran is not None:
                return ran
        values = _queued_values(result)
        row = _waited_for(sender)
        if row is not None:
            waiting = JobRun(**values)
            transaction.on_commit(
                functools.partial(_record_retried, values, waiting),
                using=row,
                robust=True,
            )
            return waiting
        with writebehind.inline():  # there when the caller shows it
            written = _write_queued(values)
        if written is not None:
            return written
        # Merged into the run of a worker that started the task first.
        return (
            JobRun.objects.using(settings.DATABASE)
            .filter(source=SOURCE, backend_job_id=str(result.id))
            .latest("created_at")
        )


def _record_retried(values: dict[str, Any], new: JobRun) -> None:
    """Save the run ``TasksBackend.retry()`` answered, once the task's row is committed:
    written now (the caller showed it), with the owner ``contrib.retry()`` gave it."""
    with writebehind.inline():
        _record_queued({**values, "id": new.pk, "owner_id": new.owner_id})


backend = TasksBackend()


# Switching on and off.

_RECEIVERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("task_enqueued", on_enqueued),
    ("task_started", on_started),
    ("task_finished", on_finished),
)


def _signals() -> Iterator[tuple[Signal, Callable[..., None], str]]:
    seen: set[int] = set()
    for module in SIGNAL_MODULES:
        for name, receiver in _RECEIVERS:
            signal = getattr(module, name)
            if id(signal) not in seen:  # one module may re-export the other's signals
                seen.add(id(signal))
                yield signal, receiver, f"{__name__}.{name}"


def _result_model() -> type | None:
    """django-tasks-db's task result model, when it is installed."""
    if not apps.is_installed("django_tasks_db"):
        return None
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult


RESULT_SAVED = f"{__name__}.result_saved"


def connect() -> None:
    """Record every task run from now on (idempotent)."""
    for signal, receiver, uid in _signals():
        signal.connect(receiver, weak=False, dispatch_uid=uid)
    if (model := _result_model()) is not None:
        post_save.connect(
            on_result_saved, sender=model, weak=False, dispatch_uid=RESULT_SAVED
        )
    for inline in INLINE_BACKENDS:
        _guard(inline)  # inert while disconnected: no run is started in enqueue()
    contrib.register(SOURCE, backend)


def disconnect() -> None:
    """Stop recording task runs (idempotent)."""
    for signal, receiver, uid in _signals():
        signal.disconnect(receiver, dispatch_uid=uid)
    if (model := _result_model()) is not None:
        post_save.disconnect(sender=model, dispatch_uid=RESULT_SAVED)
    contrib.unregister(SOURCE)
