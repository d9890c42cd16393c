"""Workers seen through heartbeats: what each runs now, when it last beat, what it finished lately.

Two aggregates, each bounded: the running runs (partial index of the active states) and
the runs finished in the last hour (an index range on ``finished_at``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Q
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from django_jobstatus.clock import Ago
from django_jobstatus.conf import settings
from django_jobstatus.models import JobRun, Status

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

# Workers are "seen" when they beat or ended a run themselves this recently.
SEEN_WITHIN = timedelta(hours=1)


def workers_urls(model_admin: Any) -> list[Any]:
    return [
        path(
            "workers/",
            model_admin.admin_site.admin_view(
                lambda request: workers_view(model_admin, request)
            ),
            name="django_jobstatus_jobrun_workers",
        )
    ]


def workers(now: datetime) -> list[dict[str, Any]]:
    """One row per worker: ``worker``, ``running``, ``last_heartbeat``, ``finished``, ``failed``, ``silent``."""
    since = now - SEEN_WITHIN
    # Silent: nothing newer than the cutoff the reaper uses, on the heartbeats' clock.
    recent = Ago(timedelta(seconds=settings.HEARTBEAT_TIMEOUT))
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return rows.setdefault(
            name,
            {
                "worker": name,
                "running": 0,
                "last_heartbeat": None,
                "finished": 0,
                "failed": 0,
                "heard": 0,  # runs beaten for or finished since the cutoff
            },
        )

    running = (
        JobRun.objects.running()
        .exclude(worker="")
        .order_by()
        .values("worker")
        .annotate(
            n=Count("pk"),
            beat=Max("heartbeat_at"),
            heard=Count("pk", filter=Q(heartbeat_at__gte=recent)),
        )
    )
    for item in running:
        entry = row(item["worker"])
        entry["running"] = item["n"]
        entry["last_heartbeat"] = item["beat"]
        entry["heard"] = item["heard"]
    # An end the worker wrote itself. Not a lost run's (the reaper's clock), nor a kill
    # that was asked for: a forced kill ends the run on the killer's clock, and a job
    # that stops on request writes a heartbeat with its end.
    own_end = ~Q(status=Status.LOST) & ~Q(
        status=Status.KILLED, kill_requested_at__isnull=False
    )
    finished = (
        JobRun.objects.finished()
        .filter(finished_at__gte=since)
        .exclude(worker="")
        .order_by()
        .values("worker")
        .annotate(
            n=Count("pk"),
            failed=Count("pk", filter=Q(status=Status.FAILED)),
            beat=Max("heartbeat_at"),
            end=Max("finished_at", filter=own_end),
            heard=Count(
                "pk",
                filter=Q(heartbeat_at__gte=recent)
                | own_end & Q(finished_at__gte=recent),
            ),
        )
    )
    for item in finished:
        entry = row(item["worker"])
        entry["finished"] = item["n"]
        entry["failed"] = item["failed"]
        entry["heard"] += item["heard"]
        beats = [b for b in (entry["last_heartbeat"], item["beat"], item["end"]) if b]
        entry["last_heartbeat"] = max(beats) if beats else None
    result = []
    for entry in rows.values():
        beat = entry["last_heartbeat"]
        entry["silent"] = bool(entry["running"] and not entry.pop("heard"))
        if entry["running"] or (beat is not None and beat >= since):
            result.append(entry)
    return sorted(result, key=lambda e: (not e["silent"], -e["running"], e["worker"]))


def workers_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    changelist = reverse("admin:django_jobstatus_jobrun_changelist")
    rows = workers(timezone.now())
    for entry in rows:
        entry["url"] = f"{changelist}?{urlencode({'worker': entry['worker']})}"
        entry["running_url"] = (
            f"{changelist}?{urlencode({'worker': entry['worker'], 'status': 'running'})}"
        )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Workers"),
        "workers": rows,
        "heartbeat_timeout": settings.HEARTBEAT_TIMEOUT,
    }
    return TemplateResponse(request, "django_jobstatus/workers.html", context)
