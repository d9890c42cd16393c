"""Failures grouped by cause: the failed and lost runs of a window, one row per job and error fingerprint.

The grouping is one aggregate (``JobRunQuerySet.failure_groups``) over a partial index;
the fingerprint was computed when each run ended. A group can be retried (where an
integration can enqueue its runs again) or deleted as a whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import BadRequest, PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus import contrib, retention
from django_jobstatus.admin import actions
from django_jobstatus.admin.display import admin_url
from django_jobstatus.admin.guard import holds_nul
from django_jobstatus.admin.windows import WINDOWS, chosen, finished_since
from django_jobstatus.fingerprints import error_class
from django_jobstatus.models import JobRun

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from django_jobstatus.querysets import JobRunQuerySet

DEFAULT_WINDOW = "24h"
# Groups shown; the noisiest causes of a window are far fewer.
GROUPS_LIMIT = 200
# The query-string name of the changelist filter on a group's fingerprint.
FINGERPRINT_PARAM = "error_fingerprint"


def failures_urls(model_admin: Any) -> list[Any]:
    view = model_admin.admin_site.admin_view
    return [
        path(
            "failures/",
            view(lambda request: failures_view(model_admin, request)),
            name="django_jobstatus_jobrun_failures",
        ),
        path(
            "failures/retry/",
            view(lambda request: retry_group_view(model_admin, request)),
            name="django_jobstatus_jobrun_failures_retry",
        ),
        path(
            "failures/delete/",
            # Its batches commit one by one, under ATOMIC_REQUESTS too.
            retention.own_transactions(
                view(lambda request: delete_group_view(model_admin, request))
            ),
            name="django_jobstatus_jobrun_failures_delete",
        ),
    ]


def _window(params: Any) -> str:
    return chosen(params.get("window"), DEFAULT_WINDOW)


def group_runs(job_name: str, fingerprint: str, window: str) -> JobRunQuerySet:
    """The runs of one group: failed or lost, of ``job_name``, with ``fingerprint``, finished in the window."""
    return (
        JobRun.objects.failed_or_lost()
        .for_job(job_name)
        .filter(
            error_fingerprint=fingerprint,
            finished_at__gte=finished_since(window, timezone.now()),
        )
    )


def changelist_url(job_name: str, fingerprint: str, window: str) -> str:
    """The changelist of one group's runs that finished in ``window`` (the ones counted)."""
    url = admin_url("admin:django_jobstatus_jobrun_changelist")
    params = {"job_name": job_name, FINGERPRINT_PARAM: fingerprint, "finished": window}
    return f"{url}?{urlencode(params)}"


def failures_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    window = _window(request.GET)
    can_change = model_admin.has_change_permission(request)
    since = finished_since(window, timezone.now())
    groups = JobRun.objects.failure_groups(
        since, limit=GROUPS_LIMIT, retry_sources=contrib.sources()
    )
    shown = sum(group["count"] for group in groups)
    # Cut to GROUPS_LIMIT, the groups are not all the window's failures: count those (one
    # more query, only then).
    total = (
        JobRun.objects.failed_or_lost().filter(finished_at__gte=since).count()
        if len(groups) == GROUPS_LIMIT
        else shown
    )
    for group in groups:
        group["error_class"] = error_class(group["error_fingerprint"])
        group["url"] = changelist_url(
            group["job_name"], group["error_fingerprint"], window
        )
        group["can_retry"] = can_change and group["retryable"] > 0
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Failures by cause"),
        "window": window,
        "windows": [(key, window.last) for key, window in WINDOWS.items()],
        "groups": groups,
        "total": total,
        "shown": shown,
        "can_delete": model_admin.has_delete_permission(request),
    }
    return TemplateResponse(request, "django_jobstatus/failures.html", context)


def _posted_group(request: HttpRequest) -> tuple[str, str, str]:
    job_name = request.POST.get("job_name", "")
    fingerprint = request.POST.get("fingerprint", "")
    if not job_name:
        raise BadRequest(_("job_name is required: the group's job."))
    if holds_nul(job_name, fingerprint):
        raise BadRequest(_("null characters are not allowed"))
    return job_name, fingerprint, _window(request.POST)


def _back(window: str) -> HttpResponse:
    url = reverse("admin:django_jobstatus_jobrun_failures")
    return HttpResponseRedirect(f"{url}?{urlencode({'window': window})}")


def retry_group_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Enqueue again every run of a group whose integration can; report the others."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    job_name, fingerprint, window = _posted_group(request)
    # The changelist's retry action: the same checks and messages, over the group's runs.
    actions.retry(model_admin, request, group_runs(job_name, fingerprint, window))
    return _back(window)


def delete_group_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """A confirmation page, then (with ``confirm``) delete the group's runs and their log lines."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not model_admin.has_delete_permission(request):
        raise PermissionDenied
    job_name, fingerprint, window = _posted_group(request)
    # Failed and lost runs are finished: nothing active is ever deleted here.
    runs = group_runs(job_name, fingerprint, window).finished()
    if request.POST.get("confirm") != "yes":
        context = {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.opts,
            "title": _("Delete a group of failures"),
            "job_name": job_name,
            "fingerprint": fingerprint,
            "window": window,
            "count": runs.count(),
        }
        return TemplateResponse(
            request, "django_jobstatus/failures_delete.html", context
        )
    # The purge's short batches: a group may hold thousands of runs (the ORM's delete
    # read them all and deleted them in one transaction).
    count = retention.delete_finished(runs).runs
    model_admin.message_user(
        request,
        ngettext("Deleted %(n)d run.", "Deleted %(n)d runs.", count) % {"n": count},
        messages.SUCCESS,
    )
    return _back(window)
