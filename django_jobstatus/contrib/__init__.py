"""Integrations with task systems, and the kill/retry hooks they register.

Each integration module (``tasks``, ``celery``, ``rq``) has ``connect()`` and
``disconnect()`` and, when connected, registers a backend for its ``source`` so that the
admin and the API can stop a run through the real task system and enqueue it again.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from logging import getLogger
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

from django.db import InterfaceError, OperationalError
from django.utils.translation import gettext as _

from django_jobstatus.conf import settings

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from django_jobstatus.models import JobRun
    from django_jobstatus.querysets import JobRunQuerySet


# Not `import logging`: the name is the submodule django_jobstatus.contrib.logging.
logger = getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class Backend(Protocol):
    """What an integration offers for the runs it records."""

    def kill(self, run: JobRun) -> None:
        """Stop the run in the task system (its kill was already requested in the database)."""

    def retry(self, run: JobRun) -> JobRun:
        """Enqueue the run's job again with the same arguments; return the new run."""


_backends: dict[str, Backend] = {}


def register(source: str, backend: Backend) -> None:
    """Use ``backend`` for runs whose ``source`` is ``source`` (idempotent)."""
    _backends[source] = backend


def unregister(source: str) -> None:
    _backends.pop(source, None)


def retry_sources() -> list[str]:
    """The sources whose runs an enabled integration can enqueue again."""
    return sorted(_backends)


def can_retry(run: JobRun) -> bool:
    """Whether the integration that recorded ``run`` can enqueue it again."""
    return run.source in _backends


def retry(run: JobRun) -> JobRun:
    """Enqueue ``run``'s job again; ValueError when no integration can."""
    backend = _backends.get(run.source)
    if backend is None:
        raise ValueError(
            _(
                "Runs from source %(source)r cannot be retried: no integration for it is enabled."
            )
            % {"source": run.source}
        )
    return backend.retry(run)


def request_kill(runs: QuerySet[JobRun]) -> int:
    """Ask the active runs among ``runs`` to stop, and tell their task systems; the number asked.

    The kill request is recorded first (cooperative kill); then each run recorded by an
    enabled integration is stopped through it (e.g. Celery's revoke with terminate).
    """
    from django_jobstatus.models import JobRun

    asked: int = cast("JobRunQuerySet", runs).request_kill()
    if _backends:
        pks = runs.values("pk")
        for run in (
            JobRun.objects.filter(pk__in=pks)
            .active()
            .filter(source__in=list(_backends))
            .iterator()
        ):
            _backends[run.source].kill(run)
    return asked


# Helpers the integrations share.


def params_of(args: Any, kwargs: Any) -> dict[str, Any]:
    """A task's arguments as the run's ``params``: ``{"args": [...], "kwargs": {...}}``.

    Values JSON cannot hold are stored as their ``repr()`` (such a run cannot be retried
    with the same arguments).
    """
    params: dict[str, Any] = {"args": list(args or ()), "kwargs": dict(kwargs or {})}
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError):
        params = {
            "args": [jsonable(value) for value in params["args"]],
            "kwargs": {
                str(key): jsonable(value) for key, value in params["kwargs"].items()
            },
        }
    return params


def jsonable(value: Any) -> Any:
    """``value`` itself when JSON can hold it, else its ``repr()``."""
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
    from django_jobstatus.tracking import _reset_connection, tracking_database

    deadline = time.monotonic() + settings.FINISH_RETRY_TIMEOUT
    delay = 0.1
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError):
            _reset_connection(tracking_database())
            if time.monotonic() + delay > deadline:
                logger.exception(
                    "Could not record %s after %.0f s.",
                    what,
                    settings.FINISH_RETRY_TIMEOUT,
                )
                return None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
