"""Export all the runs the changelist's filters and search match, as CSV or JSON Lines (see ``export``).

Two ways in: the changelist's "Export all matching runs" links (no selection needed), and
the actions of the same name, which export every match of the current filters whatever
rows are ticked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_jobstatus import export
from django_jobstatus.admin.paginator import OLDER_VAR

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponseBase

    from django_jobstatus.models import JobRun

FORMAT_PARAM = "format"


def export_urls(model_admin: Any) -> list[Any]:
    return [
        path(
            "export/",
            model_admin.admin_site.admin_view(
                lambda request: export_view(model_admin, request)
            ),
            name="django_jobstatus_jobrun_export",
        )
    ]


def matching_runs(model_admin: Any, request: HttpRequest) -> QuerySet[JobRun]:
    """What the changelist at this query string lists (filters and search), on every page, newest first.

    Every page: without the "Older →" links' ``older=`` (a page reached through one links
    here with it), which would leave out the runs newer than that page.
    """
    query = request.GET.copy()
    query.pop(FORMAT_PARAM, None)
    query.pop(OLDER_VAR, None)
    request.GET = query  # type: ignore[assignment]
    changelist = model_admin.get_changelist_instance(request)
    runs: QuerySet[JobRun] = changelist.get_queryset(request)
    return runs.order_by("-created_at", "-id")


def export_view(model_admin: Any, request: HttpRequest) -> HttpResponseBase:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    file_format = request.GET.get(FORMAT_PARAM, "csv")
    if file_format not in export.FORMATS:
        # Text, not Django's default HTML: the message quotes the parameter as given.
        return HttpResponseBadRequest(
            _("format must be csv or jsonl, not %(value)r.") % {"value": file_format},
            content_type="text/plain; charset=utf-8",
        )
    try:
        runs = matching_runs(model_admin, request)
    except IncorrectLookupParameters:
        # What the changelist does with filters it cannot apply (Django's ?e=1).
        url = reverse("admin:django_jobstatus_jobrun_changelist")
        return HttpResponseRedirect(f"{url}?{ERROR_FLAG}=1")
    return export.response(runs, file_format)


def _action(file_format: str, label: Any) -> Any:
    @admin.action(description=label, permissions=["view"])
    def action(
        model_admin: Any, request: HttpRequest, queryset: QuerySet[JobRun]
    ) -> HttpResponseBase:
        return export.response(matching_runs(model_admin, request), file_format)

    action.__name__ = f"export_matching_{file_format}"
    return action


export_matching_csv = _action("csv", gettext_lazy("Export all matching runs (CSV)"))
export_matching_jsonl = _action(
    "jsonl", gettext_lazy("Export all matching runs (JSON Lines)")
)
