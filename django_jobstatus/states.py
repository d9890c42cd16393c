"""The states a run moves through, and the moves between them.

Nothing here imports a model, so the scopes (``querysets``), the checks and the handle
(``tracking``) use ``Status`` at import time; ``django_jobstatus.models`` re-exports it.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    RETRYING = "retrying", _("Retrying")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    KILLED = "killed", _("Killed")
    LOST = "lost", _("Lost")

    # Enum members cannot be declared in the class body as sets; they are set below.
    TERMINAL: ClassVar[frozenset[str]]
    ACTIVE: ClassVar[frozenset[str]]
    LEGAL_MOVES: ClassVar[dict[str, frozenset[str]]]

    @classmethod
    def sources_of(cls, target: str) -> list[str]:
        """The statuses a run may move to ``target`` from."""
        return sorted(
            source for source, targets in cls.LEGAL_MOVES.items() if target in targets
        )


Status.TERMINAL = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST}
)
Status.ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING})
Status.LEGAL_MOVES = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.KILLED}),
    Status.RUNNING: frozenset(
        {
            Status.SUCCEEDED,
            Status.FAILED,
            Status.RETRYING,
            Status.KILLED,
            Status.LOST,
            Status.RUNNING,
        }
    ),
    Status.RETRYING: frozenset({Status.QUEUED, Status.RUNNING, Status.KILLED}),
}

STATUS_LENGTH = max(len(value) for value in Status.values)
