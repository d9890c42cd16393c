"""One heartbeat for every active run of this process, whatever started it.

A job that reports nothing for HEARTBEAT_TIMEOUT seconds would look dead to
``reap_jobstatus`` and be marked lost while it runs. So while a run's handle is active
(``track()``, or a Celery, RQ or Django tasks integration executing the task), a daemon
thread of this process beats for it: every HEARTBEAT_TIMEOUT / 3 seconds one UPDATE
stamps ``heartbeat_at`` on all of them at once (``WHERE id IN (...) AND attempt = …
AND status = 'running'``: a run that ended elsewhere, or that another worker started
again, is left alone; on PostgreSQL a row another transaction holds is skipped, not
waited on). A beat that fails is tried again a second later. The handle's own throttled
writes go on as before; the thread covers the silent stretches between them.

The thread also writes the ends that had to wait (``end_later()``): a job whose own
transaction holds its run's row cannot have its end written through a second connection
until that transaction ends, committed or rolled back. The thread tries each such end a
second apart, without waiting on the row, and the process tries those left when it exits
(after waiting for the one the thread is trying, if any).

The thread starts with the first active run and writes through a connection of its own
(``own_connections``), open while there are runs to beat for and closed when there are
none. The beats stop with the process, so a killed worker's runs are still reaped. A
forked child (RQ's work horse, Celery's pool processes) starts with no runs, no thread
and no connection: it beats only for the runs it executes itself (and for its job's run
once its parent is gone: an RQ work horse whose worker was killed carries on with the job).
"""

from __future__ import annotations

import atexit
import functools
import logging
import operator
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, transaction
from django.db.models import Q

from django_jobstatus import own_connections
from django_jobstatus.clock import database_now
from django_jobstatus.conf import settings

if TYPE_CHECKING:
    from django_jobstatus.tracking import JobHandle

logger = logging.getLogger(__name__)

PURPOSE = "heartbeats"
MIN_INTERVAL = 0.1  # seconds


def interval() -> float:
    """Seconds between two beats: a third of HEARTBEAT_TIMEOUT, so that a late beat is no loss."""
    return max(float(settings.HEARTBEAT_TIMEOUT) / 3, MIN_INTERVAL)


# Seconds before a beat that failed is tried again (at most an interval).
RETRY_DELAY = 1.0


def retry_delay() -> float:
    return min(RETRY_DELAY, interval())


class Heartbeats:
    """The active handles of this process, and the thread that beats for their runs."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._handles: dict[int, JobHandle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = 0.0  # when the next beat is due (time.monotonic())
        self._open = False  # whether the thread holds a connection
        self._failing = False  # whether the last beat failed (the next one comes soon)
        # end_later(): each end still to write, called with the alias to write through;
        # it says whether it is done.
        self._ends: list[Callable[[str], bool]] = []
        self._ends_due = 0.0  # when the thread tries them next
        # The ends a thread has taken out of _ends and is trying: no other thread tries
        # them meanwhile, but one exiting waits for them (``_settled``). ``_again``: those
        # whose transaction committed during the try, tried again at once if it failed.
        self._trying: set[Callable[[str], bool]] = set()
        self._again: set[Callable[[str], bool]] = set()
        self._settled = threading.Condition(self._lock)

    def add(self, handle: JobHandle, *, now: bool = False) -> None:
        """Beat for ``handle``'s run from now on (starting the thread if needed); ``now``:
        the first beat at once, not an interval later (the process that beat for the run
        so far died: its last beat may be an interval old already)."""
        with self._lock:
            self._handles[id(handle)] = handle
            self._wake_by(time.monotonic() + (0 if now else interval()))

    def end_later(self, end: Callable[[str], bool]) -> None:
        """Call ``end(alias)`` a second from now, and again each second until it returns
        True (the run's end is written, or there is none to write)."""
        with self._lock:
            if not self._ends:
                self._ends_due = time.monotonic() + retry_delay()
            self._ends.append(end)
            self._wake_by(self._ends_due)

    def write_end(self, end: Callable[[str], bool], alias: str) -> None:
        """Try ``end`` (held by ``end_later()``) now, through ``alias``: the transaction
        that held its run's row has committed. One another thread is trying is tried again
        by that thread at once if its try fails: the try may have found the row still
        held, just before the commit, and a second later the process may be gone."""
        with self._lock:
            if end in self._trying:
                self._again.add(end)
                return
            if not self._take(end):
                return  # written already
        self._try(end, alias)

    def _take(self, end: Callable[[str], bool]) -> bool:
        """Move ``end`` from the held ends to those being tried; whether it was held.
        With ``_lock`` held."""
        if end not in self._ends:
            return False
        self._ends.remove(end)
        self._trying.add(end)
        return True

    def _try(self, end: Callable[[str], bool], alias: str | None) -> None:
        """Call ``end`` (taken by ``_take()``) through ``alias`` (default: this thread's own
        connection), again while ``write_end()`` asked for it meanwhile; then hold it
        again unless it is done. It is never out of both ``_ends`` and ``_trying``, or
        ``write_end()`` would take it for written."""
        done = settled = False
        try:
            while not settled:
                try:
                    done = end(alias or self.connection())
                except Exception:  # the others are tried all the same
                    logger.exception("Could not record the end of a run; trying again.")
                    done = False
                with self._lock:
                    settled = done or end not in self._again
                    if settled:
                        self._settle(end, done=done)
                    else:
                        self._again.discard(end)
        finally:
            if not settled:  # interrupted: held again, or the exit would wait for it
                with self._lock:
                    self._settle(end, done=False)

    def _settle(self, end: Callable[[str], bool], *, done: bool) -> None:
        """``end``'s try is over: held again unless it is ``done``. With ``_lock`` held."""
        self._trying.discard(end)
        self._again.discard(end)
        if not done:
            self._ends.append(end)
            # Tried again a second from now: the thread, finding no end held while this
            # try ran, set its next wake an interval away. Not started anew (the process
            # may be exiting, when no thread can start).
            due = time.monotonic() + retry_delay()
            self._ends_due = min(self._ends_due, due)
            if self._thread is not None and self._thread.is_alive() and due < self._due:
                self._due = due
                self._wake.set()
        self._settled.notify_all()

    def _wake_by(self, due: float) -> None:
        """Start the thread, or wake it, so that it runs by ``due``; with ``_lock`` held."""
        if self._thread is None or not self._thread.is_alive():
            self._due = due
            self._thread = threading.Thread(
                target=self._beat_forever, name="jobstatus-heartbeats", daemon=True
            )
            try:
                self._thread.start()
            except RuntimeError:
                # No thread can start once the interpreter shuts down (Python 3.12), where
                # a thread that outlives the main one may still run a job: it goes on
                # unbeaten (its own writes still beat), rather than being raised into.
                self._thread = None
                logger.warning(
                    "The heartbeat thread could not start (the interpreter is shutting "
                    "down): runs are beaten only by their own writes."
                )
        elif due < self._due:
            # Also when HEARTBEAT_TIMEOUT was made shorter: beat sooner.
            self._due = due
            self._wake.set()

    def discard(self, handle: JobHandle) -> None:
        """Stop beating for ``handle``'s run."""
        with self._lock:
            self._handles.pop(id(handle), None)
            if not self._handles and self._open:
                self._wake.set()  # the thread lets its connection go

    def write_ends(self, alias: str | None = None) -> int:
        """Try each end ``end_later()`` holds once, through ``alias`` (default: this
        thread's own connection); how many are left, held or being tried by another
        thread. Each is taken out while it is tried, so two threads never write one."""
        with self._lock:
            ends = list(self._ends)
        for end in ends:
            with self._lock:
                taken = self._take(end)  # not when written meanwhile
            if taken:
                self._try(end, alias)
        with self._lock:
            return len(self._ends) + len(self._trying)

    def write_ends_before_exit(self) -> None:
        """Before the process exits: the ends still held, tried until FINISH_RETRY_TIMEOUT.

        An end another thread is trying (the heartbeat thread, a commit's) is waited for,
        however long: that try is bounded as this one's would be. If it comes back
        unwritten, it is tried again here, past the deadline too.

        At ``atexit``, and where a process ends without it (an RQ work horse, a Celery pool
        process)."""
        deadline = time.monotonic() + float(settings.FINISH_RETRY_TIMEOUT)
        while self.write_ends():
            with self._lock:
                if not self._trying and time.monotonic() >= deadline:
                    break
                # A second, or until another thread's try comes back.
                self._settled.wait(retry_delay())
        with self._lock:
            left = len(self._ends)
        if left:
            logger.error(
                "Could not record the end of %d runs before the process exited.", left
            )

    def handles(self) -> list[JobHandle]:
        with self._lock:
            return list(self._handles.values())

    def connection(self) -> str:
        """The alias the beats are written through, in this thread (made on first use)."""
        return own_connections.own(settings.DATABASE, PURPOSE)

    def beat(self) -> int:
        """Stamp a heartbeat on every running run of the active handles now; the number stamped.

        The runs are all in JOBSTATUS["DATABASE"], where tracking writes them.
        """
        # Not at the top: tracking.py imports this module before the app registry is ready.
        from django_jobstatus.models import JobRun

        # Each run at the handle's attempt: a next attempt started by another worker is
        # that worker's to keep alive.
        handles = self.handles()
        if not handles:
            return 0
        by_attempt: dict[int, list[Any]] = {}
        for handle in handles:
            by_attempt.setdefault(handle.run.attempt, []).append(handle.run.pk)
        ours = functools.reduce(
            operator.or_,
            (Q(attempt=attempt, pk__in=ids) for attempt, ids in by_attempt.items()),
        )
        try:
            alias = self.connection()
            runs = JobRun.objects.using(alias).filter(ours).running()
            if connections[alias].features.has_select_for_update_skip_locked:
                # A run whose row a transaction holds (its own job's, say) is skipped, not
                # waited on: the wait, up to the lock timeout, kept every other run of the
                # process from its beat, and the reaper took them for dead.
                with transaction.atomic(using=alias):
                    free = runs.order_by().select_for_update(skip_locked=True)
                    stamped = (
                        JobRun.objects.using(alias)
                        .filter(pk__in=free.values("pk"))
                        .update(heartbeat_at=database_now())
                    )
            else:
                stamped = runs.update(heartbeat_at=database_now())
        except DatabaseError:
            # Tried again soon, not a whole interval later: after an outage longer than
            # HEARTBEAT_TIMEOUT, the runs of this live process looked dead until then.
            log = logger.debug if self._failing else logger.warning
            log(
                "Could not record the heartbeat of %d runs; trying again in %.1f s.",
                len(handles),
                retry_delay(),
                exc_info=True,
            )
            self._failing = True
            return 0
        if self._failing:
            logger.info("Recorded the heartbeat of %d runs again.", stamped)
            self._failing = False
        return int(stamped)

    def _beat_forever(self) -> None:
        while True:
            self._wake.wait(max(self._due - time.monotonic(), 0))
            self._wake.clear()
            now = time.monotonic()
            self._due = min(self._due, now + interval())
            if now >= self._due:
                self._due = now + interval()
                try:
                    if self.handles():
                        self._open = True
                        self.beat()
                except Exception:  # the thread must live on, whatever went wrong
                    logger.exception("The heartbeat thread failed to beat; it goes on.")
                if self._failing:
                    self._due = min(self._due, time.monotonic() + retry_delay())
            if self._ends and time.monotonic() >= self._ends_due:
                self._open = True
                if self.write_ends():
                    self._ends_due = time.monotonic() + retry_delay()
            if self._ends:
                self._due = min(self._due, self._ends_due)
            if self._open and not self.handles() and not self._ends:
                own_connections.close(PURPOSE)
                self._open = False

    def _forked(self) -> None:
        """In a forked child: no runs, no thread (it did not survive the fork), no lock held."""
        self._reset()


heartbeats = Heartbeats()
os.register_at_fork(after_in_child=heartbeats._forked)
atexit.register(heartbeats.write_ends_before_exit)
