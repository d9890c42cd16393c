"""The dashboard: counts for a window, the runs active now (live), a chart, per-job figures.

Every aggregate is bounded to the chosen window (an index range on ``created_at`` or
``finished_at``); the lists are bounded by LIMITs.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import OperationalError
from django.db.models import Count
from django.db.models.functions import TruncHour, TruncMinute
from django.http import HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import get_language, gettext_lazy, ngettext
from django.utils.translation import gettext as _

from django_jobstatus import conf
from django_jobstatus.admin.display import format_duration
from django_jobstatus.admin.monitors import health_panel
from django_jobstatus.fingerprints import last_line
from django_jobstatus.models import JobRun, Status
from django_jobstatus.querysets import MAX_AGE, aggregating

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

WINDOWS: dict[str, tuple[timedelta, Any]] = {
    "1h": (timedelta(hours=1), gettext_lazy("1 hour")),
    "24h": (timedelta(hours=24), gettext_lazy("24 hours")),
    "7d": (timedelta(days=7), gettext_lazy("7 days")),
}
DEFAULT_WINDOW = "24h"
# Seconds between two polls of the JSON view (?poll=0 switches polling off).
DEFAULT_POLL = 5
ACTIVE_LIMIT = 25
JOBS_LIMIT = 50
STUCK_LIMIT = 20
FAILURES_LIMIT = 10
# Seconds the aggregates of these windows are cached (see window_figures).
CACHED_WINDOWS = {"7d": 60}

CHART_WIDTH = 480
CHART_HEIGHT = 150


def _window(request: HttpRequest) -> str:
    value = request.GET.get("window", DEFAULT_WINDOW)
    return value if value in WINDOWS else DEFAULT_WINDOW


def _poll(request: HttpRequest) -> int:
    """Seconds between polls from ``?poll=`` (0 to 300); a bad value is a message and the default."""
    value = request.GET.get("poll", "")
    if not value:
        return DEFAULT_POLL
    # ASCII digits only: "²".isdigit() is True, but int("²") fails.
    if value.isascii() and value.isdigit():
        return min(int(value), 300)
    messages.warning(
        request,
        _("poll=%(value)r ignored: give a number of seconds from 0 to 300.")
        % {"value": value},
    )
    return DEFAULT_POLL


def _check(model_admin: Any, request: HttpRequest) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def _changelist(**params: str) -> str:
    url = reverse("admin:django_jobstatus_jobrun_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def active_runs() -> list[JobRun]:
    return list(JobRun.objects.active().order_by("-created_at", "-id")[:ACTIVE_LIMIT])


def active_rows() -> list[dict[str, Any]]:
    """The active runs as ``active_json``, each marked ``stale`` when stale() holds it (one more query)."""
    runs = active_runs()
    stale = set(
        JobRun.objects.stale()
        .filter(pk__in=[run.pk for run in runs])
        .values_list("pk", flat=True)
    )
    return [active_json(run) | {"stale": run.pk in stale} for run in runs]


def active_json(run: JobRun) -> dict[str, Any]:
    share = run.progress
    return {
        "id": str(run.pk),
        "job_name": run.job_name,
        "status": run.status,
        "status_label": str(run.get_status_display()),
        "kill_requested": run.kill_requested,
        # A share, 0 to 1, as in the API.
        "progress": None if share is None else round(share, 4),
        "progress_current": run.progress_current,
        "progress_total": run.progress_total,
        "step": run.step,
        "message": run.message[:200],
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "duration": format_duration(run.duration),
        "url": reverse("admin:django_jobstatus_jobrun_change", args=[run.pk]),
    }


def status_counts(since: datetime) -> dict[str, int]:
    rows = (
        JobRun.objects.filter(created_at__gte=since)
        .order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
    )
    found = dict(rows)
    return {status: found.get(status, 0) for status in Status.values}


def chart(since: datetime, now: datetime, window: str) -> dict[str, Any]:
    """Finished runs per bucket (an hour; five minutes for the 1 h window), succeeded vs failed vs other."""
    trunc: TruncMinute | TruncHour
    if window == "1h":
        size, trunc = timedelta(minutes=5), TruncMinute("finished_at")
    else:
        size, trunc = timedelta(hours=1), TruncHour("finished_at")
    first = since.replace(
        minute=since.minute - since.minute % 5 if window == "1h" else 0,
        second=0,
        microsecond=0,
    )
    buckets: dict[datetime, dict[str, int]] = {}
    moment = first
    while moment <= now:
        buckets[moment] = defaultdict(int)
        moment += size
    rows = (
        JobRun.objects.finished()
        .filter(finished_at__gte=first)
        .order_by()
        .annotate(bucket=trunc)
        .values_list("bucket", "status")
        .annotate(n=Count("pk"))
    )
    with aggregating(rows.db):
        fetched = list(rows)
    for bucket, status, n in fetched:
        if window == "1h":
            bucket = bucket.replace(minute=bucket.minute - bucket.minute % 5)
        kind = status if status in (Status.SUCCEEDED, Status.FAILED) else "other"
        if bucket in buckets:
            buckets[bucket][kind] += n
    peak = max((sum(b.values()) for b in buckets.values()), default=0) or 1
    count = len(buckets) or 1
    slot = CHART_WIDTH / count
    bar = max(slot * 0.75, 1.0)
    bars = []
    labels = []
    every = max(count // 8, 1)
    for i, (moment, values) in enumerate(buckets.items()):
        x = round(i * slot + (slot - bar) / 2, 2)
        y: float = CHART_HEIGHT
        parts = []
        for kind in (Status.SUCCEEDED, Status.FAILED, "other"):
            height = round(values.get(kind, 0) / peak * CHART_HEIGHT, 2)
            if height:
                y -= height
                parts.append({"kind": str(kind), "y": round(y, 2), "height": height})
        local = timezone.localtime(moment)
        title = _(
            "%(time)s: %(succeeded)d succeeded, %(failed)d failed, %(other)d killed or lost"
        ) % {
            "time": local.strftime("%Y-%m-%d %H:%M"),
            "succeeded": values.get(Status.SUCCEEDED, 0),
            "failed": values.get(Status.FAILED, 0),
            "other": values.get("other", 0),
        }
        bars.append({"x": x, "width": round(bar, 2), "parts": parts, "title": title})
        if i % every == 0:
            labels.append(
                {
                    "x": round(i * slot + slot / 2, 2),
                    "text": local.strftime("%H:%M" if window != "7d" else "%a %H:%M"),
                }
            )
    totals = {
        kind: sum(b.get(kind, 0) for b in buckets.values())
        for kind in (Status.SUCCEEDED, Status.FAILED, "other")
    }
    return {
        "bars": bars,
        "labels": labels,
        "peak": peak,
        "mid_y": CHART_HEIGHT / 2,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "totals": totals,
    }


def window_figures(since: datetime, now: datetime, window: str) -> dict[str, Any]:
    """stats() and the chart for the window; the long windows' figures are cached a little while.

    On a million runs, a week's stats() (exact percentiles) and chart read some
    200,000 rows: about a second. A week's figures do not move much in a minute, so
    they are kept in Django's default cache for CACHED_WINDOWS[window] seconds; the
    live parts (active runs, the JSON view) are never cached.
    """
    timeout = CACHED_WINDOWS.get(window)
    # Per language: the chart's bar titles are translated.
    key = f"django_jobstatus:dashboard:{window}:{get_language()}"
    if timeout:
        cached = cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
    runs = JobRun.objects.filter(created_at__gte=since)
    with aggregating(runs.db):  # both read the window's runs: one setting for the two
        figures = {
            "stats": runs.stats(),
            "chart": chart(since, now, window),
            "as_of": now,
        }
    if timeout:
        cache.set(key, figures, timeout)
    return figures


def job_table(stats: list[dict[str, Any]], window: str) -> list[dict[str, Any]]:
    """The window's stats() rows with each job's latest run (one query), busiest jobs first."""
    stats = [
        dict(row)
        for row in sorted(stats, key=lambda row: (-row["total"], row["job_name"]))[
            :JOBS_LIMIT
        ]
    ]
    latest = JobRun.objects.only(
        "pk", "job_name", "status", "created_at"
    ).latest_for_each(row["job_name"] for row in stats)
    for row in stats:
        row["latest"] = latest.get(row["job_name"])
        row["url"] = _changelist(job_name=row["job_name"], created=window)
        row["failed_url"] = _changelist(
            job_name=row["job_name"], created=window, status=Status.FAILED
        )
        row["failed"] = row["counts"][Status.FAILED]
        row["p50"] = (
            format_duration(timedelta(seconds=row["p50_duration"]))
            if row["p50_duration"] is not None
            else ""
        )
        row["p95"] = (
            format_duration(timedelta(seconds=row["p95_duration"]))
            if row["p95_duration"] is not None
            else ""
        )
        row["failure_pct"] = (
            None if row["failure_rate"] is None else round(row["failure_rate"] * 100, 1)
        )
    return stats


def dashboard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    _check(model_admin, request)
    window = _window(request)
    now = timezone.now()
    since = now - WINDOWS[window][0]
    figures = window_figures(since, now, window)
    counts = {
        status: sum(row["counts"][status] for row in figures["stats"])
        for status in Status.values
    }
    tabs = [
        {
            "status": status,
            "label": label,
            "count": counts[status],
            "url": _changelist(status=status, created=window),
        }
        for status, label in Status.choices
    ]
    failures = list(
        JobRun.objects.failed().order_by("-created_at", "-id")[:FAILURES_LIMIT]
    )
    for run in failures:
        run.error_line = last_line(run.error) or last_line(run.traceback)  # type: ignore[attr-defined]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Job dashboard"),
        "window": window,
        "windows": [(key, label) for key, (_delta, label) in WINDOWS.items()],
        "poll": _poll(request),
        "tabs": tabs,
        "total": sum(counts.values()),
        "active": active_rows(),
        "active_url": _changelist(status="active"),
        "chart": figures["chart"],
        "jobs": job_table(figures["stats"], window),
        "as_of": figures["as_of"] if window in CACHED_WINDOWS else None,
        "stuck": list(JobRun.objects.stale().order_by("heartbeat_at")[:STUCK_LIMIT]),
        "failures": failures,
        "failures_url": _changelist(status=Status.FAILED),
        "purge_url": purge_url(model_admin, request),
        "health": health_panel(),
    }
    return TemplateResponse(request, "django_jobstatus/dashboard.html", context)


def dashboard_data_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Live numbers for the dashboard's script: counts in the window and the active runs."""
    _check(model_admin, request)
    window = _window(request)
    now = timezone.now()
    counts = status_counts(now - WINDOWS[window][0])
    return JsonResponse(
        {
            "window": window,
            "generated_at": now.isoformat(),
            "counts": counts,
            "total": sum(counts.values()),
            "active": active_rows(),
            "stale": JobRun.objects.stale().count(),
        }
    )


# Purge now: the dry run first, then a confirming POST (needs delete_jobrun).


def purge_urls(model_admin: Any) -> list[Any]:
    view = model_admin.admin_site.admin_view
    return [
        path(
            "dashboard/purge/",
            view(lambda request: purge_view(model_admin, request)),
            name="django_jobstatus_jobrun_purge",
        )
    ]


def purge_url(model_admin: Any, request: HttpRequest) -> str | None:
    return (
        reverse("admin:django_jobstatus_jobrun_purge")
        if model_admin.has_delete_permission(request)
        else None
    )


class PurgeForm(forms.Form):
    """The purge page's ``days``: empty for the retention settings, else 0 to some 1000 years."""

    days = forms.FloatField(
        required=False, min_value=0, max_value=MAX_AGE.days, localize=False
    )


def purge_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """GET: what a purge would delete now (a dry run). POST: purge, then back to the dashboard.

    A bad ``days`` (abc, -5, nan, inf, 1e10) is an error on the page: never a fall-back to
    the retention settings that a POST would then execute.
    """
    if not model_admin.has_delete_permission(request):
        raise PermissionDenied
    form = PurgeForm(request.POST if request.method == "POST" else request.GET)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Purge old runs"),
        "form": form,
        "retention_days": conf.settings.RETENTION_DAYS,
        "retention": sorted(conf.settings.RETENTION.items()),
        "keep_last": conf.settings.KEEP_LAST,
    }
    if not form.is_valid():
        context |= {"preview": None, "days": form.data.get("days", "")}
        return TemplateResponse(
            request, "django_jobstatus/purge.html", context, status=400
        )
    days = form.cleaned_data["days"]
    if request.method == "POST":
        try:
            result = JobRun.objects.purge(days=days)
        except OperationalError as exc:
            # SQLite locked past the purge's retries: say so, never a server error.
            model_admin.message_user(
                request,
                _(
                    "The database stayed busy (%(error)s); the batches done are committed. Try again."
                )
                % {"error": exc},
                messages.ERROR,
            )
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_dashboard")
            )
        model_admin.message_user(
            request,
            _("Purged %(runs)s and %(logs)s.")
            % {
                "runs": ngettext("%(n)d run", "%(n)d runs", result.runs)
                % {"n": result.runs},
                "logs": ngettext("%(n)d log line", "%(n)d log lines", result.logs)
                % {"n": result.logs},
            },
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:django_jobstatus_jobrun_dashboard"))
    context |= {
        "preview": JobRun.objects.purge(days=days, dry_run=True),
        "days": "" if days is None else f"{days:g}",
    }
    return TemplateResponse(request, "django_jobstatus/purge.html", context)


class DashboardAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The admin index's "Dashboard" row: its changelist is the dashboard; JobRun's view permission opens it."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("django_jobstatus.view_jobrun"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:django_jobstatus_jobrun_dashboard"))
