"""Integrations with task systems, and the kill/retry hooks they register.

Each integration module (``tasks``, ``celery``, ``rq``) has ``connect()`` and
``disconnect()`` and, when connected, registers a backend for its ``source`` so that the
admin and the API can stop a run through the real task system and enqueue it again.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable
from logging import getLogger
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

from django.db import InterfaceError, OperationalError, transaction
from django.utils.translation import gettext as _

from django_jobstatus import writebehind
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import RetryRefused

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from django_jobstatus.models import JobRun
    from django_jobstatus.querysets import JobRunQuerySet, NotStopped


# Not `import logging`: the name is the submodule django_jobstatus.contrib.logging.
logger = getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class Backend(Protocol):
    """What an integration offers for the runs it records."""

    def kill(self, run: JobRun, *, force: bool = False) -> str | None:
        """Stop the run in the task system (its kill was already recorded in the database).

        Returns None when the task system took it, or why it cannot stop this run (e.g.
        a pool that cannot terminate a task); raises when the task system failed (e.g.
        its broker is down). ``force``: the run was just ended ``killed`` (it was running
        when ``run.started_at`` is set); stop it now if at all possible.
        """

    def retry(self, run: JobRun) -> JobRun:
        """Enqueue the run's job again with the same arguments; return the new run."""


_backends: dict[str, Backend] = {}


def register(source: str, backend: Backend) -> None:
    """Use ``backend`` for runs whose ``source`` is ``source`` (idempotent)."""
    _backends[source] = backend


def unregister(source: str) -> None:
    _backends.pop(source, None)


def sources() -> list[str]:
    """The sources an enabled integration can stop and retry runs of."""
    return sorted(_backends)


def can_retry(run: JobRun) -> bool:
    """Whether the integration that recorded ``run`` can enqueue it again."""
    return run.source in _backends


def retry_refusal(run: JobRun) -> str | None:
    """Why ``run`` may not be enqueued again now, or None when it may: the rule every
    retry (the API's, the admin's) applies first. Only a finished run is retried: an
    active one would run twice at once."""
    if run.is_finished:
        return None
    return _("It is still %(status)s: only finished runs are retried.") % {
        "status": run.status
    }


def retry(run: JobRun) -> JobRun:
    """Enqueue ``run``'s job again; ``RetryRefused`` (a ``ValueError``) when it cannot be.

    The new run keeps ``run``'s owner: a user who sees only their own runs follows the
    run their retry enqueued.
    """
    from django_jobstatus.models import JobRun, was_cut

    if was_cut(run.params):
        raise RetryRefused(
            _(
                "This run cannot be retried: its parameters were too big to keep (JSON_MAX_LENGTH)."
            )
        )
    if isinstance(run.params, dict) and run.params.get(REPR) is True:
        raise RetryRefused(
            _(
                "This run cannot be retried: some of its arguments were kept as text "
                "(their repr()), and its job would get that text in their place."
            )
        )
    if isinstance(run.params, dict) and run.params.get(RESHAPED) is True:
        raise RetryRefused(
            _(
                "This run cannot be retried: some of its arguments were a tuple or a "
                "mapping with keys that are not strings, which its parameters keep as a "
                "list or string keys, and its job would get those in their place."
            )
        )
    backend = _backends.get(run.source)
    if backend is None:
        raise RetryRefused(
            _(
                "Runs from source %(source)r cannot be retried: no integration for it is enabled."
            )
            % {"source": run.source}
        )
    # Written before the push, not behind it: the new run is there, queued, when the
    # caller (the admin, the API) shows it, even if a worker takes the job at once.
    with writebehind.inline(), _savepoint(settings.DATABASE):
        new = backend.retry(run)
        if run.owner_id is not None and new.owner_id is None:
            # The integrations record the new run from the task system's signals, which
            # know no owner. Only this column: a worker may already be writing the run.
            JobRun.objects.filter(pk=new.pk, owner=None).update(owner=run.owner_id)
            new.owner_id = run.owner_id
        return new


def _savepoint(using: str) -> Any:
    """A savepoint when a transaction is open (ATOMIC_REQUESTS): a database error in one
    retry rolls back that retry alone, not the runs that the retries before it recorded
    (and their callers listed). Outside one, nothing: each write commits as it did."""
    if transaction.get_connection(using).in_atomic_block:
        return transaction.atomic(using=using)
    return contextlib.nullcontext()


def stop(runs: Iterable[JobRun], *, force: bool = False) -> list[NotStopped]:
    """Hand each run to the task system that runs it; the runs it could not stop, and why.

    Called by ``JobRunQuerySet.request_kill()`` once the kill is recorded. A task
    system's error is logged and listed (``error=True``), never raised: the kill request
    stays recorded. Without ``force`` only errors are listed (a cooperative kill relies
    on the job); with ``force`` also the running runs that nothing can stop.
    """
    from django_jobstatus.querysets import NotStopped

    not_stopped: list[NotStopped] = []
    for run in runs:
        backend = _backends.get(run.source)
        if backend is None:
            if force and run.started_at is not None:
                not_stopped.append(
                    NotStopped(
                        run.pk,
                        run.job_name,
                        _(
                            "no enabled integration can stop a run from source “%(source)s”: "
                            "it stops at its next progress call or heartbeat, if it makes one."
                        )
                        % {"source": run.source},
                    )
                )
            continue
        try:
            reason = backend.kill(run, force=force)
        except Exception as exc:
            logger.exception(
                "Could not tell the task system (source %r) to stop run %s; its kill request is recorded.",
                run.source,
                run.pk,
            )
            not_stopped.append(
                NotStopped(
                    run.pk,
                    run.job_name,
                    _(
                        "the task system (source “%(source)s”) failed: %(error)s. The kill "
                        "request is recorded: the job stops at its next progress call."
                    )
                    % {"source": run.source, "error": exc},
                    error=True,
                )
            )
            continue
        if reason and force:
            not_stopped.append(NotStopped(run.pk, run.job_name, reason))
    return not_stopped


def request_kill(runs: QuerySet[JobRun]) -> int:
    """``runs.request_kill()``: kept for the code that called it here."""
    return cast("JobRunQuerySet", runs).request_kill()


# Helpers the integrations share.


def params_of(args: Any, kwargs: Any, *, exact: bool = False) -> dict[str, Any]:
    """A task's arguments as the run's ``params``: ``{"args": [...], "kwargs": {...}}``.

    Values JSON cannot hold are stored as their ``repr()``, one by one (see
    ``jsonable()``), and ``"repr": true`` says so: such a run is not retried, since its
    job would get other arguments (a ``str`` for a ``datetime``).

    ``exact``: the task system hands the job its arguments as they were given (RQ
    pickles them), not as JSON gives them back. A tuple, or a dict key that is not a
    string, comes back from JSON a list or a string key: ``"reshaped": true`` says so,
    and such a run is not retried either (the job would get ``{"1": …}`` for ``{1: …}``).
    """
    given = list(args or ())
    named = dict(kwargs or {})
    params = {"args": given, "kwargs": named}
    stored: dict[str, Any] = jsonable(params)
    if stored is not params:
        stored[REPR] = True
    if exact and _reshaped([*given, *named.values()], 0):
        stored[RESHAPED] = True
    return stored


# The keys of params that say some of its values are their repr(), or come back from JSON
# other than they were given (see params_of()).
REPR = "repr"
RESHAPED = "reshaped"


def _reshaped(value: Any, depth: int) -> bool:
    """Whether JSON gives ``value`` back other than it is: a tuple as a list, a dict key
    that is not a string as a string (deeper than ``_MAX_DEPTH``: not looked at)."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, tuple):
        return True
    if isinstance(value, dict):
        return any(
            not isinstance(key, str) or _reshaped(item, depth + 1)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_reshaped(item, depth + 1) for item in value)
    return False


# Deeper than this, a value is not walked (JSON itself gives up near 1,000 levels).
_MAX_DEPTH = 100


def jsonable(value: Any) -> Any:
    """``value`` itself when JSON can hold it, else a copy where each value JSON cannot
    hold, at any depth, is its ``repr()``.

    Dicts and lists stay dicts and lists, so REDACT_KEYS still finds their keys: a token
    beside a ``Decimal`` in one argument was stored inside one ``repr()`` string, and
    shown in clear.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _jsonable_leaves(value, frozenset())
    return value


def _jsonable_leaves(value: Any, within: frozenset[int]) -> Any:
    if isinstance(value, dict | list | tuple):
        if id(value) in within or len(within) >= _MAX_DEPTH:
            # Not its repr(): that would show, as text, the keys REDACT_KEYS masks.
            return f"<{type(value).__name__} within itself or too deep>"
        within |= {id(value)}
        if isinstance(value, dict):
            return {
                str(key): _jsonable_leaves(item, within) for key, item in value.items()
            }
        return [_jsonable_leaves(item, within) for item in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def never_raises(receiver: Callable[P, R]) -> Callable[P, R | None]:
    """Wrap a receiver so that an error in it is logged and never reaches the task system."""

    @functools.wraps(receiver)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return receiver(*args, **kwargs)
        except Exception:
            logger.exception(
                "django-jobstatus could not record a task event in %s; the task goes on.",
                receiver.__qualname__,
            )
            return None

    return wrapper


def durably(action: Callable[[], R], what: str) -> R | None:
    """Run ``action`` (a database write), retrying for FINISH_RETRY_TIMEOUT seconds while the database is away.

    Returns None, after logging, when it never came back.
    """
    from django_jobstatus.tracking import while_database_away

    try:
        return while_database_away(
            lambda alias: action(), timeout=settings.FINISH_RETRY_TIMEOUT
        )
    except (OperationalError, InterfaceError):
        logger.exception(
            "Could not record %s after %.0f s.", what, settings.FINISH_RETRY_TIMEOUT
        )
        return None
