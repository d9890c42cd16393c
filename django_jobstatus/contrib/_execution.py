"""What the Celery and RQ integrations share: find a task's run, record it queued, and one execution of it.

Runs are keyed on ``(source, backend_job_id)``. Writes outside the task's own execution
are best-effort (logged, never raised); the end of an execution is durable (retried
while the database is away, see ``contrib.durably``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from contextvars import Token
from logging import WARNING, getLogger
from typing import Any

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import F, Subquery, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_jobstatus import batches, contrib, statements, writebehind
from django_jobstatus.clock import database_now
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobRun, Status, uuid7
from django_jobstatus.tracking import (
    JobHandle,
    _reset_connection,
    tracking_database,
    while_database_away,
)
from django_jobstatus.values import exception_text, storable

logger = getLogger(__name__)


def find_run(
    source: str, backend_job_id: str, using: str | None = None
) -> JobRun | None:
    """The newest run recorded for the task system's job ``backend_job_id``."""
    alias = using or tracking_database()
    return (
        JobRun.objects.using(alias)
        .filter(source=source, backend_job_id=backend_job_id)
        .order_by("-created_at")
        .first()
    )


def find_or_enqueue(
    source: str, backend_job_id: str, name: str | None, alias: str
) -> JobRun | None:
    """In a transaction: the newest run of the job, recorded as queued now if the job has none and ``name`` is known.

    For what the task system reports of a job that no worker started (refused, revoked):
    its queued run may still be on its way (written behind the enqueue), so the job's
    advisory lock is taken first; a queued run that comes after this one then only adds
    its queued time (``writebehind``).
    """
    statements.lock_jobs(alias, [(source, backend_job_id)])
    run = find_run(source, backend_job_id, alias)
    if run is None and name:
        run = JobRun.objects.db_manager(alias).enqueue(
            name, source=source, backend_job_id=backend_job_id
        )
    return run


def best_effort(
    action: Callable[[str], None],
    what: str,
    *,
    one_statement: bool = False,
    database: str | None = None,
) -> None:
    """Run one write (given the database alias); log a database error or an illegal move, and go on.

    The write is a transaction of its own (a savepoint inside the caller's) that holds
    the write lock from its first statement (``statements.write_transaction()``), except
    ``one_statement`` outside a transaction: that one statement is atomic by itself.
    A connection the server dropped (a restart, a network blip) is replaced and the write
    tried once more, since long-lived processes such as a worker's main process have
    nothing else that would close it.
    """

    def write(alias: str) -> None:
        with (
            contextlib.nullcontext()
            if one_statement and not connections[alias].in_atomic_block
            else statements.write_transaction(alias)
        ):
            action(alias)

    # ``database``: the connection of a caller that holds the run's row (a kill in an
    # ATOMIC_REQUESTS request): a second one waited on that lock, and gave up.
    where = tracking_database if database is None else lambda: database
    # Inside a transaction the connection cannot be replaced: one try.
    attempts = 1 if connections[where()].in_atomic_block else 2
    try:
        while_database_away(write, attempts=attempts, delay=0, database=where)
    except InvalidTransition as error:
        # Duplicate or late events (Celery's task_revoked fires twice; a retry raced a new attempt).
        logger.debug("%s not recorded: %s", what, error)
    except DatabaseError:  # the database is away still, or refused the write
        logger.warning("Could not record %s; the task goes on.", what, exc_info=True)
        _reset_connection(where())


def record_queued(
    source: str,
    backend_job_id: str,
    name: str,
    *,
    fresh: bool = False,
    again: Collection[str] = (),
    **fields: Any,
) -> Any:
    """Record the run as queued; the id of the run it created, or None.

    ``fresh``: the task system just made ``backend_job_id`` for a new job, so no run has
    it yet: the run is one INSERT, with no SELECT before it, and on PostgreSQL outside a
    transaction it is written behind the caller (``writebehind``; the id is returned at
    once). Otherwise an upsert: created if new, retrying → queued, otherwise left alone.
    A running run stays running: Celery and RQ enqueue a retry while the failed attempt
    is still executing, and running → queued is no legal move (its ``due_at`` is written,
    for a retry scheduled for later). Enqueued inside ``batch()``, a new run is a child of
    that batch's parent. ``again``: the statuses of a finished run after which the task
    system runs the job again under its id (RQ's requeue, an enqueue under an explicit
    id): a newest run that ended so is followed by a new one.
    """
    fields.setdefault("parent", batches.current_parent())
    if fresh:
        alias = tracking_database()
        if writebehind.accepts(alias):
            later = batches.child_of(None, fields)  # the writer's own connection
            values = JobRun.objects.db_manager(alias).queued_values(
                name, source=source, backend_job_id=backend_job_id, **fields
            )
            values["id"] = uuid7()
            if writebehind.writer.put(settings.DATABASE, values):
                batches.adopt(later, source, backend_job_id)
                return values["id"]
            fields["parent"] = later or fields["parent"]
    created: list[Any] = []

    def record(alias: str) -> None:
        if not fresh:
            run = find_run(source, backend_job_id, alias)
            if run is not None and run.status not in again:
                due = {"due_at": fields["due_at"]} if fields.get("due_at") else {}
                if run.status == Status.RETRYING:
                    run.mark_queued(using=alias, **due)
                elif due and run.is_active:
                    # A retry sent while its attempt still runs: due later, not lost then.
                    JobRun.objects.using(alias).filter(pk=run.pk).update(**due)
                return
        mine = dict(fields)
        later = batches.child_of(alias, mine)
        run = JobRun.objects.db_manager(alias).enqueue(
            name, source=source, backend_job_id=backend_job_id, **mine
        )
        batches.adopt(later, source, backend_job_id)
        created.append(run.pk)

    best_effort(
        record,
        f"the enqueueing of {source} job {backend_job_id}",
        one_statement=fresh,
    )
    return created[0] if created else None


def forget_queued(pk: Any, source: str, backend_job_id: str) -> None:
    """Delete the queued run ``pk``: its job never reached the task system (the push failed).

    Nothing was enqueued, so no run is left waiting for a worker; the caller gets the
    task system's error.
    """

    if writebehind.writer.discard(pk):
        return  # never written

    def forget(alias: str) -> None:
        JobRun.objects.using(alias).filter(pk=pk).queued().delete()

    best_effort(forget, f"the failed enqueueing of {source} job {backend_job_id}")


def _late_retry(run: JobRun, error: str, alias: str) -> None:
    """Record the retry of ``run``'s attempt after the next attempt started (e.g. on another
    worker, before Celery's ``task_retry`` of this one): into this attempt's entry in
    ``attempts``, which the start closed as ``restarted`` (``mark_running()``) with no error."""
    with statements.write_transaction(alias):
        current = JobRun.objects.using(alias).select_for_update().filter(pk=run.pk)
        found = current.values_list("attempts", flat=True).first()
        attempts = [dict(entry) for entry in found or []]
        for entry in attempts:
            if (
                entry.get("attempt") == run.attempt
                and entry.get("status") == "restarted"
            ):
                entry["status"] = Status.RETRYING.value
                entry["error"] = storable({"error": error})["error"]
                current.update(attempts=attempts, updated_at=timezone.now())
                return


_TAKEN_WHEN_KILLED = _(
    "Worker %(worker)s took this task after its run had ended killed: the task is "
    "refused, or stops at its first progress call or check_kill()."
)


class Execution:
    """One execution of a task in this process: its run, and the handle ``current_job()`` returns."""

    def __init__(
        self,
        source: str,
        backend_job_id: str,
        name: str,
        *,
        worker: str,
        attempt: int = 1,
        **fields: Any,
    ) -> None:
        self.source = source
        self.backend_job_id = backend_job_id
        self.name = name
        # Written raw by the start's UPDATE: cut to its column, as storable() cuts it.
        self.worker: str = storable({"worker": worker})["worker"]
        self.attempt = attempt
        self.fields = fields
        self.handle: JobHandle | None = None
        self.token: Token[JobHandle | None] | None = None
        self.recorded = False
        self.created = False  # whether record_start() made a new run (none was waiting)
        self.ended = False
        self.killed_before_start = False

    def __repr__(self) -> str:
        return f"<Execution {self.source} {self.backend_job_id}>"

    def record_start(self) -> JobRun:
        """Upsert the run as running: queued/retrying → running, running → a restart, else a new run.

        The common case, the task's run waiting queued, is one statement.

        A run killed while it waited stays killed (the kill reached the task system too
        late, e.g. a worker took the job as it was canceled): ``killed_before_start`` is
        then True, and the integration refuses to run the job where it can.
        """
        writebehind.catch_up()  # a queued run this process handed to its writer
        alias = tracking_database()
        run = self._start_queued(alias)
        if run is not None:
            self.recorded = True
            return run
        with statements.write_transaction(alias):
            # The task's queued run may be on its way (written behind its enqueue): wait
            # for it, and make a writer that comes later find this run (writebehind.py).
            statements.lock_jobs(alias, [(self.source, self.backend_job_id)])
            run = find_run(self.source, self.backend_job_id, alias)
            if run is not None and run.status == Status.KILLED:
                self.killed_before_start = True
                # The record says what happened: a worker took it all the same (Celery's
                # revoke reaches only the workers up when it is sent).
                run.log(WARNING, _TAKEN_WHEN_KILLED % {"worker": self.worker})
            elif run is None or run.is_finished:
                fields = dict(self.fields)
                later = batches.child_of(alias, fields)
                run = JobRun.objects.db_manager(alias).start(
                    self.name,
                    source=self.source,
                    backend_job_id=self.backend_job_id,
                    worker=self.worker,
                    attempt=self.attempt,
                    **fields,
                )
                batches.adopt(later, self.source, self.backend_job_id)
                self.created = True
            else:
                run.mark_running(worker=self.worker, using=alias)
                if run.attempt < self.attempt:  # its earlier attempts were not recorded
                    JobRun.objects.using(alias).filter(pk=run.pk).update(
                        attempt=self.attempt
                    )
                    run.attempt = self.attempt
        self.recorded = True
        return run

    def _start_queued(self, alias: str) -> JobRun | None:
        """queued → running in one UPDATE … RETURNING when the task's newest run is queued; else None.

        The same conditional move as ``mark_running()``, without the SELECT that finds the
        run first: the row comes back from the UPDATE itself.
        """
        connection = connections[alias]
        now = timezone.now()
        savepoint = (
            transaction.atomic(using=alias)
            if connection.in_atomic_block
            else contextlib.nullcontext()
        )
        if statements.usable(alias):
            # SQL text made once: the ORM's compiling cost more than the statement (issue 12).
            with savepoint:
                run = statements.start_queued(
                    alias,
                    self.source,
                    self.backend_job_id,
                    worker=self.worker,
                    attempt=self.attempt,
                    now=now,
                )
            if run is not None:
                run._announce(Status.QUEUED, Status.RUNNING, alias)
            return run
        runs = JobRun.objects.using(alias)
        newest = (
            runs.filter(source=self.source, backend_job_id=self.backend_job_id)
            .order_by("-created_at")
            .values("pk")[:1]
        )
        with savepoint:
            started = (
                runs.filter(pk=Subquery(newest))
                .still(Status.QUEUED)
                .update_returning(
                    status=Status.RUNNING,
                    worker=self.worker,
                    # As mark_running(): the attempt starts with no error of an earlier one.
                    error="",
                    traceback="",
                    started_at=Coalesce(F("started_at"), Value(now)),
                    heartbeat_at=database_now(now),
                    updated_at=now,
                    attempt=Greatest(F("attempt"), Value(self.attempt)),
                )
            )
        if started is None:
            return None  # no RETURNING (SQLite before 3.35): the general path
        if not started:
            return None
        run = started[0]
        run._announce(Status.QUEUED, Status.RUNNING, alias)
        return run

    def start(self) -> JobHandle:
        """Record the start (or, with the database away, try again at the end); activate the handle."""
        try:
            # A connection the server dropped while the worker idled: once more, anew.
            run = while_database_away(
                lambda alias: self.record_start(), attempts=2, delay=0
            )
        except (DatabaseError, InvalidTransition):
            logger.warning(
                "Could not record the start of %s job %s; trying again when it ends.",
                self.source,
                self.backend_job_id,
                exc_info=True,
            )
            _reset_connection(tracking_database())
            # An unsaved run, so that current_job() works inside the task all the same.
            run = JobRun(
                job_name=self.name,
                status=Status.RUNNING,
                source=self.source,
                backend_job_id=self.backend_job_id,
                worker=self.worker,
                attempt=self.attempt,
            )
        self.handle = JobHandle(run)
        self.token = self.handle.activate()
        return self.handle

    def recorded_handle(self) -> JobHandle | None:
        """The handle, once its run is in the database (recording the start now if needed, durably)."""
        handle = self.handle
        if handle is None:
            return None
        if not self.recorded:
            run = contrib.durably(
                self.record_start,
                f"the start of {self.source} job {self.backend_job_id}",
            )
            if run is None:
                return None
            self.adopt(run)
        return handle

    def adopt(self, run: JobRun) -> None:
        """Carry on with ``run``, recorded elsewhere (e.g. by the process that forked this one)."""
        self.recorded = True
        if self.handle is not None:
            self.handle.run = run
            for entry in self.handle._logs:  # written so far against the unsaved run
                entry.run_id = run.pk

    def end(
        self, exc: BaseException | None = None, result: Any = None, **values: Any
    ) -> None:
        """Record the end: succeeded (with ``result``), killed (JobKilled) or failed; durable."""
        self.ended = True
        handle = self.recorded_handle()
        if handle is None:
            return
        if exc is None and handle.result is None:
            handle.result = contrib.jsonable(result)
        handle.finish(exc, **values)

    def retrying(self, exc: BaseException | None = None, **fields: Any) -> None:
        """Record that this attempt failed and another one is scheduled; durable."""
        self.ended = True
        handle = self.recorded_handle()
        if handle is None:
            return
        handle.flush()
        # What the flush could not write (the database away) goes with the retry, in its
        # transaction, as an end writes its lines: no write of this handle comes after.
        with handle._lock:
            logs, handle._logs = handle._logs, []

        def mark(*, apart: bool = False) -> bool:
            run = handle.run
            alias = tracking_database()
            try:
                handle._write_logs_then(
                    alias,
                    logs,
                    lambda: run.mark_failed(exc, retry=True, using=alias, **fields),
                    apart=apart,
                )
            except (OperationalError, InterfaceError):
                raise  # the database away: durably() tries again
            except DatabaseError:
                if apart:
                    raise
                # A line the database refused: the retry with the others, as an end does.
                logger.warning(
                    "Could not record the retry of %s job %s with its log lines; writing them one by one.",
                    self.source,
                    self.backend_job_id,
                    exc_info=True,
                )
                return mark(apart=True)
            except InvalidTransition as error:  # e.g. a newer attempt started already
                logger.debug(
                    "The retry of %s job %s came late: %s",
                    self.source,
                    self.backend_job_id,
                    error,
                )
                text = exception_text(exc) if exc is not None else ""
                handle._write_logs_then(
                    alias,
                    logs,
                    lambda: _late_retry(run, fields.get("error") or text, alias),
                )
            return True

        if not contrib.durably(
            mark, f"the retry of {self.source} job {self.backend_job_id}"
        ):
            handle._put_back({}, logs)

    def close(self) -> None:
        """Make ``current_job()`` return what it did before ``start()``."""
        if self.handle is not None and self.token is not None:
            with contextlib.suppress(ValueError):  # reset from another context
                self.handle.deactivate(self.token)
            self.token = None
