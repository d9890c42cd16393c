"""Queued runs written behind the enqueue: the caller does not wait for the database (issue 12).

An integration records a new task as ``queued`` when it is enqueued. On PostgreSQL,
outside a transaction, that INSERT does not run in the caller: the run's values are
checked there (an error is the caller's, as before), then handed to this process's
writer thread, which writes the runs waiting in one statement on a connection of its
own. A lone run is written LINGER after its enqueue; a busy enqueuer's runs go dozens at
a time (the thread waits while they keep coming, up to MAX_LINGER).

What stays true:

- Nothing is reported that did not happen, and no run is recorded twice: a worker may
  start a task before its queued run is written. The writer takes a transaction-level
  advisory lock per task (``statements.lock_jobs()``), and inserts a run unless a worker
  recorded this enqueue's run first (``statements._own_run()``: a task id may be sent
  again, so the task's earlier runs do not count); a worker that finds no queued run
  takes the same lock before it looks again, so it either finds the queued run or
  writes the run itself, and then the writer only adds the queued time and the batch
  parent to that run.
- This process reads its own writes: a query on ``JobRun.objects`` first waits for the
  runs handed to the writer (``catch_up()``), and so do ``find_run()`` and a retry.
- The runs handed over are written before the process exits (``atexit``), and a worker
  process writes them at the end of each task (``flush()``), before a fork's child may
  exit without atexit. A child process never writes its parent's runs.
- The database away: the writer keeps the runs and tries again, pausing up to
  MAX_RETRY_DELAY seconds, for RETRY_FOR seconds (then it logs them as lost); past
  MAX_PENDING runs waiting, the enqueue writes inline.
  A process killed outright loses what it had not written: the worker then records the
  run when it starts (``running``, without its time in the queue).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
)

from django_jobstatus import statements

logger = logging.getLogger(__name__)

# Runs waiting to be written past which an enqueue writes its run itself.
MAX_PENDING = 10_000
# Runs in one statement.
BATCH = 500
# Seconds the writer waits after a run arrives for the next ones, to write them together:
# while they keep coming within LINGER of each other, up to MAX_LINGER after the first
# (a busy enqueuer's runs go dozens at a time, a lone run within LINGER).
LINGER = 0.002
MAX_LINGER = 0.05
# Longest pause between two tries while the database is away, in seconds.
MAX_RETRY_DELAY = 5.0
# Seconds of errors after which the runs being written are given up (and logged).
RETRY_FOR = 60.0
# Longest wait of flush(), stop() and catch_up(), in seconds.
FLUSH_TIMEOUT = 10.0
# Seconds the thread waits for runs before it closes its connection and ends.
IDLE_SECONDS = 60.0


_inline: ContextVar[bool] = ContextVar(
    "django_jobstatus_writebehind_inline", default=False
)


@contextlib.contextmanager
def inline() -> Iterator[None]:
    """Within the block, queued runs are written in the caller, before the enqueue returns."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


def accepts(alias: str) -> bool:
    """Whether a queued run for database ``alias`` (the tracking alias of this moment) may be written behind."""
    connection = connections[alias]
    return (
        not _inline.get()
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and statements.usable(alias)
        and not statements.observed()
    )


class Writer:
    """This process's writer thread and the queued runs handed to it."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Start empty: also in a forked child, which never writes its parent's runs (nor waits on its locks)."""
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._busy = 0  # runs taken by the thread and not written yet
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Set when a wait for the writer timed out: queries stop waiting until it writes again.
        self.stalled = False

    @property
    def idle(self) -> bool:
        """Whether no run waits to be written (a read without a lock: a hint)."""
        return not self._pending and not self._busy

    def put(self, alias: str, values: dict[str, Any]) -> bool:
        """Hand over the checked values of a queued run (with its ``id``); False when too many wait (write it inline)."""
        with self._cond:
            if len(self._pending) + self._busy >= MAX_PENDING:
                return False
            self._pending.append((alias, values))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="django-jobstatus writer", daemon=True
                )
                self._thread.start()
            # Only the first run of a batch, or a full one, wakes the writer: a wake-up
            # per run would take the GIL from the enqueuer each time.
            if len(self._pending) == 1 or len(self._pending) >= BATCH:
                self._cond.notify_all()
        return True

    def discard(self, pk: Any) -> bool:
        """Drop the run ``pk`` if it is still waiting; whether it was (then it is never written)."""
        with self._cond:
            for index, (_alias, values) in enumerate(self._pending):
                if values["id"] == pk:
                    del self._pending[index]
                    return True
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every run handed over so far is written (or given up); False on timeout."""
        if self.idle or threading.current_thread() is self._thread:
            return True
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self.idle, FLUSH_TIMEOUT if timeout is None else timeout
            )

    def stop(self, timeout: float | None = None) -> bool:
        """Write what waits, then end the thread and close its connections (a new one starts when needed); False on timeout."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            stopped = self._cond.wait_for(
                lambda: self._thread is None,
                FLUSH_TIMEOUT if timeout is None else timeout,
            )
            self._stopping = False
            return stopped

    def _run(self) -> None:
        delay, failing_since = 0.1, None
        while True:
            with self._cond:
                if (
                    not self._cond.wait_for(
                        lambda: self._pending or self._stopping, IDLE_SECONDS
                    )
                    or not self._pending
                ):
                    # Idle: no connection kept open for nothing, no thread either.
                    if self._end():
                        return
                    continue
                if LINGER and not self._stopping:
                    self._linger()
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                self._busy = len(batch)
            try:
                self._write(batch)
                delay, failing_since, self.stalled = 0.1, None, False
            except (OperationalError, InterfaceError):
                connections.close_all()
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > RETRY_FOR:
                    logger.exception(
                        "Gave up recording %d queued runs after %g s of errors; their"
                        " tasks are recorded when a worker starts them.",
                        len(batch),
                        RETRY_FOR,
                    )
                    failing_since, self.stalled = None, False
                    continue
                logger.warning(
                    "Could not record %d queued runs; trying again in %g s.",
                    len(batch),
                    delay,
                    exc_info=True,
                )
                with self._cond:
                    self._pending[:0] = batch
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
            except (
                Exception
            ):  # never let the thread die: log, and go on with the next runs
                logger.exception("Could not record %d queued runs.", len(batch))
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()

    def _linger(self) -> None:
        """Wait for the runs enqueued right after the first, to write them in one statement.

        Until none came for LINGER, the batch is full, MAX_LINGER passed, or someone waits
        for the writer (``flush()``, a query's ``catch_up()``). Called holding the lock.
        """
        deadline = time.monotonic() + MAX_LINGER
        seen = len(self._pending)
        while seen < BATCH and not self._stopping and time.monotonic() < deadline:
            woken = self._cond.wait(LINGER)
            if woken or len(self._pending) == seen:
                return
            seen = len(self._pending)

    def _end(self) -> bool:
        """Close this thread's connections; whether the thread ends (nothing came meanwhile). Called holding the lock."""
        self._cond.release()
        try:
            connections.close_all()  # this thread's only
        finally:
            self._cond.acquire()
        if self._pending:
            return False
        self._thread = None
        self._cond.notify_all()
        return True

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        by_alias: dict[str, list[dict[str, Any]]] = {}
        for alias, values in batch:
            by_alias.setdefault(alias, []).append(values)
        for alias, rows in by_alias.items():
            try:
                _insert(alias, rows)
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError:
                if len(rows) == 1:
                    logger.exception(
                        "Could not record the queued run %s.", rows[0].get("id")
                    )
                    continue
                # One bad run: the others one by one, so that only it is lost.
                for row in rows:
                    self._write([(alias, row)])


def _insert(alias: str, rows: list[dict[str, Any]]) -> None:
    """Write the queued runs of ``rows``: one round trip, one transaction (``statements.write_queued()``)."""
    statements.write_queued(alias, rows)


writer = Writer()
flush = writer.flush


def catch_up() -> None:
    """Wait for the queued runs this process handed to the writer, so that a query sees them.

    After a wait that timed out (the database away), queries no longer wait until the
    writer writes again.
    """
    if writer.idle or writer.stalled:
        return
    if not writer.flush():
        writer.stalled = True
        logger.warning(
            "Queued runs were not written within %g s; queries do not wait for them"
            " until the writer gets through.",
            FLUSH_TIMEOUT,
        )


atexit.register(writer.stop)
os.register_at_fork(after_in_child=writer._reset)
