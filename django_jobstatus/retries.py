"""Enqueueing a run again: the rule every retry (the API's, the admin's) applies first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils.translation import gettext as _

if TYPE_CHECKING:
    from django_jobstatus.models import JobRun


def refusal(run: JobRun) -> str | None:
    """Why ``run`` may not be enqueued again now, or None when it may.

    Only a finished run is retried: an active one would run twice at once.
    """
    if run.is_finished:
        return None
    return _("It is still %(status)s: only finished runs are retried.") % {
        "status": run.status
    }
