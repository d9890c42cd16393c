"""The handle a running job holds: ``track()``, ``tracked()`` and ``current_job()``.

Writes are throttled to one per ``PROGRESS_INTERVAL``; progress, heartbeat and log
writes are best-effort (a failure is logged and retried at the next write), while the
start and the end of a run are durable. Each progress write also reads the kill request,
in the same statement, so every progress call stops a job that was asked to stop; a write
refused because the run ended elsewhere (killed by force, reaped) is the handle's last.
When the job's own connection is inside ``transaction.atomic()``, the handle writes
through a second connection so that other processes see the progress at once and a
rollback does not take the run with it. A handle may be used from several threads of its
job: a lock guards its buffer and progress, and one write runs at a time. Used on an event
loop's thread (an ``async def`` task), where Django refuses queries, a handle writes
through a thread of the app's own while the caller waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import inspect
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar, Token
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from django.core.exceptions import ObjectDoesNotExist
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.transaction import TransactionManagementError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_jobstatus import own_connections
from django_jobstatus.clock import database_now
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition, JobKilled
from django_jobstatus.heartbeats import heartbeats
from django_jobstatus.states import Status
from django_jobstatus.values import (
    BIGINT_MAX,
    check_amount,
    check_job_name,
    check_json,
    check_progress,
    storable,
)

if TYPE_CHECKING:
    from django_jobstatus.models import JobLog, JobRun

# JobRun and JobLog are imported where they are used: a LOGGING handler
# (contrib.logging) imports this module before the app registry is ready.

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_current: ContextVar[JobHandle | None] = ContextVar(
    "django_jobstatus_current_job", default=None
)
# True while this context runs a handle's own write (a flush, the end of a run): the
# logging handler (contrib.logging) leaves out the SQL logging of those writes, their
# BEGIN and COMMIT included, which no pattern of their SQL text could tell apart.
_handle_writing: ContextVar[bool] = ContextVar(
    "django_jobstatus_handle_writing", default=False
)

# The connection an end written later (``_end_later()``) goes through, with the thread
# writing it (its alias may exist in that thread only: the heartbeat thread's own).
_end_database: ContextVar[tuple[int, str] | None] = ContextVar(
    "django_jobstatus_end_database", default=None
)

SIDE_SUFFIX = "__jobstatus"
# The most a handle hands to another process (``JobHandle.unwritten()``), in JSON characters.
HANDOVER_MAX_CHARS = 64 * 1024
# The most log lines a handle holds that it cannot write (the database away, the run ended
# elsewhere); it keeps the newest.
LOG_BUFFER_MAX = 10_000
# The line on a run that ended elsewhere while its job went on to an end of its own.
_WENT_ON = gettext_lazy(
    "The job went on after its run had ended %(status)s, and ended %(outcome)s "
    "(attempt %(attempt)s); the run stays %(status)s."
)


def in_handle_write() -> bool:
    """Whether this context is running a write of a JobHandle's own (a flush, an end)."""
    return _handle_writing.get()


@contextlib.contextmanager
def _handle_write() -> Iterator[None]:
    """Mark this context as running a write of a handle's own (see ``in_handle_write()``);
    also a decorator."""
    token = _handle_writing.set(True)
    try:
        yield
    finally:
        _handle_writing.reset(token)


def tracking_database() -> str:
    """The alias to write a running job's state through, right now.

    The app's database itself, unless its connection in this thread is inside an
    atomic block: then a second connection to the same database (autocommit), so the
    writes are visible at once and survive a rollback. SQLite allows one writer at a
    time, so there the writes join the open transaction instead; so do they inside a
    TestCase, whose transaction a second connection could not see. A worker process
    (``own_connections.track_through_own()``) writes through a connection of its own,
    kept open across tasks. While an end written later is written (``_end_later()``),
    the connection it goes through, as a line logged while an end written at once is
    written goes through that end's.
    """
    ending = _end_database.get()
    # A receiver of job_status_changed logging a line of the run: in the heartbeat
    # thread, the app's database would be a connection it opens and never closes.
    if (
        ending is not None
        and ending[0] == threading.get_ident()
        and not connections[ending[1]].in_atomic_block
    ):
        return ending[1]
    alias: str = settings.DATABASE
    connection = connections[alias]
    if connection.in_atomic_block and (
        connection.vendor == "sqlite"
        # Inside Django's TestCase everything stays in the test's transaction, as on_commit does.
        or any(getattr(b, "_from_testcase", False) for b in connection.atomic_blocks)
    ):
        return alias
    if own_connections.tracks_through_own() or _in_async_writer():
        # A worker: a connection kept open across tasks (Celery closes the others around
        # each). The async writer: the job's transaction, if any, is another thread's.
        return own_connections.own(alias, own_connections.TRACKING)
    if not connection.in_atomic_block:
        return alias
    side = alias + SIDE_SUFFIX
    if side not in connections.settings:
        # Never waits for ever on a row the job's own transaction holds.
        connections.settings[side] = own_connections.side_settings(alias)
    return side


def caller_holds(alias: str, pk: Any) -> bool:
    """Whether the caller's open transaction holds the row of run ``pk``, which a write
    through ``alias`` (a second connection) would wait on until that transaction ends.

    PostgreSQL only, and only inside an atomic block that has written or locked something
    (it has a transaction id): then the row is tried without waiting, through ``alias``
    and, in a savepoint rolled back at once, through the caller's connection. Locked for
    the first and free for the second, it is the caller's. A job that locks or updates its
    own run in its transaction (``select_for_update()``, a queue's claim) would otherwise
    wait on itself: a lock timeout on each write, and its end never written. A broken
    transaction (an error, ``set_rollback()``) takes no query, and holds its locks until
    it is rolled back: a row locked for ``alias`` is then taken as its. A connection with
    no transaction begun yet takes no query either. Never raises.
    """
    own: str = settings.DATABASE
    connection = connections[own]
    if (
        alias == own
        or connection.vendor != "postgresql"
        or not connection.in_atomic_block
    ):
        return False
    status = _transaction_status(connection)
    if status not in (_IN_TRANSACTION, _IN_ERROR):
        # No statement yet (the driver begins at the first), or no connection: it holds
        # nothing, and a probe would begin a transaction on it (one that an outage
        # then breaks, and the job's commit with it).
        return False
    try:
        broken = connection.needs_rollback or status == _IN_ERROR
        if not broken:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
                    )
                    if not cursor.fetchone()[0]:
                        return False
            except DatabaseError:  # the connection lost
                broken = True
        return _locked(alias, pk) and (broken or not _locked(own, pk))
    except (DatabaseError, TransactionManagementError):
        return False


# The driver's transaction status (psycopg 2 and 3 number them alike).
_IN_TRANSACTION, _IN_ERROR = 2, 3


def _transaction_status(connection: Any) -> int | None:
    """The transaction status of ``connection``'s driver connection (None without one)."""
    raw = connection.connection
    if raw is None:
        return None
    info = getattr(raw, "info", None)  # psycopg 3
    try:
        return int(
            info.transaction_status
            if info is not None
            else raw.get_transaction_status()
        )
    except Exception:  # a closed connection, another driver
        return None


def _locked(alias: str, pk: Any) -> bool:
    """Whether another transaction than ``alias``'s holds the row of run ``pk`` (tried
    with NOWAIT, in a transaction or savepoint rolled back at once)."""
    from django_jobstatus.models import JobRun

    rows = JobRun.objects.using(alias).filter(pk=pk)
    try:
        with transaction.atomic(using=alias):
            list(rows.select_for_update(nowait=True, no_key=True).values("pk"))
            transaction.set_rollback(True, using=alias)
    except OperationalError:  # LockNotAvailable (or the database away)
        return True
    return False


def _row_free(alias: str, run: JobRun) -> bool | None:
    """Whether ``run``'s row can be written through ``alias`` without waiting; None when
    it is gone."""
    from django_jobstatus.models import JobRun

    rows = JobRun.objects.using(alias).filter(pk=run.pk)
    with transaction.atomic(using=alias):
        if list(rows.select_for_update(skip_locked=True, no_key=True).values("pk")):
            return True
    return False if rows.exists() else None


def _held_for_async_writer(alias: str, run: JobRun) -> bool:
    """In the async writer's thread, on PostgreSQL: whether a transaction holds ``run``'s
    row (tried without waiting). Never raises.

    ``caller_holds()`` reads the transaction of the thread it runs in: the writer's, not
    the job's. A job that locks its own run in its transaction (``select_for_update()``)
    and reports from async code had each write wait on that lock until the lock timeout,
    and its event loop with it. Whoever holds the row, the progress waits for the next
    write, as it does for the job's own lock.
    """
    if not _in_async_writer() or connections[alias].vendor != "postgresql":
        return False
    try:
        return _row_free(alias, run) is False
    except DatabaseError:
        return False  # the write tries, and logs what fails


def _write_progress(
    alias: str, run: JobRun, fields: dict[str, Any]
) -> tuple[bool, datetime | None, str] | None:
    """Write ``fields`` on ``run`` while it is running at its attempt, and read its kill request.

    Returns whether the write applied, the run's ``kill_requested_at`` and its status;
    None when the run is not in the database. One ``UPDATE … RETURNING`` statement where
    the database has it (PostgreSQL, SQLite ≥ 3.35); a refused write reads the row once.
    """
    from django_jobstatus.models import JobRun

    rows = JobRun.objects.using(alias).filter(pk=run.pk)
    mine = rows.still(Status.RUNNING, run.attempt)
    written = mine.update_returning(("kill_requested_at",), **fields)
    if written:
        return True, written[0].kill_requested_at, Status.RUNNING
    if written is None and mine.update(**fields):
        return (
            True,
            rows.values_list("kill_requested_at", flat=True).get(),
            Status.RUNNING,
        )
    current = rows.values_list("kill_requested_at", "status").first()
    return None if current is None else (False, *current)


def _reset_connection(alias: str, error: BaseException | None = None) -> None:
    """After a database error outside a transaction, drop the connection if it is unusable,
    so the next write reconnects.

    Only after an OperationalError or InterfaceError (any error when ``error`` is not
    given), and only when the connection no longer answers: a usable connection may be the
    job's own, with its server-side cursors open on it.
    """
    if error is not None and not isinstance(error, (OperationalError, InterfaceError)):
        return
    connection = connections[alias]
    if connection.in_atomic_block or connection.connection is None:
        return
    with contextlib.suppress(Exception):
        if not connection.is_usable():
            connection.close()


# The thread that writes for handles used on an event loop's thread (an ``async def``
# task), where Django refuses queries: started on first use, one per process (a forked
# child starts without it). It writes through a connection of its own, closed once no
# run of the process is active.
_async_writer: _AsyncWriter | None = None
_async_writer_lock = threading.Lock()
_async_writer_local = threading.local()  # ``on`` in the writer's thread


class _AsyncWriter:
    """A daemon thread that runs the actions handed to it, one at a time, in order.

    Not a ThreadPoolExecutor: concurrent.futures refuses new work once the main thread
    has ended, while a job in another thread may still run on its event loop, and a
    refused write was raised into that job. A daemon never holds up the exit; a write in
    progress does, as the job's thread waits for it.
    """

    def __init__(self) -> None:
        self._actions: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="jobstatus-async", daemon=True).start()

    def submit(self, action: Callable[[], R]) -> Future[R]:
        future: Future[R] = Future()
        self._actions.put((action, future))
        return future

    def _run(self) -> None:
        _async_writer_local.on = True
        while True:
            action, future = self._actions.get()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(action())
            except BaseException as error:  # the waiting thread's to raise
                future.set_exception(error)


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (Django refuses queries there)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_async_writer() -> bool:
    return bool(getattr(_async_writer_local, "on", False))


def _off_the_loop(action: Callable[[], R]) -> R:
    """``action()`` on the async writer's thread, in a copy of this context; this thread
    (and its event loop) waits for it, and gets its value or its exception."""
    global _async_writer
    with _async_writer_lock:
        if _async_writer is None:
            _async_writer = _AsyncWriter()
        writer = _async_writer
    return writer.submit(
        functools.partial(contextvars.copy_context().run, action)
    ).result()


def _close_async_writer_connections() -> None:
    """In the async writer's thread: close its connections (they open again when used)."""
    own_connections.close(own_connections.TRACKING)
    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):
            connection.close()


def _forget_async_writer() -> None:
    """In a forked child: no writer (its thread did not survive the fork), no lock held."""
    global _async_writer, _async_writer_lock
    _async_writer = None
    _async_writer_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_async_writer)


# Longest pause between two tries of a write while the database is away, in seconds.
MAX_RETRY_DELAY = 5.0


def while_database_away(
    action: Callable[[str], R],
    *,
    timeout: float | None = None,
    attempts: int | None = None,
    delay: float = 0.1,
    database: Callable[[], str] = tracking_database,
) -> R:
    """``action(alias)`` on the tracking database, tried again while the database is away.

    On OperationalError or InterfaceError an unusable connection is dropped (the next try
    connects anew, through ``database()`` again) and the action is tried again
    after ``delay`` seconds, doubled each time up to MAX_RETRY_DELAY, until ``timeout``
    seconds have passed or ``attempts`` tries were made; then that error is raised.
    Any other error is raised at once.
    """
    if timeout is None and attempts is None:
        raise ValueError(
            "while_database_away() needs a timeout or a number of attempts"
        )
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    tries = 0
    while True:
        alias = database()
        tries += 1
        try:
            return action(alias)
        except (OperationalError, InterfaceError) as error:
            _reset_connection(alias, error)
            if (
                attempts is not None and tries >= attempts
            ) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)


class JobHandle:
    """What a running job holds: report progress, log, heartbeat and check for a kill.

    Safe to use from several threads of the job: ``_lock`` guards the buffered lines and
    the progress (held for a few attribute moves, never across a query), and ``_writing``
    lets one write run at a time, on the lines and progress it took from the buffer.
    """

    def __init__(
        self, run: JobRun, *, interval: float | None = None, using: str | None = None
    ) -> None:
        self.run = run
        # The alias to write through; None: tracking_database() at each write.
        self._using = using
        self._lock = threading.Lock()
        self._writing = threading.RLock()
        self._interval = (
            settings.PROGRESS_INTERVAL if interval is None else float(interval)
        )
        self._current: float = run.progress_current  # advance() adds fractions
        self._total = run.progress_total
        self._step = run.step
        self._message = run.message
        self._result: Any = run.result
        self._dirty = False
        self._logs: list[JobLog] = []
        self._has_errors = run.has_errors
        self._kill_requested = run.kill_requested_at is not None
        now = time.monotonic()
        self._last_write = now
        # When the next progress call writes: -inf once a kill was seen (each call then
        # raises JobKilled), +inf once the run ended elsewhere (the handle writes no more).
        # A run asked to stop before its handle was made (killed while it waited) stops
        # at its first progress call, not one interval later: a short job ran to its end.
        self._due = -math.inf if self._kill_requested else now + self._interval
        self._ended_elsewhere = False
        self._ended = (
            False  # the end and its last lines are written (_write_late_lines())
        )
        self._clamped = False
        self._written = False
        # activate(): the handle current before it, and whether it is current somewhere.
        self._enclosing: JobHandle | None = None
        self._active = False

    def __repr__(self) -> str:
        return f"<JobHandle {self.run.job_name} {self.run.pk}>"

    # Result.

    @property
    def result(self) -> Any:
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        check_json("result", value)
        self._result = value

    # Progress.

    def progress(self, current: float, total: float | None = None) -> None:
        """Set how far the job is (and, optionally, out of how much)."""
        current, new_total = check_progress(current, total)
        with self._lock:
            if total is not None:
                self._total = new_total
            elif self._total is not None and current > self._total:
                raise ValueError(
                    f"progress current ({current}) is greater than total ({self._total})"
                )
            self._current = current
            self._dirty = True
        self._changed()

    def advance(self, amount: float = 1) -> None:
        """Add ``amount`` to the progress; cheap enough to call for every item.

        Fractions add up (four ``advance(0.5)`` are 2); the progress written is the
        whole part of the sum."""
        if type(amount) is not int or amount < 0:  # the common case checked fast
            check_amount("advance amount", amount)
        self._lock.acquire()  # not ``with``: twice as fast on the hottest path
        try:
            current = self._current + amount
            capped = False
            if self._total is not None and current > self._total:
                current, capped = self._total, True
            self._current = current
            self._dirty = True
        finally:
            self._lock.release()
        if capped and not self._clamped:
            self._clamped = True
            logger.warning(
                "Run %s advanced past its total (%s); progress is capped there.",
                self.run.pk,
                self._total,
            )
        if time.monotonic() >= self._due:
            self._sync()

    def step(self, name: str, total: float | None = None) -> None:
        """Enter a stage of the job; with ``total``, progress restarts at 0 of it."""
        name = str(name)
        if total is not None:
            total = check_amount("step total", total)
        with self._lock:
            self._step = name
            if total is not None:
                self._current, self._total = 0, total
            self._dirty = True
        self._changed()

    def message(self, text: str) -> None:
        """Set the run's status message."""
        text = str(text)
        with self._lock:
            self._message = text
            self._dirty = True
        self._changed()

    def _changed(self) -> None:
        if time.monotonic() >= self._due:
            self._sync()

    def _sync(self) -> None:
        """A progress call's write is due: write and read the kill request; raise JobKilled once asked to stop."""
        if not self._kill_requested:
            self.flush()
        self._raise_if_asked()

    def _raise_if_asked(self) -> None:
        """Raise the JobKilled of this run, or of a run whose block this one runs in."""
        asked = self._asked()
        if asked is not None:
            raise asked._killed()

    def _asked(self) -> JobHandle | None:
        """The handle whose run was asked to stop: this one, or an active one whose block
        this one runs in; None.

        A job that tracks a step as a run of its own reports through the step's handle
        (``current_job()``) while the step lasts: a kill of the job's run was read by no
        progress call until the step ended. The enclosing handles are read as their own
        calls are, at most once per interval each."""
        if self._kill_requested:
            return self
        outer = self._enclosing
        while outer is not None:
            if outer._active and outer._read_kill():
                return outer
            outer = outer._enclosing
        return None

    def _read_kill(self) -> bool:
        """Whether this run was asked to stop: read by the progress write when one is due."""
        if not self._kill_requested and time.monotonic() >= self._due:
            self.flush()
        return self._kill_requested

    # Logs.

    def log(
        self, level: int, msg: str, *args: Any, extra: dict[str, Any] | None = None
    ) -> None:
        """Log a line on the run (written with the next throttled write)."""
        from django_jobstatus.models import JobLog

        entry = JobLog.build(self.run, level, msg, *args, extra=extra)
        entry.created_at = timezone.now()
        with self._lock:
            ended = self._ended
            if level >= logging.ERROR:
                # Also after the end: the line written then marks the run, as
                # JobRun.log() does (a thread of the job logs after its block).
                self._has_errors = True
            if not ended:
                self._logs.append(entry)
                buffered = len(self._logs)
        if ended:
            # The end and the lines left after it are written: no write takes a line
            # buffered now (another thread of the job logs after its end).
            self._write_after_end([entry])
        elif buffered >= 500 or time.monotonic() - self._last_write >= self._interval:
            self.flush()

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR; the run is marked ``has_errors``."""
        self.log(logging.ERROR, msg, *args, **kwargs)

    # Liveness and kill.

    def heartbeat(self) -> None:
        """Say the job is alive (written at most once per interval, with pending progress)."""
        if time.monotonic() >= self._due:
            self._sync()

    @property
    def kill_requested(self) -> bool:
        """Whether someone asked this run, or a run whose block it runs in, to stop, or
        killed it by force.

        Read at most once per interval, by the same statement that writes the progress.
        """
        self._read_kill()
        return self._asked() is not None

    def check_kill(self) -> None:
        """Raise JobKilled when this run, or a run whose block it runs in, was asked to stop."""
        self._read_kill()
        self._raise_if_asked()

    def _killed(self) -> JobKilled:
        return JobKilled(f"Run {self.run.pk} was asked to stop.", run_id=self.run.pk)

    # Writing.

    @property
    def has_news(self) -> bool:
        """Whether the job reported anything this handle has not written yet (progress, logs, a result)."""
        return (
            self._dirty
            or bool(self._logs)
            or (self._has_errors and not self.run.has_errors)
            or self._result != self.run.result
        )

    @property
    def has_written(self) -> bool:
        """Whether a progress, heartbeat or log write of this handle reached the database."""
        return self._written

    def unwritten(self) -> dict[str, Any] | None:
        """What this handle holds and has not written, in JSON's types, for a process
        that records the run's end in its place (``take()``); None once it has written
        something, or may have, or when it is more than HANDOVER_MAX_CHARS characters of
        JSON.

        A line with an id was inserted by a write that then failed: its COMMIT may have
        applied (``_drop_committed()``). Only this handle can tell, at its next write; the
        taker would write the line again.
        """
        if self._written:
            return None
        with self._lock:
            progress = [self._current, self._total, self._step, self._message]
            dirty, logs = self._dirty, list(self._logs)
        if any(line.pk is not None for line in logs):
            return None
        unwritten = {
            "progress": progress if dirty else None,
            "has_errors": self._has_errors,
            "result": self._result,
            "logs": [
                [line.level, line.message, line.extra, line.created_at.isoformat()]
                for line in logs
            ],
        }
        try:
            size = len(json.dumps(unwritten))
        except (TypeError, ValueError):
            return None  # a result changed after it was set: finish() fails the run
        return unwritten if size <= HANDOVER_MAX_CHARS else None

    def take(self, unwritten: dict[str, Any]) -> None:
        """Hold what another handle of this run left unwritten (its ``unwritten()``): it
        is written with this handle's next write, the end of the run for one."""
        from django_jobstatus.models import JobLog

        lines = [
            JobLog(
                run_id=self.run.pk,
                level=level,
                message=message,
                extra=extra,
                created_at=datetime.fromisoformat(created_at),
            )
            for level, message, extra, created_at in unwritten["logs"]
        ]
        with self._lock:
            if unwritten["progress"] is not None:
                self._current, self._total, self._step, self._message = unwritten[
                    "progress"
                ]
                self._dirty = True
            self._has_errors = self._has_errors or bool(unwritten["has_errors"])
            if unwritten["result"] is not None:
                self._result = unwritten["result"]
            self._logs.extend(lines)

    def _pending_fields(self, *, dirty: bool) -> dict[str, Any]:
        """The fields a write stores (the progress when ``dirty``); called under ``_lock``."""
        now = timezone.now()
        fields: dict[str, Any] = {"heartbeat_at": database_now(now), "updated_at": now}
        if dirty:
            fields |= {
                # advance() does not check its sum: the column stops at BIGINT_MAX.
                # Its fractions add up: 0.1 ten times is 0.999…, written as 1.
                "progress_current": min(int(round(self._current, 6)), BIGINT_MAX),
                "progress_total": self._total,
                "step": self._step,
                "message": self._message,
            }
        return fields

    def _applied(self, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            setattr(self.run, name, value)

    def _take(self) -> tuple[dict[str, Any], list[JobLog]]:
        """The fields and the lines the next write stores, taken from the buffer at once."""
        with self._lock:
            fields = self._pending_fields(dirty=self._dirty)
            self._dirty = False
            logs, self._logs = self._logs, []
        return fields, logs

    def _put_back(self, fields: dict[str, Any], logs: list[JobLog]) -> None:
        """A write failed: its lines go back in front of the buffer (the newest
        LOG_BUFFER_MAX kept), and its progress is written with the next one."""
        with self._lock:
            self._logs[:0] = logs
            if len(self._logs) > LOG_BUFFER_MAX:
                del self._logs[:-LOG_BUFFER_MAX]
            if "progress_current" in fields:
                self._dirty = True

    def _database(self) -> str:
        return self._using or tracking_database()

    def flush(self) -> None:
        """Write pending progress, logs and a heartbeat now, and read the kill request.

        Never raises. The write applies only while the run is ``running`` at this
        handle's attempt: once it ended elsewhere (killed by force, reaped as lost, a
        newer attempt), the refused write is the last one (a forced kill also counts as
        a kill request), and only ``finish()`` writes the remaining log lines (the newest
        LOG_BUFFER_MAX). On an event loop's thread (an ``async def`` task) the write runs
        on the async writer's thread while this one waits.
        """
        if _in_event_loop():
            try:
                _off_the_loop(self.flush)
            except RuntimeError:
                # The writer's thread cannot start once the interpreter shuts down
                # (Python 3.12): what is pending waits for the next write, or the end.
                logger.warning("Could not write run %s's progress now.", self.run.pk)
            return
        with self._writing, _handle_write():
            self._flush()

    def _flush(self) -> None:
        self._last_write = time.monotonic()
        if self._ended_elsewhere:
            if len(self._logs) > LOG_BUFFER_MAX:
                with self._lock:
                    del self._logs[:-LOG_BUFFER_MAX]
            return
        self._due = self._last_write + self._interval
        if self._kill_requested:
            self._due = -math.inf  # every progress call raises, without a query
        alias = self._database()
        if caller_holds(alias, self.run.pk) or _held_for_async_writer(alias, self.run):
            # The job's own transaction holds its run's row: what it reported waits for
            # the next write (or the end); the kill request is read, which never waits.
            self._read_kill_request(alias)
            return
        fields, logs = self._take()
        fields = storable(fields)
        found: list[tuple[bool, datetime | None, str] | None] = []
        try:
            self._write_logs_then(
                alias,
                logs,
                lambda: found.append(_write_progress(alias, self.run, fields)),
            )
        except DatabaseError as error:
            logger.warning(
                "Could not record the progress of run %s; trying again at the next write.",
                self.run.pk,
                exc_info=True,
            )
            _reset_connection(alias, error)
            self._put_back(fields, logs)
            return
        self._written = True
        row = found[0]
        if row is None:
            # Not in the database, or not yet for this connection (an integration records
            # it later; the async writer cannot see the caller's open transaction): its
            # progress is written with the next write, the end for one.
            self._put_back(fields, [])
            return
        written, kill_requested_at, status = row
        if kill_requested_at is not None:
            self.run.kill_requested_at = kill_requested_at
            self._kill_requested = True
            self._due = -math.inf
        if written:
            self._applied(fields)
            return
        self._ended_elsewhere = True
        self._due = math.inf  # no progress call writes again
        if status == Status.KILLED:
            self._kill_requested = True
            self._due = -math.inf
        logger.warning(
            "Run %s ended elsewhere (%s, or a newer attempt runs); its job's handle stops writing.",
            self.run.pk,
            status,
        )

    def _read_kill_request(self, alias: str) -> None:
        from django_jobstatus.models import JobRun

        with contextlib.suppress(DatabaseError):
            kill_requested_at = (
                JobRun.objects.using(alias)
                .filter(pk=self.run.pk)
                .values_list("kill_requested_at", flat=True)
                .first()
            )
            if kill_requested_at is not None:
                self.run.kill_requested_at = kill_requested_at
                self._kill_requested = True
                self._due = -math.inf

    def _write_logs_then(
        self,
        alias: str,
        logs: list[JobLog],
        action: Callable[[], Any],
        *,
        apart: bool = False,
    ) -> None:
        """The log lines ``logs``, then ``action``, in one transaction (a savepoint inside
        the job's own, so a failed write does not break it).

        The run's ``has_errors`` goes with them once the job logged an error, whatever
        the run's state, as ``JobRun.log()`` sets it: the lines of a job that went on
        after a forced kill are still written, and the flag with them.

        ``apart``: each line in a savepoint of its own, a line the database refuses
        left out (and taken from ``logs``), so the others and ``action`` still apply.
        A line a failed write committed after all is taken from ``logs`` too
        (``_drop_committed()``).
        """
        from django_jobstatus.models import JobLog, JobRun

        flag = self._has_errors and not self.run.has_errors
        if not logs and not flag and not connections[alias].in_atomic_block:
            action()  # one statement: no BEGIN and COMMIT around it
            return
        flagged = False
        lines = JobLog.objects.using(alias)
        with transaction.atomic(
            using=alias, savepoint=connections[alias].in_atomic_block
        ):
            self._drop_committed(alias, logs)
            if not apart:
                if logs:
                    lines.bulk_create(logs)
            else:
                for line in list(logs):
                    try:
                        with transaction.atomic(using=alias):
                            lines.bulk_create([line])
                    except (OperationalError, InterfaceError):
                        raise
                    except DatabaseError:
                        logger.warning(
                            "Could not record a log line of run %s; left out.",
                            self.run.pk,
                            exc_info=True,
                        )
                        line.pk = None
                        logs.remove(line)
            if flag:
                # No row: not (yet) visible to this connection; the next write sets it.
                rows = JobRun.objects.using(alias).filter(pk=self.run.pk)
                flagged = bool(rows.update(has_errors=True))
            action()
        if flagged:
            self.run.has_errors = True

    def _drop_committed(self, alias: str, logs: list[JobLog]) -> None:
        """Take from ``logs`` the lines an earlier write committed, and clear the ids of
        the others, which that write's rollback left on them.

        Only a write that failed has left ids on lines still buffered: the insert gave
        them (PostgreSQL and SQLite return them), and the error came after it. Its
        COMMIT may have applied on the server and its answer been lost with the
        connection: the lines are in the database, and written again they would be on
        the run twice. So the lines with an id are looked up, once, off the common path
        (no line has one there); a line is taken as written only when the row with its
        id is this run's and has its time, as SQLite hands a rolled-back id out again.
        """
        from django_jobstatus.models import JobLog

        tried = {line.pk: line for line in logs if line.pk is not None}
        if not tried:
            return
        rows = JobLog.objects.using(alias).filter(pk__in=tried, run_id=self.run.pk)
        committed = {
            pk
            for pk, created_at in rows.values_list("pk", "created_at")
            if created_at == tried[pk].created_at
        }
        logs[:] = [line for line in logs if line.pk not in committed]
        for line in logs:
            line.pk = None

    # Start and end (durable).

    @_handle_write()
    def finish(self, exc: BaseException | None = None, **values: Any) -> None:
        """Record the end of the run: succeeded, killed (JobKilled) or failed (any other exception).

        ``values`` are more JobRun fields written with the end (e.g. the ``error`` and
        ``traceback`` an integration got from its task system). Retries while the
        database is unreachable, for up to FINISH_RETRY_TIMEOUT seconds; then logs the
        failure. A run already finished elsewhere (reaped as lost, killed by force)
        keeps that state. A result that JSON can no longer hold (changed after it was
        set) ends the run failed with the TypeError, which is then raised.
        """
        if caller_holds(self._database(), self.run.pk):
            self._end_later(exc, values)
            return
        try:
            self._record_end(exc, values, self._result)
        except TypeError:
            # mark_succeeded() checks the result before writing anything; it is read
            # again only here, off the common path.
            error = self._unstorable_result() if exc is None else None
            if error is None:
                raise
            self._record_end(error, values, None)  # failed, as setting it so would have
            raise error from None

    def _record_end(
        self,
        exc: BaseException | None,
        values: dict[str, Any],
        result: Any,
        *,
        alias: str | None = None,
        ended_at: datetime | None = None,
    ) -> bool:
        """finish()'s write, tried again while the database is away; whether it was written.

        ``result``: the result a success stores, passed in rather than read from the
        handle at the write, which for an end written later comes after the caller's
        block, where ``job.result`` may be set again (``_end_later()``).
        ``alias``: the connection to write it through, this once (the heartbeat thread's
        own, which exists in that thread only: the handle keeps none of it, or a thread
        of the job logging after the end wrote through an alias it does not have).
        ``ended_at``: when the job ended, for an end written later (``_end_later()``).
        """

        def database() -> str:
            return alias or self._database()

        # Never before the start (``JobRun._end()``), as the end's own stamp.
        ended = {} if ended_at is None else {"finished_at": self.run._end(ended_at)}

        with self._writing:
            with self._lock:
                logs, self._logs = self._logs, []
            try:
                written = self._write_end(exc, values, result, logs, database, ended)
            except BaseException:
                self._put_back({}, logs)
                raise
            if not written:
                self._put_back({}, logs)
                return False
            self._write_late_lines(database())
            return True

    def _write_late_lines(self, alias: str) -> None:
        """The lines another thread of the job logged while the end was written, after
        the end had taken the buffer (the run was not finished yet, so they were
        buffered): written now through ``alias``, the end's, or no write of this handle
        would ever take them."""
        with self._lock:
            logs, self._logs = self._logs, []
            self._ended = True  # from now on, a line is written as it is logged
        if logs:
            self._write_after_end(logs, alias)

    def _write_after_end(self, logs: list[JobLog], alias: str | None = None) -> None:
        """Lines of a run whose end is written: now, or never (no write comes after);
        through ``alias``, or the handle's connection in this thread."""
        alias = alias or self._database()
        try:
            with _handle_write():
                self._write_logs_then(alias, logs, lambda: None)
        except DatabaseError as error:
            logger.warning(
                "Could not record %d log lines of run %s after its end.",
                len(logs),
                self.run.pk,
                exc_info=True,
            )
            _reset_connection(alias, error)

    def _end_later(self, exc: BaseException | None, values: dict[str, Any]) -> None:
        """The end, written by the heartbeat thread once the caller's transaction, which
        holds the run's row, has ended (committed or rolled back): through a second
        connection, the write would wait on that transaction, which waits on the job.
        A result JSON cannot hold is raised now, and ends the run failed then. The result
        and ``values`` written are copies taken now (the result as JSON stores it), held
        by the write itself: the caller may set ``job.result`` again after its block."""
        # Stamped with the job's end, not the commit's: the caller's work after the block
        # is not the job's (its duration, the monitors' max_duration).
        ended_at = timezone.now()
        error = self._unstorable_result() if exc is None else None
        ending = exc if error is None else error
        # Copied: the caller goes on in its transaction with the objects the job handed
        # over (a tracked function's returned dict); the end written at the commit
        # recorded its later changes, or failed each second on a value JSON cannot hold
        # until the run was reaped lost.
        values = copy.deepcopy(values)
        result = json.loads(json.dumps(self._result)) if ending is None else None

        @_handle_write()
        def end(alias: str) -> bool:
            # Written as an end at once is, whichever thread writes it (the caller's at
            # its commit, the heartbeat thread): with this run as current_job() and the
            # lines logged meanwhile going through ``alias``, so that what the receivers
            # of job_status_changed log is a line of this run, not dropped (the caller's
            # block has deactivated this handle) nor one of an outer run.
            current = _current.set(self)
            through = _end_database.set((threading.get_ident(), alias))
            try:
                free = _row_free(alias, self.run)
                if free is None:  # purged meanwhile: nothing to end
                    return True
                if not free:
                    return False
                return self._record_end(
                    ending, values, result, alias=alias, ended_at=ended_at
                )
            finally:
                _end_database.reset(through)
                _current.reset(current)

        logger.info(
            "The end of run %s waits for the transaction that holds its row to end.",
            self.run.pk,
        )
        heartbeats.end_later(end)
        own = settings.DATABASE
        if not connections[own].needs_rollback:
            # Written at once when that transaction commits (a second later on a rollback).
            transaction.on_commit(
                functools.partial(heartbeats.write_end, end, own),
                using=own,
                robust=True,
            )
        if error is not None:
            raise error

    def _write_end(
        self,
        exc: BaseException | None,
        values: dict[str, Any],
        result: Any,
        logs: list[JobLog],
        database: Callable[[], str],
        ended: dict[str, Any],
    ) -> bool:
        """``_record_end()`` with the lines taken from the buffer, through ``database()``,
        and ``ended`` (the ``finished_at`` of an end written later); False when nothing
        was written because the database stayed away."""
        # A try that fails at COMMIT has already moved the instance; the next starts over.
        saved = {
            field.attname: getattr(self.run, field.attname)
            for field in self.run._meta.concrete_fields
        }
        tries: list[dict[str, Any]] = []  # the fields each try wrote
        apart = False  # each line in a savepoint of its own, a refused one left out

        def write(alias: str) -> None:
            if tries:
                for name, value in saved.items():
                    setattr(self.run, name, value)
            with self._lock:
                fields = self._pending_fields(dirty=self._dirty)
            # Each try's own end stamp, which tells its write from another process's
            # end of the run (``_refused()``).
            stamp = ended or {"finished_at": self.run._end(timezone.now())}
            fields = storable(fields | stamp | values)
            fields.pop("updated_at")
            tries.append(fields)
            self._write_logs_then(
                alias,
                logs,
                lambda: self._transition(exc, alias, fields, result),
                apart=apart,
            )
            self._applied(fields)
            self._dirty = False

        # The end with its details; then with the lines one by one, a line the database
        # refuses left out; then the end alone (with the lines one by one).
        alone = False
        while True:
            try:
                while_database_away(
                    write,
                    timeout=settings.FINISH_RETRY_TIMEOUT,
                    database=database,
                )
            except (InvalidTransition, ObjectDoesNotExist) as error:
                self._refused(exc, error, tries, logs, database())
            except (OperationalError, InterfaceError):
                for name, value in saved.items():
                    setattr(self.run, name, value)
                logger.exception(
                    "Could not record the end of run %s (%s) after %.0f s.",
                    self.run.pk,
                    self.run.job_name,
                    settings.FINISH_RETRY_TIMEOUT,
                )
                return False
            except DatabaseError:
                # The database refused a log line or something in the details (text is
                # cleaned and capped, so this should not happen): record the end with
                # what it takes rather than leave the run running.
                for name, value in saved.items():
                    setattr(self.run, name, value)
                tries.clear()
                if alone:
                    logger.exception("Could not record the end of run %s.", self.run.pk)
                    return True
                if logs and not apart:
                    logger.warning(
                        "Could not record the end of run %s with its log lines; writing them one by one.",
                        self.run.pk,
                        exc_info=True,
                    )
                    apart = True
                    continue
                logger.exception(
                    "Could not record the end of run %s with its details; recording the end alone.",
                    self.run.pk,
                )
                apart = alone = True
                self._dirty, result = False, None
                values = (
                    {"error": type(exc).__qualname__, "traceback": ""}
                    if self._outcome(exc) == Status.FAILED
                    else {}
                )
                continue
            return True

    def _refused(
        self,
        exc: BaseException | None,
        error: Exception,
        tries: list[dict[str, Any]],
        logs: list[JobLog],
        alias: str,
    ) -> None:
        """The end's write changed no row (through ``alias``): the run ended elsewhere,
        or is gone."""
        if len(tries) > 1 and self._ended_as(exc, alias, tries[:-1]):
            # A try before committed, but its answer was lost with the connection, and
            # its job_status_changed with it (Django drops the hooks of a COMMIT that
            # raised): sent now, or a batch's parent and a monitor never heard of the end.
            previous = self.run.status
            self._applied(tries[-1])
            self.run.refresh_from_db(using=alias)
            self.run._announce(previous, self.run.status, alias)
            return
        if isinstance(error, InvalidTransition):
            # The run ended elsewhere (reaped as lost, killed by force): it keeps that
            # state, and the job's last log lines are still written, with one saying
            # how the job itself ended (a task that outlived its terminate, say).
            outcome = self._outcome(exc)
            if error.status in Status.TERMINAL and error.status != outcome:
                logs = [*logs, self._went_on(error.status, outcome)]
            with contextlib.suppress(DatabaseError):
                self._write_logs_then(alias, logs, lambda: None)
        # Else it was deleted (purged with include_active): the job goes on as if it had
        # been recorded, and never sees the error.
        logger.warning("The end of run %s was not recorded: %s", self.run.pk, error)

    def _went_on(self, status: str, outcome: str) -> JobLog:
        """The line that says the job ran on after its run ended ``status`` elsewhere."""
        from django_jobstatus.models import JobLog

        text = _WENT_ON % {
            "status": status,
            "outcome": outcome,
            "attempt": self.run.attempt,
        }
        line = JobLog.build(self.run, logging.WARNING, str(text))
        line.created_at = timezone.now()
        return line

    def _unstorable_result(self) -> TypeError | None:
        """The TypeError of a result JSON can no longer hold: changed after it was set
        (``job.result = {}``, then ``job.result["at"] = now()``)."""
        try:
            check_json("result", self._result)
        except TypeError as error:
            return error
        return None

    @staticmethod
    def _outcome(exc: BaseException | None) -> str:
        """How leaving with ``exc`` ends the run: succeeded, killed (JobKilled, or a
        group of them: ``kills_in()``) or failed."""
        if exc is None:
            return Status.SUCCEEDED
        return Status.KILLED if kills_in(exc) else Status.FAILED

    def _ended_as(
        self, exc: BaseException | None, alias: str, tries: list[dict[str, Any]]
    ) -> bool:
        """Whether the database shows this attempt ended the way ``exc`` ends it, by one
        of ``tries`` (the fields of the end's earlier tries): by its ``finished_at``, each
        try's own. The same outcome alone may be another process's (a forced kill, when
        the job ends killed)."""
        from django_jobstatus.models import JobRun

        return (
            JobRun.objects.using(alias)
            .filter(
                pk=self.run.pk,
                status=self._outcome(exc),
                attempt=self.run.attempt,
                finished_at__in=[fields["finished_at"] for fields in tries],
            )
            .exists()
        )

    def _transition(
        self, exc: BaseException | None, alias: str, fields: dict[str, Any], result: Any
    ) -> None:
        outcome = self._outcome(exc)
        if outcome == Status.SUCCEEDED:
            self.run.mark_succeeded(result, using=alias, **fields)
        elif outcome == Status.KILLED:
            self.run.mark_killed(using=alias, **fields)
        else:
            self.run.mark_failed(exc, using=alias, **fields)

    # current_job().

    def activate(self) -> Token[JobHandle | None]:
        """Make this the handle ``current_job()`` returns in this context; the process beats for its run."""
        heartbeats.add(self)
        self._enclosing = _current.get()
        self._active = True
        return _current.set(self)

    def deactivate(self, token: Token[JobHandle | None]) -> None:
        """Undo ``activate()``: no more beats for the run, and ``current_job()`` the handle
        current before it, or the nearest one before that still active (None if none is).

        ``token`` is what ``activate()`` returned; it is not reset. Blocks in generators
        end in any order (two consumed by ``zip()``): the block that ended last restored
        the handle of one that had ended, and a block advanced through
        ``asyncio.to_thread()`` ends in another context than it began, where resetting
        the token raised ValueError. So this context changes only while this handle is
        its current one.
        """
        heartbeats.discard(self)
        self._active = False
        if _current.get() is self:
            outer = self._enclosing
            while outer is not None and not outer._active:
                outer = outer._enclosing
            _current.set(outer)
        writer = _async_writer
        if writer is not None and not heartbeats.handles():
            # The process's last active run ended: the async writer lets its connections go.
            writer.submit(_close_async_writer_connections)


def kills_in(exc: BaseException | None) -> list[JobKilled]:
    """The JobKilled that ``exc`` is: itself, or every leaf of an exception group that
    holds nothing else; empty for any other exception.

    A job that fans its work out to an ``asyncio.TaskGroup`` (or ``except*`` code) gets
    its tasks' JobKilled back wrapped in an exception group: it stopped because it was
    asked to, as with a bare JobKilled. A group that mixes a kill with other errors is
    a failure.
    """
    if isinstance(exc, JobKilled):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return []
    kills, rest = exc.split(JobKilled)
    if kills is None or rest is not None:
        return []
    return [kill for group in kills.exceptions for kill in kills_in(group)]


def current_job() -> JobHandle | None:
    """The handle of the run this code executes in, or None outside a tracked run."""
    return _current.get()


def _start_run(name: str, fields: dict[str, Any]) -> tuple[JobRun, str | None]:
    """Create the run as running, retrying briefly while the database is unreachable; the
    run, and the alias to track it through (None for ``tracking_database()``'s at each
    write).

    Every try writes the same id: a try after one whose answer was lost with the
    connection finds that run instead of recording a second one. A run whose parent's
    row is in the caller's open transaction is created in that transaction, once: an
    error there breaks the transaction. The parent is ``parent=`` (a run) or
    ``parent_id=`` (its id). A parent held there is found before the insert
    (``_parent_database()``); one created there, which a second connection cannot see,
    only once that connection's insert broke the foreign key: a query on every step of
    a committed parent would be paid for the rare parent enqueued in the same
    transaction.
    """
    from django_jobstatus.models import JobRun, uuid7

    fields = {"id": uuid7(), **fields}
    parent = fields.get("parent")
    # A parent= that is not a run is refused by the insert.
    parent_id = parent.pk if isinstance(parent, JobRun) else fields.get("parent_id")
    using = _parent_database(parent_id)
    if using is None:
        try:
            return _insert_run(name, fields), None
        except IntegrityError:
            # Through a second connection nothing was written: its insert, in
            # autocommit, was rolled back with its (deferred) foreign key check.
            if parent_id is None:
                raise
            using = _uncommitted_run_database(tracking_database(), parent_id)
            if using is None:
                raise
    return JobRun.objects.db_manager(using).start(name, **fields), using


def _insert_run(name: str, fields: dict[str, Any]) -> JobRun:
    """``_start_run()``'s insert through ``tracking_database()``, tried again while the
    database is unreachable (each try with the same id)."""
    from django_jobstatus.models import JobRun

    tries = 0

    def start(alias: str) -> JobRun:
        nonlocal tries
        tries += 1
        runs = JobRun.objects.db_manager(alias)
        if tries > 1:
            recorded = runs.filter(pk=fields["id"]).first()
            if recorded is not None:
                return recorded
        return runs.start(name, **fields)

    return while_database_away(start, attempts=3, delay=0.2)


def _parent_database(parent: Any) -> str | None:
    """The app's database when the row of the parent run ``parent`` (its id, or None) is
    held by the caller's open transaction, or the current job tracks it there, else None:
    a child inserted through a second connection would have its foreign key check wait
    on a parent locked there (a queue's claim, ``track(run=...)`` in the same
    transaction) until that transaction ends, which waits on the job. Such a child is
    tracked in that transaction, as its parent is. A parent only created there is found
    when the insert fails (``_start_run()``).

    No query without a parent, for a parent that the current job tracks through that
    database, nor outside an atomic block (``caller_holds()``)."""
    if parent is None:
        return None
    own: str = settings.DATABASE
    job = current_job()
    if job is not None and job.run.pk == parent and job._using == own:
        return own
    return own if caller_holds(tracking_database(), parent) else None


@contextlib.contextmanager
def track(
    job_name: str,
    *,
    params: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    subject: str = "",
    source: str = "manual",
    run: JobRun | None = None,
    interval: float | None = None,
    **fields: Any,
) -> Iterator[JobHandle]:
    """Record a run of ``job_name`` while the block executes; yields its JobHandle.

    Leaving the block ends the run succeeded; JobKilled ends it killed (and is not
    re-raised), as does an exception group of JobKilled alone (``kills_in()``: an
    ``asyncio.TaskGroup`` whose tasks saw the kill); ``SystemExit`` ends it succeeded
    when its code is 0 or None, failed otherwise, and is re-raised; any other exception ends it failed, with error and
    traceback, and is re-raised. With ``run=``, an existing queued or retrying run is
    started instead of creating one; a kill asked while it waited is seen at the first
    progress call or ``check_kill()``. A run created in the caller's open transaction (which a second
    connection cannot see) is tracked through the caller's connection, in that transaction;
    so is one whose parent's row (``parent=`` or ``parent_id=``) that transaction created
    or holds (a claimed run's step). Other keyword arguments are JobRun fields (queue,
    priority, owner, parent, backend_job_id, …). The JobKilled of an outer block's run, raised inside this one,
    ends this run killed too and is re-raised.
    """
    using = None  # the handle writes through tracking_database()
    if run is None:
        fields |= {
            "params": params if params is not None else {},
            "data": data if data is not None else {},
            "subject": subject,
            "source": source,
        }
        run, using = _start_run(job_name, fields)
    else:
        using = _start_waiting_run(run)
    handle = JobHandle(run, interval=interval, using=using)
    token = handle.activate()
    process = os.getpid()

    def finish(exc: BaseException | None = None, **values: Any) -> None:
        # A child the job forked (os.fork()) that leaves the block, by sys.exit() or an
        # exception, ends its own process, not the run: the job goes on in its parent.
        if os.getpid() == process:
            handle.finish(exc, **values)

    try:
        yield handle
    except SystemExit as exc:
        # sys.exit(0) and sys.exit() are a success, for Python and for cron.
        finish(None if exc.code in (0, None) else exc)
        raise
    except BaseException as exc:
        kills = kills_in(exc)
        if not kills:
            finish(exc)
            raise
        outer = [kill.run_id for kill in kills if kill.run_id not in (None, run.pk)]
        if not outer:
            finish(exc)
        else:
            # Another run's kill (an outer block's) leaves this block: this run stops
            # with it, and the run that was asked stops too.
            text = _("Stopped: run %(run)s, which it ran in, was asked to stop.")
            finish(exc, message=text % {"run": outer[0]})
            raise
    else:
        finish()
    finally:
        handle.deactivate(token)


def _start_waiting_run(run: JobRun) -> str | None:
    """Start ``run`` (queued or retrying); the alias to track it through, or None for
    ``tracking_database()``'s at each write."""
    using = None
    alias = tracking_database()
    if caller_holds(alias, run.pk):
        # Claimed in the caller's transaction (``select_for_update()``): tracked through
        # the caller's connection, in that transaction, as a run created there is.
        alias = using = settings.DATABASE
    try:
        run.mark_running(using=alias)
    except ObjectDoesNotExist:
        # Created in the caller's transaction, not committed yet: the second
        # connection cannot see it, so the run is tracked in that transaction.
        using = _uncommitted_run_database(alias, run.pk)
        if using is None:
            raise
        alias = using
        run.mark_running(using=alias)
    if run.kill_requested_at is None:
        # Asked to stop while it waited (a batch's kill, the admin's): the caller's
        # copy may be older than the request, which the job must see at once.
        run.refresh_from_db(using=alias, fields=["kill_requested_at"])
    return using


def _uncommitted_run_database(alias: str, pk: Any) -> str | None:
    """The app's database when run ``pk`` is in its connection's open transaction only
    (created there, not committed), which ``alias`` (a second connection) cannot see;
    else None.

    No query outside an atomic block, nor in one marked for rollback (Django refuses
    queries there); one for a run ``alias`` sees."""
    from django_jobstatus.models import JobRun

    own: str = settings.DATABASE
    connection = connections[own]
    if alias == own or not connection.in_atomic_block or connection.needs_rollback:
        return None
    runs = JobRun.objects.filter(pk=pk)
    if runs.using(alias).exists() or not runs.using(own).exists():
        return None
    return own


@overload
def tracked(job_name: Callable[P, R], /) -> Callable[P, R | None]: ...


@overload
def tracked(
    job_name: str | None = None, **track_kwargs: Any
) -> Callable[[Callable[P, R]], Callable[P, R | None]]: ...


def tracked(
    job_name: str | Callable[P, R] | None = None, **track_kwargs: Any
) -> Callable[P, R | None] | Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Decorate a function so that each call is a tracked run (``current_job()`` inside).

    ``@tracked``, ``@tracked()`` or ``@tracked("name", **track_kwargs)``; the job name
    defaults to the function's module path. The call returns the function's value, which
    is also stored as the run's result when it is JSON-serializable; a killed run returns
    None.
    """
    if callable(job_name):
        return tracked()(job_name)  # @tracked, without parentheses
    if job_name is not None and not isinstance(job_name, str):
        raise TypeError(
            "tracked() takes a job name: write @tracked, @tracked() or "
            f'@tracked("name"), not tracked({job_name!r}).'
        )

    def decorator(func: Callable[P, R]) -> Callable[P, R | None]:
        # Also behind decorators that say what they wrap (functools.wraps).
        inner = inspect.unwrap(func)
        if inspect.iscoroutinefunction(inner):
            raise TypeError(
                "tracked() does not support async functions; call track() from sync code."
            )
        if inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner):
            kind = (
                "generator" if inspect.isgeneratorfunction(inner) else "async generator"
            )
            raise TypeError(
                f"tracked() does not support {kind} functions: the call returns before the "
                "generator runs; use track() inside it."
            )
        # Only None stands for the function's path: tracked("") is refused, as track("") is.
        name = check_job_name(
            f"{func.__module__}.{func.__qualname__}" if job_name is None else job_name
        )

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            value: R | None = None
            with track(name, **track_kwargs) as job:
                value = func(*args, **kwargs)
                _refuse_unstarted(func, value)
                if job.result is None:
                    with contextlib.suppress(TypeError):
                        job.result = value
            return value

        return wrapper

    return decorator


def _refuse_unstarted(func: Callable[..., Any], value: Any) -> None:
    """Raise TypeError (closing ``value``) when ``func`` returned an awaitable: an async
    function that a decorator hid from tracked()'s check, whose work has not run (its run
    was recorded succeeded at once). A generator may be a plain function's lazy result,
    its work done: it is returned."""
    if not inspect.isawaitable(value):
        return
    close = getattr(value, "close", None)
    if close is not None:
        close()  # a coroutine never awaited warns when it is collected
    raise TypeError(
        f"{func.__qualname__}() returned a {type(value).__name__} object, whose work has "
        "not run yet: tracked() does not support async functions, even behind another "
        "decorator; call track() from sync code."
    )
