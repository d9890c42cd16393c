"""Bulk actions on runs. Each declares the permission it needs and reports with message_user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_jobstatus import contrib, retention
from django_jobstatus.exceptions import RetryRefused

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
    retried = active = 0
    refused: dict[str, int] = {}
    # Judged where the retry is written: a replica (READ_DATABASE) may still have a run
    # that just failed active (skipped), or not have it at all.
    for run in cast("JobRunQuerySet", queryset).writing().iterator():
        if contrib.retry_refusal(run) is not None:
            active += 1
            continue
        if not contrib.can_retry(run):
            refused[run.source] = refused.get(run.source, 0) + 1
            continue
        try:
            contrib.retry(run)
        except RetryRefused as exc:
            modeladmin.message_user(
                request,
                _("Did not retry %(run)s: %(reason)s") % {"run": run, "reason": exc},
                messages.WARNING,
            )
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
    if active:
        modeladmin.message_user(
            request,
            ngettext(
                "Skipped %(n)d run: it is still active, and only finished runs are retried.",
                "Skipped %(n)d runs: they are still active, and only finished runs are retried.",
                active,
            )
            % {"n": active},
            messages.WARNING,
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
    """Django's delete_selected for finished runs only: its confirmation page (its template
    and context), then the deletion, each bounded whatever the selection.

    It keeps Django's name: the confirmation page posts ``action=delete_selected`` back,
    with ``select_across`` when every matching run was selected. Django's page counted
    every selected run, read them all whole and posted each id back (past
    DATA_UPLOAD_MAX_NUMBER_FIELDS, 1,000, the request was refused); its deletion read them
    all again and deleted them in one transaction. Here the page reads 100 runs and counts
    up to COUNT_CAP, and the runs go in the purge's short batches.
    """
    # Judged where the deletion is written: a replica (READ_DATABASE) may still have a run
    # that just finished active (refused), or not have it at all.
    queryset = queryset.writing()
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
    opts = modeladmin.model._meta
    shown, counts, perms_needed, protected = modeladmin.get_deleted_objects(
        finished, request
    )
    if request.POST.get("post") and not protected:
        if perms_needed:
            raise PermissionDenied
        # History for each batch's runs once they went: Django's action logged every
        # selected run first, and the purge skips a run another purge or a reaper holds.
        started = timezone.now()
        deleted = retention.delete_finished(
            finished, deleted=lambda runs: modeladmin.log_deletions(request, runs)
        ).runs
        modeladmin.message_user(
            request,
            _("Successfully deleted %(count)d %(items)s.")
            % {"count": deleted, "items": model_ngettext(opts, deleted)},
            messages.SUCCESS,
        )
        # The purge's rules keep some: say so, or the count above looks short. Those that
        # finished while it ran (a refused run that ended, one a filter now takes) were
        # never its to delete.
        kept = finished.filter(finished_at__lt=started).count()
        if kept:
            modeladmin.message_user(
                request,
                ngettext(
                    "Kept %(n)d finished run: a batch that has not ended still counts "
                    "it, or another process held it while the deletes ran. Delete it "
                    "again later.",
                    "Kept %(n)d finished runs: a batch that has not ended still counts "
                    "them, or another process held them while the deletes ran. Delete "
                    "them again later.",
                    kept,
                )
                % {"n": kept},
                messages.WARNING,
            )
        return None
    select_across = request.POST.get("select_across") in ("1", "True")
    runs = counts[str(opts.verbose_name_plural)]
    objects_name = str(model_ngettext(opts, runs if isinstance(runs, int) else 2))
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Cannot delete %(name)s") % {"name": objects_name}
        if perms_needed or protected
        else _("Delete multiple objects"),
        "subtitle": None,
        "objects_name": objects_name,
        "deletable_objects": [shown],
        "model_count": counts.items(),
        "perms_lacking": perms_needed,
        "protected": protected,
        "opts": opts,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
        # Posted back: every matching run (the changelist's filters are in the URL), or
        # the ids of the page's selection (a page of them at most).
        "select_across": select_across,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)[:1]
        if select_across
        else list(finished.values_list("pk", flat=True)),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(
        request,
        f"admin/{opts.app_label}/{opts.model_name}/delete_selected_confirmation.html",
        context,
    )
