"""The dashboard: finished runs of a window (tabs, chart, per job), runs active now, stuck runs,
failures grouped by cause and the health panel, all refreshed by polling its JSON view.

``DashboardMixin`` gives the runs' ModelAdmin its views. The window's finished runs come
from hourly roll-ups (``django_jobstatus.rollups``): two queries whatever the number of
runs; every other panel is bounded by a LIMIT or an index range. Ten queries in all
with monitors, the session and the user included.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import OperationalError
from django.db.models import (
    BooleanField,
    Case,
    ExpressionWrapper,
    Sum,
    Value,
    When,
    Window,
)
from django.http import HttpResponseRedirect, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus import conf, retention, rollups
from django_jobstatus.admin.display import (
    admin_url,
    elapsed_seconds,
    format_duration,
    run_url,
)
from django_jobstatus.admin.failures import changelist_url as group_url
from django_jobstatus.admin.filters import OR_ACTIVE
from django_jobstatus.admin.monitors import health_panel
from django_jobstatus.admin.windows import (
    DASHBOARD_WINDOWS,
    WINDOWS,
    chosen,
    finished_since,
)
from django_jobstatus.fingerprints import error_class
from django_jobstatus.models import JobRun, Status
from django_jobstatus.querysets import MAX_AGE, stale_condition, stale_timeout

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

DEFAULT_WINDOW = "24h"
# Seconds between two polls of the JSON view (?poll=0 switches polling off).
DEFAULT_POLL = 5
ACTIVE_LIMIT = 25
JOBS_LIMIT = 50
STUCK_LIMIT = 20
FAILURES_LIMIT = 10
# The chart's bars: five minutes in the 1 h window, an hour in the others.
BAR = {key: w.bar for key, w in WINDOWS.items() if w.bar < rollups.HOUR}

CHART_WIDTH = 480
CHART_HEIGHT = 150
# The chart's three colours: succeeded, failed, and the other ends.
KINDS = (Status.SUCCEEDED, Status.FAILED, "other")
# The panels the JSON view sends rendered (each template's root has data-panel="<name>").
PANELS = {
    "tabs": "django_jobstatus/dashboard/tabs.html",
    "chart": "django_jobstatus/dashboard/chart.html",
    "jobs": "django_jobstatus/dashboard/jobs.html",
    "stuck": "django_jobstatus/dashboard/stuck.html",
    "failures": "django_jobstatus/dashboard/failures.html",
    "health": "django_jobstatus/dashboard/health.html",
}


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


def _changelist(**params: str) -> str:
    url = admin_url("admin:django_jobstatus_jobrun_changelist")
    return f"{url}?{urlencode(params)}" if params else url


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
        "percent_done": run.percent_done,  # the label's figure (JobRun.percent_done)
        "progress_current": run.progress_current,
        "progress_total": run.progress_total,
        "step": run.step,
        "message": run.message[:200],
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "duration": format_duration(run.duration),
        "elapsed": elapsed_seconds(run),  # seconds, by the server's clock
        "url": run_url(run.pk),
    }


def active_now() -> tuple[list[dict[str, Any]], Counter[str], int]:
    """The newest active runs (each marked ``stale``), all active runs per status, and how many are stale.

    One query: the counts are window aggregates over every active run, taken before the LIMIT.
    """
    # stale()'s test, whose one subquery (the active children's parents) is not correlated:
    # a correlated EXISTS inside the window aggregates took seconds on a few hundred active runs.
    stale = stale_condition(stale_timeout())
    one_if = {
        f"n_{status}": Window(
            Sum(Case(When(status=status, then=Value(1)), default=Value(0)))
        )
        for status in Status.ACTIVE
    }
    runs = list(
        JobRun.objects.active()
        .annotate(
            stale=ExpressionWrapper(stale, output_field=BooleanField()),
            n_stale=Window(Sum(Case(When(stale, then=Value(1)), default=Value(0)))),
            **one_if,
        )
        .order_by("-created_at", "-id")[:ACTIVE_LIMIT]
    )
    counts: Counter[str] = Counter()
    stale_count = 0
    if runs:
        counts.update(
            {status: getattr(runs[0], f"n_{status}") for status in Status.ACTIVE}
        )
        stale_count = runs[0].n_stale  # type: ignore[attr-defined]
    rows = [active_json(run) | {"stale": run.stale} for run in runs]  # type: ignore[attr-defined]
    return rows, counts, stale_count


def chart(found: rollups.Figures, window: str) -> dict[str, Any]:
    """The window's finished runs per bar (an hour; five minutes for 1 h): succeeded, failed, other.

    ``bars`` holds each bar's SVG markup (a week has 169), built here: as a template loop
    it took 40 ms, and as dicts and Counters 10 ms. Only the title is text.
    """
    zone = timezone.get_current_timezone()
    rows = [
        (
            moment.astimezone(zone),
            values[Status.SUCCEEDED],
            values[Status.FAILED],
            values[Status.KILLED] + values[Status.LOST],
        )
        for moment, values in found.buckets.items()
    ]
    peak = max((sum(kinds) for _moment, *kinds in rows), default=0) or 1
    count = len(rows) or 1
    slot = CHART_WIDTH / count
    bar_width = max(slot * 0.75, 1.0)
    width = round(bar_width, 2)
    every = max(count // 8, 1)
    label_format = "%a %H:%M" if window == "7d" else "%H:%M"
    title_format = _(
        "%(time)s: %(succeeded)d succeeded, %(failed)d failed, %(other)d killed or lost"
    )
    bars, labels = [], []
    totals = [0, 0, 0]
    for i, (moment, *kinds) in enumerate(rows):
        x = round(i * slot + (slot - bar_width) / 2, 2)
        title = title_format % {
            "time": f"{moment:%Y-%m-%d %H:%M}",
            "succeeded": kinds[0],
            "failed": kinds[1],
            "other": kinds[2],
        }
        parts = [
            f'<g class="jobstatus-bar"><title>{escape(title)}</title>'
            f'<rect class="jobstatus-bar-hit" x="{x}" y="0" width="{width}" '
            f'height="{CHART_HEIGHT}"></rect>'
        ]
        y: float = CHART_HEIGHT
        for k, (kind, n) in enumerate(zip(map(str, KINDS), kinds, strict=True)):
            totals[k] += n
            height = round(n / peak * CHART_HEIGHT, 2)
            if height:
                y -= height
                parts.append(
                    f'<rect class="jobstatus-bar-{kind}" x="{x}" y="{round(y, 2)}" '
                    f'width="{width}" height="{height}"></rect>'
                )
        parts.append("</g>")
        bars.append("".join(parts))
        if i % every == 0:
            labels.append(
                {
                    "x": round(i * slot + slot / 2, 2),
                    "text": moment.strftime(label_format),
                }
            )
    return {
        "bars": bars,
        # The title is escaped, the rest are numbers and the kinds' fixed names.
        "svg": mark_safe("".join(bars)),  # noqa: S308
        "labels": labels,
        "peak": peak,
        "mid_y": CHART_HEIGHT / 2,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "totals": {str(kind): total for kind, total in zip(KINDS, totals, strict=True)},
    }


def _seconds(value: float | None) -> str:
    return "" if value is None else format_duration(timedelta(seconds=value))


def job_table(found: rollups.Figures, window: str) -> list[dict[str, Any]]:
    """The window's busiest jobs with their figures and latest run (one query)."""
    jobs = list(rollups.by_job(found).items())[:JOBS_LIMIT]
    latest = JobRun.objects.only(
        "pk", "job_name", "status", "created_at"
    ).latest_for_each(name for name, _figures in jobs)
    rows = []
    for name, figures in jobs:
        failed = figures.counts[Status.FAILED]
        p50, p95 = figures.percentiles(0.5, 0.95)
        rows.append(
            {
                "job_name": name,
                "total": figures.total,
                "counts": {status: figures.counts[status] for status in Status.values},
                "failed": failed,
                "failure_pct": round(failed / figures.total * 100, 1)
                if figures.total
                else None,
                "p50": _seconds(p50),
                "p95": _seconds(p95),
                "latest": latest.get(name),
                "latest_url": run_url(latest[name].pk) if name in latest else None,
                "url": _changelist(job_name=name, finished=window),
                "failed_url": _changelist(
                    job_name=name, finished=window, status=Status.FAILED
                ),
            }
        )
    return rows


def failure_groups(since: datetime, window: str, failures: int) -> list[dict[str, Any]]:
    """The window's failures grouped by job and cause, newest first (one query; two, only
    the newest groups counted, when the roll-ups say the window holds many ``failures``)."""
    groups = JobRun.objects.failure_groups(
        since, limit=FAILURES_LIMIT, window_failures=failures
    )
    for group in groups:
        text = group["error_fingerprint"]
        group["error_class"] = error_class(text)
        # "KeyError: '…'" shows as the class, then what follows it; no text: None.
        group["error_message"] = (
            text[len(group["error_class"]) :].lstrip(": ") if text else None
        )
        group["url"] = group_url(group["job_name"], group["error_fingerprint"], window)
    return groups


class DashboardMixin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The runs' admin's dashboard (``dashboard/``), its JSON (``dashboard/data/``) and purge page."""

    def dashboard_urls(self) -> list[Any]:
        def view(method: Any) -> Any:
            # Each commits its own transactions (roll-ups, purge batches).
            return retention.own_transactions(self.admin_site.admin_view(method))

        return [
            path(
                "dashboard/",
                view(self.dashboard_view),
                name="django_jobstatus_jobrun_dashboard",
            ),
            path(
                "dashboard/data/",
                view(self.dashboard_data_view),
                name="django_jobstatus_jobrun_dashboard_data",
            ),
            path(
                "dashboard/purge/",
                view(self.purge_view),
                name="django_jobstatus_jobrun_purge",
            ),
        ]

    def dashboard_panels(self, request: HttpRequest, window: str) -> dict[str, Any]:
        """Everything the panels show, for the page and for each poll of the JSON view."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        # From the whole bar: the runs the roll-ups count, and the ?finished= filter lists.
        since = finished_since(window, now)
        found = rollups.figures(since, now, WINDOWS[window].bar)
        active, active_counts, stale_count = active_now()
        counts = found.counts() + active_counts
        tabs = [
            {
                "status": status,
                "label": label,
                "count": counts[status],
                "url": _changelist(status=status)
                if status in Status.ACTIVE
                else _changelist(status=status, finished=window),
            }
            for status, label in Status.choices
        ]
        failures_url = reverse("admin:django_jobstatus_jobrun_failures")
        return {
            "window": window,
            "generated_at": now,
            "counts": {status: counts[status] for status in Status.values},
            "total": sum(counts.values()),
            "total_url": _changelist(finished=f"{window}{OR_ACTIVE}"),
            "tabs": tabs,
            "active": active,
            "stale": stale_count,
            "chart": chart(found, window),
            "hourly": window not in BAR,
            "jobs": job_table(found, window),
            "stuck": list(
                JobRun.objects.stale().order_by("heartbeat_at")[:STUCK_LIMIT]
            ),
            "failures": failure_groups(
                since, window, counts[Status.FAILED] + counts[Status.LOST]
            ),
            "failures_url": f"{failures_url}?{urlencode({'window': window})}",
            "health": health_panel(request),
        }

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        window = chosen(request.GET.get("window"), DEFAULT_WINDOW, DASHBOARD_WINDOWS)
        context = {
            **self.admin_site.each_context(request),
            **self.dashboard_panels(request, window),
            "opts": self.opts,
            "title": _("Job dashboard"),
            "windows": [(key, WINDOWS[key].label) for key in DASHBOARD_WINDOWS],
            "poll": _poll(request),
            "active_url": _changelist(status="active"),
            "purge_url": self.purge_url(request),
        }
        return TemplateResponse(request, "django_jobstatus/dashboard.html", context)

    def dashboard_data_view(self, request: HttpRequest) -> HttpResponse:
        """Every panel for the dashboard's script: the active runs as data, the others rendered."""
        window = chosen(request.GET.get("window"), DEFAULT_WINDOW, DASHBOARD_WINDOWS)
        panels = self.dashboard_panels(request, window)
        return JsonResponse(
            {
                "window": window,
                "generated_at": panels["generated_at"].isoformat(),
                "counts": panels["counts"],
                "total": panels["total"],
                "active": panels["active"],
                "stale": panels["stale"],
                "panels": {
                    name: render_to_string(template, panels, request)
                    for name, template in PANELS.items()
                },
            }
        )

    # Purge now: the dry run first, then a confirming POST (needs delete_jobrun).

    def purge_url(self, request: HttpRequest) -> str | None:
        return (
            reverse("admin:django_jobstatus_jobrun_purge")
            if self.has_delete_permission(request)
            else None
        )

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        """GET: what a purge would delete now (a dry run). POST: purge, then back to the dashboard.

        A bad ``days`` (abc, -5, nan, inf, 1e10) is an error on the page: never a fall-back to
        the retention settings that a POST would then execute.
        """
        if not self.has_delete_permission(request):
            raise PermissionDenied
        form = PurgeForm(request.POST if request.method == "POST" else request.GET)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
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
                self.message_user(
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
            self.message_user(
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
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_dashboard")
            )
        context |= {
            # Counted up to a cap: a million runs to go took 5 s to count in full.
            "preview": retention.preview(JobRun.objects.all(), days=days),
            "days": "" if days is None else f"{days:g}",
        }
        return TemplateResponse(request, "django_jobstatus/purge.html", context)


class PurgeForm(forms.Form):
    """The purge page's ``days``: empty for the retention settings, else 0 to some 1000 years."""

    days = forms.FloatField(
        required=False, min_value=0, max_value=MAX_AGE.days, localize=False
    )


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

    def get_urls(self) -> list[Any]:
        """Only the changelist (the index row's link): the proxy's other pages are 404.

        Django's change, history and delete pages of the proxy would show a run by id as the
        plain read-only form: its params, data and result unmasked, beside the run's own
        page that masks the REDACT_KEYS values.
        """
        return [
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_changelist",
            ),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:django_jobstatus_jobrun_dashboard"))
