"""Batches: several runs under one parent, whose status and progress follow its children.

``start_batch(name, children)`` records a parent run and one queued child per item;
the children are then run like any run (``track(child.job_name, run=child)``, or by an
integration that was given the child). ``batch_status(parent)`` reads the aggregate
from one query, and ``refresh_batch(parent)`` moves the parent there with conditional
transitions, so two processes refreshing at once cannot both win. Once ``connect()``
is called (``JobStatusConfig.ready()`` does) the parent is refreshed whenever a child's
status changes. Inside ``with batch(name) as parent:`` the runs that integrations
record (a task enqueued there) become children of ``parent``. Until the block ends the
parent has no total (``progress_total`` is NULL) and stays ``queued``: its children so
far do not say the batch is over. The mark lives in the row, as the children end in
other processes. A run a worker runs, with children of its own, is no batch's parent:
it ends as its job does.

The aggregate: ``queued`` while every child is queued; ``failed`` as soon as one child
failed or was lost; ``succeeded`` when all succeeded; ``killed`` when all finished and
some were killed (none failed); ``running`` otherwise. Progress is the number of
finished children out of all of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import ngettext

from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition, JobKilled
from django_jobstatus.models import (
    JobRun,
    Status,
    check_job_name,
    check_json,
    storable,
)
from django_jobstatus.routers import write_database
from django_jobstatus.signals import job_status_changed
from django_jobstatus.tracking import kills_in, tracking_database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchStatus:
    """What a parent's children add up to.

    ``started_at`` is the first child's start (None while none started), ``finished_at``
    the last child's end once every child has ended (None before): the span the parent
    records when it ends, whenever its refresh comes.
    """

    status: str
    done: int
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def progress(self) -> float | None:
        """Finished children out of all of them, 0.0 to 1.0 (None without children)."""
        return self.done / self.total if self.total else None


def aggregate(counts: Mapping[str, int]) -> str:
    """The parent's status for these numbers of children per status."""
    total = sum(counts.values())
    finished = sum(counts.get(status, 0) for status in Status.TERMINAL)
    if counts.get(Status.FAILED, 0) or counts.get(Status.LOST, 0):
        return Status.FAILED
    if counts.get(Status.SUCCEEDED, 0) == total:
        return Status.SUCCEEDED
    if counts.get(Status.QUEUED, 0) == total:
        return Status.QUEUED
    if finished == total:
        return Status.KILLED
    return Status.RUNNING


def _child(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return check_job_name(spec), {}
    fields = dict(spec)
    name = check_job_name(fields.pop("job_name", None))
    for name_of_json in ("params", "data"):
        if name_of_json in fields:
            check_json(name_of_json, fields[name_of_json])
    return name, fields


def start_batch(
    name: str,
    children: Iterable[str | Mapping[str, Any]],
    *,
    using: str | None = None,
    **fields: Any,
) -> JobRun:
    """Record a queued parent run ``name`` with one queued child per item of ``children``.

    An item is a job name, or a mapping of JobRun fields with ``job_name`` (``params``,
    ``subject``, ``queue``…). ``fields`` are the parent's (``params``, ``owner``,
    ``source``…); children take the parent's ``source`` and ``owner`` unless they name
    their own. Inside a ``batch()`` block the parent is one of that batch's children.
    Returns the parent; its children are ``parent.children``.
    """
    specs = [_child(spec) for spec in children]
    if not specs:
        raise ValueError("A batch needs at least one child.")
    fields.setdefault("parent", current_parent())  # a batch inside a batch() block
    db = using or settings.DATABASE
    with transaction.atomic(using=db):
        parent = JobRun.objects.db_manager(db).enqueue(
            name, progress_total=len(specs), **fields
        )
        now = timezone.now()
        inherited: dict[str, Any] = (
            {"source": fields["source"]} if "source" in fields else {}
        )
        # The parent's owner: given, or taken from the batch it is in (inherit_owner()).
        owner = {} if parent.owner_id is None else {"owner_id": parent.owner_id}
        rows = [
            JobRun(
                parent=parent,
                **storable(
                    {
                        "job_name": child_name,
                        "status": Status.QUEUED,
                        "created_at": now,
                        "updated_at": now,
                        "queued_at": now,
                        **inherited,
                        **(
                            {} if {"owner", "owner_id"} & child_fields.keys() else owner
                        ),
                        **child_fields,
                    }
                ),
            )
            for child_name, child_fields in specs
        ]
        JobRun.objects.using(db).bulk_create(rows)
    return parent


def batch_status(parent: JobRun) -> BatchStatus:
    """The aggregate status, progress and span of ``parent``'s children (one query:
    ``count_by_status()``'s, with each status's first start and last end)."""
    rows = (
        JobRun.objects.using(write_database(parent._state.db))
        .filter(parent_id=parent.pk)
        .order_by()
        .values_list("status")
        .annotate(n=Count("pk"), first=Min("started_at"), last=Max("finished_at"))
    )
    counts: dict[str, int] = {}
    starts: list[datetime] = []
    ends: list[datetime] = []
    for status, n, first, last in rows:
        counts[status] = n
        if first is not None:
            starts.append(first)
        if last is not None:
            ends.append(last)
    total = sum(counts.values())
    done = sum(counts.get(status, 0) for status in Status.TERMINAL)
    return BatchStatus(
        status=aggregate(counts) if total else parent.status,
        done=done,
        total=total,
        counts=counts,
        started_at=min(starts, default=None),
        finished_at=max(ends, default=None) if total and done == total else None,
    )


# A parent whose ``batch()`` block is still recording children: queued, with no total
# yet. In the row, not in memory: its children end in other processes. _is_open() is
# the same test on a run read.
_OPEN = Q(status=Status.QUEUED, progress_total__isnull=True)


def _is_open(parent: JobRun) -> bool:
    return parent.status == Status.QUEUED and parent.progress_total is None


# A batch's parent: a run no worker runs. start_batch() and batch() enqueue it, and
# _move() starts it with no worker; a run started by a worker or a process (track(),
# mark_running(), an integration) always names one, and may have children of its own
# (``track("step", parent=job.run)``) without being a batch: they neither move it nor
# write its progress, and the reaper calls it lost when it falls silent.
# _is_batch_parent() is the same test on a run read.
BATCH_PARENT = Q(worker="")


def _is_batch_parent(run: JobRun) -> bool:
    return run.worker == ""


def _move(
    parent: JobRun,
    target: str,
    state: BatchStatus,
    error: BaseException | None = None,
) -> None:
    """Move ``parent`` towards ``target`` with the state machine's conditional transitions
    (failed with ``error``, the exception its block raised, when given)."""
    if (
        parent.status == target
        or parent.status in Status.TERMINAL
        or target == Status.QUEUED
        or _is_open(parent)
    ):
        return
    if (
        target in (Status.RUNNING, Status.SUCCEEDED, Status.FAILED)
        and parent.status != Status.RUNNING
    ):
        parent.mark_running(worker="")
    counts = {"children": state.counts}
    span = _span(parent, state)
    if target == Status.SUCCEEDED:
        parent.mark_succeeded(result=counts, **span)
    elif target == Status.FAILED and error is not None:
        parent.mark_failed(error, result=counts, **span)
    elif target == Status.FAILED:
        parent.mark_failed(**_failure(state), **span)
    elif target == Status.KILLED:
        parent.mark_killed(result=counts, **span)


def _span(parent: JobRun, state: BatchStatus) -> dict[str, Any]:
    """The ``started_at`` and ``finished_at`` of ``parent`` ending now: its first child's
    start when that came before its own, and, once every child has ended, its last
    child's end (never before that start).

    Its refresh may come late: the reaper settles a parent whose refresh was missed
    hours after its last child ended, starting and ending it at once. Stamped "now", the
    record said the batch ran for no time, long after it did.
    """
    started = min(
        (at for at in (parent.started_at, state.started_at) if at is not None),
        default=None,
    )
    span: dict[str, Any] = {}
    if started is not None:
        span["started_at"] = started
    if state.finished_at is not None:
        span["finished_at"] = max(state.finished_at, started or state.finished_at)
    return span


# How many times _settle() reads the parent again after another process moved it first.
_MOVE_ATTEMPTS = 3


def _settle(
    parent: JobRun,
    target: str,
    state: BatchStatus,
    error: BaseException | None = None,
) -> None:
    """``_move()``, from the row as it is now whenever another process moved ``parent``
    first, until it reaches ``target`` or ends.

    A refresh that read the parent queued has its start refused when another one started
    it meanwhile: giving up there would leave it running once every child has ended (the
    other refresh, from an older view, aimed no further). Moves are conditional and an
    end is final, so going on from the fresh row undoes nothing a newer view did. One
    whose end was refused because another process, from an older view, ended it first
    writes its newer figures all the same (``_follow()``): no refresh comes after the
    last child's.
    """
    db = write_database(parent._state.db)
    for _attempt in range(_MOVE_ATTEMPTS):
        try:
            _move(parent, target, state, error)
        except InvalidTransition:
            parent.refresh_from_db(using=db)  # another process moved it first
            _follow(parent, state)
        else:
            return


def _follow(parent: JobRun, state: BatchStatus) -> None:
    """A parent that ended failed or killed before its last child did: its ``result``,
    and the ``error`` of one its children failed, from ``state`` unless a newer view
    wrote them (progress only moves forward), so that its figures follow the children
    to their end. One its block's exception failed keeps that exception (its traceback).
    """
    if parent.status not in (Status.FAILED, Status.KILLED):
        return
    db = write_database(parent._state.db)
    JobRun.objects.using(db).filter(
        BATCH_PARENT,
        pk=parent.pk,
        status=parent.status,
        progress_current__lte=state.done,
    ).update(
        result={"children": state.counts},
        error=Case(
            When(
                Q(status=Status.FAILED, traceback=""),
                then=Value(_failure(state)["error"], output_field=TextField()),
            ),
            default=F("error"),
        ),
    )
    parent.refresh_from_db(using=db, fields=["error", "result"])


def _failure(state: BatchStatus) -> dict[str, Any]:
    """A failed parent's ``error`` and ``result``: how many of its children failed, and
    the count of each status."""
    failed = state.counts.get(Status.FAILED, 0) + state.counts.get(Status.LOST, 0)
    message = ngettext(
        "%(failed)d of %(total)d child run failed.",
        "%(failed)d of %(total)d child runs failed.",
        state.total,
    ) % {"failed": failed, "total": state.total}
    return {"error": message, "result": {"children": state.counts}}


def refresh_batch(parent: JobRun) -> BatchStatus:
    """Bring ``parent``'s status and progress in line with its children; return the aggregate.

    Progress only moves forward and every transition is conditional, so a refresh
    working from an older view of the children never undoes a newer one. A parent whose
    ``batch()`` block was open when the children were read gets no total and does not
    move: the view may lack the children the block records after it (the block's end
    refreshes it again). A run a worker runs is no batch's parent (``BATCH_PARENT``):
    it is left as it is.
    """
    db = write_database(parent._state.db)
    # Read before the children: closed then, the block had recorded every child.
    was_open = JobRun.objects.using(db).filter(_OPEN, pk=parent.pk).exists()
    state = batch_status(parent)
    now = timezone.now()
    newer = JobRun.objects.using(db).filter(
        BATCH_PARENT, pk=parent.pk, progress_current__lte=state.done
    )
    values: dict[str, Any] = {"progress_current": state.done, "updated_at": now}
    if not was_open:
        values["progress_total"] = state.total
    newer.update(**values)
    parent.refresh_from_db(using=db)
    if was_open or not _is_batch_parent(parent):
        return state
    _follow(parent, state)  # ended before its last child did
    _settle(parent, state.status, state)
    return state


def settle_ended(*selections: QuerySet[JobRun]) -> None:
    """Refresh the batches' parents among the runs of ``selections`` still active though
    every child has ended: they end as their children add up.

    A child's end is committed a moment before its parent's refresh (the child's
    ``job_status_changed`` receiver): a kill in between found the batch running and
    ended it killed, or asked it to stop, when it had in fact ended. Settled first, such
    a parent is finished and the kill leaves it (the reaper settles the same window:
    ``retention._reap_stale()``). A parent's end may end the parent around it (a batch
    inside a batch) whose refresh waits for a transaction's commit, and which may be in
    another selection (a chunk of ids read before): every selection is read again until
    none has a parent not tried yet.
    """
    children = JobRun.objects.filter(parent=OuterRef("pk"))
    tried: set[Any] = set()

    def found() -> list[JobRun]:
        return [
            run
            for runs in selections
            for run in runs.filter(BATCH_PARENT, status__in=sorted(Status.ACTIVE))
            .filter(Exists(children))
            .exclude(Exists(children.filter(status__in=sorted(Status.ACTIVE))))
            .order_by()
            if run.pk not in tried
        ]

    # A parent refreshed but left active (an open batch() block) is not tried again.
    while parents := found():
        for run in parents:
            tried.add(run.pk)
            refresh_batch(run)


def request_kill_batch(parent: JobRun) -> int:
    """Ask the parent and the active runs under it to stop (through their integrations),
    down through the batches inside it (``request_kill()`` takes a batch's along); the
    number of the parent and its children newly asked (``in_batches``: those deeper)."""
    db = write_database(parent._state.db)
    runs = JobRun.objects.using(db).filter(pk=parent.pk) | JobRun.objects.using(
        db
    ).filter(parent_id=parent.pk)
    return runs.request_kill()


# Children recorded by the integrations.

_parent: ContextVar[JobRun | None] = ContextVar("django_jobstatus_batch", default=None)


@contextlib.contextmanager
def batch(name: str, *, using: str | None = None, **fields: Any) -> Iterator[JobRun]:
    """Record a queued parent run ``name``; runs the integrations record in the block are its children.

    For example, ``with batch("import.all"): for f in files: import_file.enqueue(f.pk)``.
    While the block runs, the parent has no total and its children cannot end it (a
    quick worker may end the first before the block enqueues the next). Leaving the
    block sets the total and refreshes the parent (children may all have run already);
    with no child it ends succeeded. An exception in the block ends the parent failed
    with it (killed with a JobKilled), and is re-raised; the children enqueued before it
    run on. ``sys.exit(0)`` and ``sys.exit()`` leave it as a success, as ``track()``
    records them. Inside a transaction the block ends at its commit (``_end()``).
    """
    # Inside another batch() block, one of its children: that batch ends with this one.
    fields.setdefault("parent", current_parent())
    db = using or settings.DATABASE
    parent = JobRun.objects.db_manager(db).enqueue(name, progress_total=None, **fields)
    _blocks[parent] = _Block(uncommitted=_in_open_transaction(db))
    hooks = _hooks()
    previous = replace_parent(parent)
    try:
        yield parent
    except SystemExit as exit_:
        # sys.exit(0) and sys.exit() are a success, for Python and for cron.
        _end_raised(parent, hooks, None if exit_.code in (0, None) else exit_)
        raise
    except BaseException as error:
        _end_raised(parent, hooks, error)
        raise
    else:
        _end(parent, hooks)
    finally:
        _leave(parent, previous)


def _end_raised(
    parent: JobRun, hooks: dict[str, int], error: BaseException | None
) -> None:
    """``_end()`` for a block that raised ``error`` (None: a success, ``sys.exit(0)``)."""
    try:
        _end(parent, hooks, error)
    except Exception:
        # The block's own error matters more (the database may be why it raised).
        logger.exception("Could not record the failure of batch %s.", parent.pk)


def _leave(parent: JobRun, previous: JobRun | None) -> None:
    """Make ``previous`` the parent of the runs recorded from now on, where ``parent``
    still is (as ``JobHandle.deactivate()`` does for ``current_job()``).

    A block in a generator advanced through ``asyncio.to_thread()`` ends in another
    context than it began, where resetting a token raises ValueError: the block did not
    end, and its parent stayed queued until the reaper killed it.
    """
    if _parent.get() is parent:
        _parent.set(previous)


@dataclass
class _Block:
    """What this process keeps of a ``batch()`` parent until its block is closed."""

    # Created in a transaction that the connection the integrations record through
    # cannot see: children recorded there are written without it, and adopted at the close.
    uncommitted: bool
    adoptions: list[tuple[str, str]] = field(default_factory=list)
    kill_read_at: float = field(default_factory=time.monotonic)


# Weak: a parent whose transaction rolled back, its close dropped, leaves nothing behind.
_blocks: weakref.WeakKeyDictionary[JobRun, _Block] = weakref.WeakKeyDictionary()

# How often, at most, an open block reads whether its batch was asked to stop (seconds).
_KILL_READ_INTERVAL = 1.0


def _in_open_transaction(db: str) -> bool:
    """Whether a run created through ``db`` now is in a transaction that the connection
    the integrations record through cannot see (``tracking_database()``)."""
    return bool(connections[db].in_atomic_block) and tracking_database() != db


def _hooks() -> dict[str, int]:
    """How many on-commit callbacks each connection in a transaction holds now."""
    return {
        connection.alias: len(connection.run_on_commit)
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block
    }


def _end(
    parent: JobRun, hooks: dict[str, int], error: BaseException | None = None
) -> None:
    """Close ``parent``'s block now, or when the transactions it ran in have committed.

    The callbacks the block left for a commit (django-rq's push, Celery's
    ``delay_on_commit()``, ``transaction.on_commit(lambda: task.delay())``) record their
    runs then, as children of ``parent``; the close comes after them, and after the
    commit of the parent's own transaction when the children cannot see it. Each keeps
    its savepoints: a savepoint rolled back drops it still, and a rollback of the
    parent's transaction takes the parent with it.
    """
    block = _blocks.get(parent)
    waiting = set()
    for alias, count in hooks.items():
        # Django's (savepoint ids, func, robust), the same in 5.2 and 6.x.
        callbacks: list[Any] = connections[alias].run_on_commit
        left = callbacks[count:]
        callbacks[count:] = [
            (savepoints, _as_child(parent, func), robust)
            for savepoints, func, robust in left
        ]
        if left or (alias == parent._state.db and block and block.uncommitted):
            waiting.add(alias)
    if not waiting or (error is not None and parent._state.db not in waiting):
        # A block that raised, its parent where every process sees it: it ends now, as
        # the transaction around it may roll back; children pushed at a commit that
        # comes are its own all the same, and counted as they move.
        _close(parent, error)
        return

    def committed(alias: str) -> Callable[[], None]:
        def close_once_all_committed() -> None:  # a name for Django's log of a failure
            waiting.discard(alias)
            if not waiting:
                _close(parent, error)

        return close_once_all_committed

    for alias in list(waiting):
        # Robust: a close that fails is logged, and the app's callbacks after it still run.
        transaction.on_commit(committed(alias), using=alias, robust=True)


def _as_child(parent: JobRun, func: Callable[[], Any]) -> Callable[[], None]:
    @functools.wraps(func)
    def run() -> None:
        try:
            with within(parent):
                func()
        except BaseException as error:
            # Django drops the callbacks after one that raised, the block's close too:
            # the batch ends failed with the error (a push the broker refused, say).
            if parent in _blocks:
                try:
                    _close(parent, error)
                except Exception:
                    logger.exception(
                        "Could not record the failure of batch %s.", parent.pk
                    )
            raise

    return run


def child_of(alias: str | None, fields: dict[str, Any]) -> JobRun | None:
    """A child recorded through ``alias`` (None: the write-behind writer's connection):
    when its ``fields`` name a parent that connection cannot see yet (created in the
    caller's open transaction, the children through a connection of their own), take it
    out and return it, for ``adopt()``. The foreign key would fail, and the child would
    not be recorded at all."""
    parent = fields.get("parent")
    if not isinstance(parent, JobRun):
        return None
    block = _blocks.get(parent)
    committed = not connections[write_database(parent._state.db)].in_atomic_block
    if block is None or not block.uncommitted or alias == parent._state.db or committed:
        return None
    fields["parent"] = None
    return parent


def adopt(parent: JobRun | None, source: str, backend_job_id: str) -> None:
    """Make the run of ``source``'s job ``backend_job_id`` a child of ``parent`` (from
    ``child_of()``) when its block is closed, after the commit. By the job, not the run's
    id: a worker may have recorded the run first, and the queued one merged into it."""
    block = _blocks.get(parent) if parent is not None else None
    if block is not None:
        block.adoptions.append((source, backend_job_id))


def _adopt(parent: JobRun, adoptions: Iterable[tuple[str, str]]) -> None:
    jobs: dict[str, list[str]] = {}
    for source, backend_job_id in adoptions:
        jobs.setdefault(source, []).append(backend_job_id)
    runs = JobRun.objects.using(write_database(parent._state.db))
    adopted: dict[str, Any] = {"parent": parent.pk}
    if parent.owner_id is not None:
        # Its owner's too, as a child recorded under it at once is (``inherit_owner()``).
        adopted["owner"] = Coalesce(F("owner"), Value(parent.owner_id))
    for source, ids in jobs.items():
        runs.filter(source=source, backend_job_id__in=ids, parent__isnull=True).update(
            **adopted
        )


def _stop_late_children(parent: JobRun) -> bool:
    """If the batch was asked to stop, ask its active children not asked yet, and say so:
    killed while its block still enqueued, those recorded since would run unasked."""
    runs = JobRun.objects.using(write_database(parent._state.db))
    if not runs.filter(pk=parent.pk).kill_requested().exists():
        return False
    runs.filter(parent_id=parent.pk).active().not_kill_requested().request_kill()
    return True


def _close(parent: JobRun, error: BaseException | None = None) -> None:
    """End ``parent``'s block: adopt its children recorded elsewhere, set its total, then
    end it failed with ``error``, killed with a JobKilled or when the batch was asked to
    stop, or as its children add up (succeeded with none)."""
    if parent not in _blocks:
        return  # closed already (a callback that failed at the commit closed it)
    block = _blocks.pop(parent)
    if block.adoptions:
        _adopt(parent, block.adoptions)
        refresh_batch(parent)  # its progress: they may have ended, unseen by it
    if _stop_late_children(parent) and error is None:
        error = JobKilled(run_id=parent.pk)
    db = write_database(parent._state.db)
    state = batch_status(parent)
    JobRun.objects.using(db).filter(pk=parent.pk, progress_total__isnull=True).update(
        progress_total=state.total
    )
    parent.refresh_from_db(using=db)
    if error is None and state.total:
        refresh_batch(parent)
        return
    if error is None:
        target = Status.SUCCEEDED
    elif kills_in(error):  # the job that ran the block was asked to stop (kills_in())
        target, error = Status.KILLED, None
    else:
        target = Status.FAILED
    _settle(parent, target, state, error)


def current_parent() -> JobRun | None:
    """The parent that runs recorded now belong to (inside ``batch()``), or None.

    Called as each run is recorded: at most every ``_KILL_READ_INTERVAL``, an open block
    asks the children recorded since its batch was asked to stop (``_close()`` asks the
    last ones).
    """
    parent = _parent.get()
    if parent is None:
        return None
    block = _blocks.get(parent)
    if (
        block is not None
        and time.monotonic() - block.kill_read_at >= _KILL_READ_INTERVAL
    ):
        block.kill_read_at = time.monotonic()
        _stop_late_children(parent)
    return parent


def replace_parent(parent: JobRun | None) -> JobRun | None:
    """Make ``parent`` (None: no batch) the parent of the runs recorded from now on in this
    context; the one it replaces, for the caller to put back.

    For a job whose start and end are two signals of its task system, not one block:
    Django's ImmediateBackend runs a task inside ``enqueue()``, so inside the
    ``batch()`` block that enqueued it. What the task enqueues in turn is no child of
    that batch, as with a worker.
    """
    previous = _parent.get()
    _parent.set(parent)
    return previous


@contextlib.contextmanager
def within(parent: JobRun) -> Iterator[None]:
    """Runs recorded in the block are children of ``parent``: a job that ``batch()``'s block
    enqueued and its task system pushes later (at the commit)."""
    previous = replace_parent(parent)
    try:
        yield
    finally:
        _leave(parent, previous)


# Following the children automatically.


def _child_changed(sender: Any, *, run: JobRun, **kwargs: Any) -> None:
    if run.parent_id is None:
        return
    try:
        parent = (
            JobRun.objects.using(write_database(run._state.db))
            .filter(BATCH_PARENT, pk=run.parent_id)
            .first()
        )
        if parent is not None:  # not a run a worker runs
            refresh_batch(parent)
    except Exception:
        logger.exception(
            "Could not refresh batch %s after its child %s changed.",
            run.parent_id,
            run.pk,
        )


def connect() -> None:
    """Refresh a parent whenever one of its children changes status (idempotent)."""
    job_status_changed.connect(
        _child_changed,
        sender=JobRun,
        weak=False,
        dispatch_uid=f"{__name__}.child_changed",
    )


def disconnect() -> None:
    job_status_changed.disconnect(
        _child_changed, sender=JobRun, dispatch_uid=f"{__name__}.child_changed"
    )
