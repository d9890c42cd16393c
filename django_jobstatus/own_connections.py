"""Database connections of the app's own: kept open across tasks, checked after an error, never shared with a fork.

A worker would otherwise connect again for every task: Celery's Django fixup closes every
connection Django knows of around each task, and the job's own connection may be inside
the job's transaction. An own connection is a second connection to the same database
(autocommit, and on PostgreSQL a lock timeout, so that a write never waits for ever on a
row the job's transaction holds). It lives in the thread that made it, under an alias
that is not in ``DATABASES`` (``"default__jobstatus_tracking"``…), so that
``connections.all()`` — and with it Celery's fixup and ``close_old_connections()`` —
never sees it. It stays open (CONN_MAX_AGE = None) for as long as its thread lives,
and is closed when the thread ends: a task that runs sub-jobs on threads of its own
leaves no session behind. Meanwhile it follows Django's own checks: after a database
error it is tested (``is_usable()``) before it is used again, and CONN_HEALTH_CHECKS
applies when the database's settings turn it on.

A process that forks must not let its child use, or close, the parent's connection: the
child forgets every own connection it inherited (without closing it, which would end the
parent's session too) and opens its own when it needs one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.utils import load_backend
from django.utils.connection import ConnectionDoesNotExist

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

# Longest wait of a tracking write for a lock the job's own transaction holds, in ms.
LOCK_TIMEOUT_MS = 10_000
TRACKING = (
    "tracking"  # the purpose of the connection a worker writes its runs' state through
)

# Whether this process is a worker that writes its runs' state through an own connection.
_tracking = False

# Every own connection of this process's live threads: (alias, wrapper).
_made: list[tuple[str, BaseDatabaseWrapper]] = []
_made_lock = threading.Lock()
# Those a forked child inherited: kept referenced, so that they are never closed here.
_inherited: list[BaseDatabaseWrapper] = []


class _Owned:
    """One thread's own connections, closed when the thread ends.

    CPython frees a thread's ``threading.local`` data when the thread ends, so this
    object's ``__del__`` runs then. In a forked child it also runs for the threads that
    did not survive the fork: there it closes nothing (the sockets are the parent's), and
    ``_forget_after_fork`` keeps the connections referenced in ``_inherited``.
    """

    # Bound here: the main thread's object may go while the interpreter shuts down.
    _getpid = staticmethod(os.getpid)
    _suppress = staticmethod(contextlib.suppress)

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.made: dict[str, BaseDatabaseWrapper] = {}
        self.registry = _made
        self.lock = _made_lock

    def __del__(self) -> None:
        if self._getpid() != self.pid or not self.made:
            return
        with self._suppress(Exception):
            ours = {id(wrapper) for wrapper in self.made.values()}
            with self.lock:
                self.registry[:] = [
                    (name, wrapper)
                    for name, wrapper in self.registry
                    if id(wrapper) not in ours
                ]
        for wrapper in self.made.values():
            with self._suppress(Exception):
                wrapper.inc_thread_sharing()  # closed from whichever thread frees this
                wrapper.close()


_owned = threading.local()


def _this_threads() -> _Owned:
    owned: _Owned | None = getattr(_owned, "owned", None)
    if owned is None:
        owned = _owned.owned = _Owned()
    return owned


def side_settings(alias: str) -> dict[str, Any]:
    """The settings of a second connection to database ``alias``: autocommit, and a lock timeout on PostgreSQL."""
    connection = connections[alias]
    settings_dict: dict[str, Any] = {
        **connection.settings_dict,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
    }
    if connection.vendor == "postgresql":
        options = dict(settings_dict.get("OPTIONS") or {})
        options["options"] = (
            f"{options.get('options', '')} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()
        )
        settings_dict["OPTIONS"] = options
    return settings_dict


def own(alias: str, purpose: str) -> str:
    """The alias of this thread's own connection to database ``alias`` for ``purpose``; made on first use."""
    name = f"{alias}__jobstatus_{purpose}"
    try:
        wrapper = connections[name]
    except ConnectionDoesNotExist:
        settings_dict = side_settings(alias) | {"CONN_MAX_AGE": None}
        backend = load_backend(settings_dict["ENGINE"])
        wrapper = backend.DatabaseWrapper(settings_dict, name)
        connections[name] = wrapper
        _this_threads().made[name] = wrapper
        with _made_lock:
            _made.append((name, wrapper))
    if not wrapper.in_atomic_block:
        # A connection that raised a database error is tested before it is used again.
        wrapper.close_if_unusable_or_obsolete()
    return name


def track_through_own() -> None:
    """From now on, write the state of running jobs through own connections (in a worker process)."""
    global _tracking
    _tracking = True


def tracks_through_own() -> bool:
    return _tracking


@contextlib.contextmanager
def tracking_through_own() -> Iterator[None]:
    """Within the block, write through own connections; then close this thread's (a worker's loop)."""
    global _tracking
    before, _tracking = _tracking, True
    try:
        yield
    finally:
        _tracking = before
        close(TRACKING)


def close(purpose: str | None = None) -> None:
    """Close this thread's own connections (for ``purpose``, or all); they open again when used."""
    with _made_lock:
        made = list(_made)
    for name, wrapper in made:
        if purpose is None or name.endswith(f"__jobstatus_{purpose}"):
            with contextlib.suppress(Exception):
                if connections[name] is wrapper:
                    wrapper.close()


def _forget_after_fork() -> None:
    """In a forked child: drop the inherited own connections, unclosed (closing would end the parent's session)."""
    global _made_lock
    # Another thread of the parent may have held the lock at the fork: it is never released here.
    _made_lock = threading.Lock()
    for name, wrapper in _made:
        _inherited.append(wrapper)
        with contextlib.suppress(AttributeError, ConnectionDoesNotExist):
            del connections[name]
    _made.clear()
    # The forking thread's: the child's start empty (dropping the parent's closes nothing).
    with contextlib.suppress(AttributeError):
        del _owned.owned


os.register_at_fork(after_in_child=_forget_after_fork)
