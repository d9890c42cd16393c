"""A run's page, live: a small JSON of its status, progress, step, message and new log lines.

The page's script (``js/run.js``) polls it while the run is active and the tab visible;
it needs the same view permission as the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils import timezone

from django_jobstatus.admin.display import format_duration
from django_jobstatus.models import JobLog

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from django_jobstatus.models import JobRun

# Log lines one answer carries at most: the oldest after ``?after=``, and ``more`` when
# others follow (the page asks again at once).
TAIL = 50
# Seconds between two polls of a run's page (``?poll=`` changes it, 1 to 60).
DEFAULT_POLL = 2


def live_urls(model_admin: Any) -> list[Any]:
    return [
        path(
            "<path:object_id>/live/",
            model_admin.admin_site.admin_view(
                lambda request, object_id: live_view(model_admin, request, object_id)
            ),
            name="django_jobstatus_jobrun_live",
        )
    ]


def poll_seconds(request: HttpRequest) -> int:
    value = _whole(request.GET.get("poll", ""))
    return DEFAULT_POLL if value is None else min(max(value, 1), 60)


def _whole(value: str) -> int | None:
    return (
        int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None
    )


def run_json(run: JobRun) -> dict[str, Any]:
    return {
        "id": str(run.pk),
        "status": run.status,
        "status_label": str(run.get_status_display()),
        "is_active": run.is_active,
        "kill_requested": run.kill_requested,
        "progress": run.progress,
        "percent_done": run.percent_done,
        "progress_current": run.progress_current,
        "progress_total": run.progress_total,
        "step": run.step,
        "message": run.message,
        "error": run.error,
        "duration": format_duration(run.duration),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "updated_at": run.updated_at.isoformat(),
    }


def live_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """``?after=<log id>``: the lines after it, oldest first, at most TAIL, with ``more``
    when there are others; ``?log_level=<n>``: lines of that level and above.

    The page moves ``after`` to the last line it was given: lines come in the order of
    their ids, the order ``after`` counts in, so none is ever skipped. (The newest TAIL
    lines lost those in between when more than TAIL arrived between two polls.)
    """
    run = get_object_or_404(
        model_admin.get_queryset(request), pk=model_admin.to_field_pk(object_id)
    )
    if not model_admin.has_view_permission(request, run):
        raise PermissionDenied
    lines = JobLog.objects.for_run(run)
    after = _whole(request.GET.get("after", ""))
    if after is not None:
        lines = lines.filter(pk__gt=after)
    level = _whole(request.GET.get("log_level", ""))
    if level is not None:
        lines = lines.at_least(level)
    batch = list(lines.order_by("id")[: TAIL + 1])
    return JsonResponse(
        {
            "run": run_json(run),
            "more": len(batch) > TAIL,
            "logs": [
                {
                    "id": line.pk,
                    "created_at": line.created_at.isoformat(),
                    "time": timezone.localtime(line.created_at).strftime(
                        "%Y-%m-%d %H:%M:%S"
                    ),
                    "level": line.level,
                    "level_name": line.level_name,
                    "message": line.message,
                }
                for line in batch[:TAIL]
            ],
        }
    )
