"""Bulk actions on runs. Each declares the permission it needs and reports with message_user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_jobstatus import contrib

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponse

    from django_jobstatus.models import JobRun
    from django_jobstatus.querysets import JobRunQuerySet, KillResult


def report_not_stopped(
    modeladmin: Any, request: HttpRequest, result: KillResult
) -> None:
    """Say which runs a kill could not stop through their task system, and why."""
    for problem in result.not_stopped:
        modeladmin.message_user(
            request,
            (
                _("Could not tell the task system to stop %(job)s (%(id)s): %(reason)s")
                if problem.error
                else _("Could not stop %(job)s (%(id)s): %(reason)s")
            )
            % {"job": problem.job_name, "id": problem.run_id, "reason": problem.reason},
            messages.ERROR if problem.error else messages.WARNING,
        )


@admin.action(
    description=gettext_lazy("Request kill (cooperative)"), permissions=["change"]
)
def request_kill(
    modeladmin: Any, request: HttpRequest, queryset: QuerySet[JobRun]
) -> None:
    selected = queryset.count()
    result = cast("JobRunQuerySet", queryset).request_kill()
    asked = result.asked
    skipped = selected - asked
    if asked:
        modeladmin.message_user(
            request,
            ngettext("Asked %(n)d run to stop.", "Asked %(n)d runs to stop.", asked)
            % {"n": asked},
            messages.SUCCESS,
        )
    if skipped:
        modeladmin.message_user(
            request,
            ngettext(
                "Skipped %(n)d run: it is finished or was already asked to stop.",
                "Skipped %(n)d runs: they are finished or were already asked to stop.",
                skipped,
            )
            % {"n": skipped},
            messages.WARNING,
        )
    report_not_stopped(modeladmin, request, result)


@admin.action(
    description=gettext_lazy("Mark as killed (forced)"), permissions=["change"]
)
def mark_killed(
    modeladmin: Any, request: HttpRequest, queryset: QuerySet[JobRun]
) -> None:
    selected = queryset.count()
    result = cast("JobRunQuerySet", queryset).request_kill(force=True)
    killed = result.killed
    skipped = selected - killed
    if killed:
        modeladmin.message_user(
            request,
            ngettext(
                "Marked %(n)d run as killed.", "Marked %(n)d runs as killed.", killed
            )
            % {"n": killed},
            messages.SUCCESS,
        )
    if skipped:
        modeladmin.message_user(
            request,
            ngettext(
                "Skipped %(n)d run: it is already finished.",
                "Skipped %(n)d runs: they are already finished.",
                skipped,
            )
            % {"n": skipped},
            messages.WARNING,
        )
    report_not_stopped(modeladmin, request, result)


@admin.action(description=gettext_lazy("Retry (enqueue again)"), permissions=["change"])
def retry(modeladmin: Any, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
    retried = 0
    refused: dict[str, int] = {}
    for run in queryset.iterator():
        if not contrib.can_retry(run):
            refused[run.source] = refused.get(run.source, 0) + 1
            continue
        try:
            contrib.retry(run)
        except Exception as exc:  # the integration's error is shown, not raised
            modeladmin.message_user(
                request,
                _("Could not retry %(run)s: %(error)s") % {"run": run, "error": exc},
                messages.ERROR,
            )
        else:
            retried += 1
    if retried:
        modeladmin.message_user(
            request,
            ngettext("Enqueued %(n)d run again.", "Enqueued %(n)d runs again.", retried)
            % {"n": retried},
            messages.SUCCESS,
        )
    for source, n in sorted(refused.items()):
        modeladmin.message_user(
            request,
            ngettext(
                "%(n)d run from source “%(source)s” cannot be retried: no enabled integration can enqueue it again.",
                "%(n)d runs from source “%(source)s” cannot be retried: no enabled integration can enqueue them again.",
                n,
            )
            % {"n": n, "source": source},
            messages.WARNING,
        )


@admin.action(
    description=gettext_lazy("Delete selected finished runs"), permissions=["delete"]
)
def delete_selected(
    modeladmin: Any, request: HttpRequest, queryset: Any
) -> HttpResponse | None:
    """Django's delete_selected (with its confirmation page), for finished runs only.

    It keeps Django's name: the confirmation page posts ``action=delete_selected`` back.
    """
    active = queryset.active().count()
    if active:
        modeladmin.message_user(
            request,
            ngettext(
                "Refused to delete %(n)d active run: stop it first.",
                "Refused to delete %(n)d active runs: stop them first.",
                active,
            )
            % {"n": active},
            messages.ERROR,
        )
    finished = queryset.finished()
    if not finished.exists():
        return None
    return django_delete_selected(modeladmin, request, finished)
