"""Integrations with task systems, and the kill/retry hooks they register.

Each integration module (``tasks``, ``celery``, ``rq``) has ``connect()`` and
``disconnect()`` and, when connected, registers a backend for its ``source`` so that the
admin and the API can stop a run through the real task system and enqueue it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from django.utils.translation import gettext as _

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from django_jobstatus.models import JobRun


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


def can_retry(run: JobRun) -> bool:
    """Whether the integration that recorded ``run`` can enqueue it again."""
    return run.source in _backends


def retry(run: JobRun) -> JobRun:
    """Enqueue ``run``'s job again; ValueError when no integration can."""
    backend = _backends.get(run.source)
    if backend is None:
        raise ValueError(_("Runs from source %(source)r cannot be retried: no integration for it is enabled.") % {"source": run.source})
    return backend.retry(run)


def request_kill(runs: QuerySet[JobRun]) -> int:
    """Ask the active runs among ``runs`` to stop, and tell their task systems; the number asked.

    The kill request is recorded first (cooperative kill); then each run recorded by an
    enabled integration is stopped through it (e.g. Celery's revoke with terminate).
    """
    from django_jobstatus.models import JobRun

    asked = runs.request_kill()
    if _backends:
        pks = runs.values("pk")
        for run in JobRun.objects.filter(pk__in=pks).active().filter(source__in=list(_backends)).iterator():
            _backends[run.source].kill(run)
    return asked
