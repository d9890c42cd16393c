"""Database connections of the app's own: kept open across tasks, checked after an error, never shared with a fork.

A worker would otherwise connect again for every task: Celery's Django fixup closes every
connection Django knows of around each task, and the job's own connection may be inside
the job's transaction. An own connection is a second connection to the same database
(autocommit, and on PostgreSQL a lock timeout, so that a write never waits for ever on a
row the job's transaction holds). It lives in the thread that made it, under an alias
that is not in ``DATABASES`` (``"default__jobstatus_tracking"``…), so that
``connections.all()`` — and with it Celery's fixup and ``close_old_connections()`` —
never sees it. It stays open (CONN_MAX_AGE = None) and follows Django's own checks:
after a database error it is tested (``is_usable()``) before it is used again, and
CONN_HEALTH_CHECKS applies when the database's settings turn it on.

A process that forks must not let its child use, or close, the parent's connection: the
child forgets every own connection it inherited (without closing it, which would end the
parent's session too) and opens its own when it needs one.
"""

from __future__ import annotations

import contextlib
import os
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

# Every own connection made in this process: (alias, wrapper).
_made: list[tuple[str, BaseDatabaseWrapper]] = []
# Those a forked child inherited: kept referenced, so that they are never closed here.
_inherited: list[BaseDatabaseWrapper] = []


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
    """Close this thread's own connections (for ``purpose``, or all)."""
    for name, wrapper in _made:
        if purpose is None or name.endswith(f"__jobstatus_{purpose}"):
            with contextlib.suppress(Exception):
                if connections[name] is wrapper:
                    wrapper.close()


def _forget_after_fork() -> None:
    """In a forked child: drop the inherited own connections, unclosed (closing would end the parent's session)."""
    global _made
    for name, wrapper in _made:
        _inherited.append(wrapper)
        with contextlib.suppress(AttributeError, ConnectionDoesNotExist):
            del connections[name]
    _made = []


os.register_at_fork(after_in_child=_forget_after_fork)
