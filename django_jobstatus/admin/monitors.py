"""Health in the admin: JobMonitor (editable), its incidents, the dashboard's panel, the runs' column."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db import router
from django.db.models import (
    Case,
    Count,
    IntegerField,
    OuterRef,
    Subquery,
    Value,
    When,
)
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_jobstatus import health
from django_jobstatus.admin.display import (
    MEDIA_CSS,
    MEDIA_JS,
    format_cell,
    format_duration,
    moment,
)
from django_jobstatus.admin.filters import (
    JOB_NAME_CHOICES,
    ChoiceFilter,
    request_job_names,
)
from django_jobstatus.admin.guard import GuardedAdmin
from django_jobstatus.models import JobMonitor, JobMonitorIncident, JobRun, MonitorState

if TYPE_CHECKING:
    from datetime import datetime

    from django.db.models import QuerySet
    from django.http import HttpRequest
    from django.utils.safestring import SafeString

# Incidents shown on a monitor's page; the rest are in the incidents' changelist.
RECENT_INCIDENTS = 20


def state_badge(state: str) -> SafeString:
    return format_cell(
        '<span class="jobstatus-badge jobstatus-monitor-{}">{}</span>',
        state,
        MonitorState(state).label,
    )


def _runs_url(job_name: str, **params: str) -> str:
    url = reverse("admin:django_jobstatus_jobrun_changelist")
    return f"{url}?{urlencode({'job_name': job_name, **params})}"


class StateFilter(admin.SimpleListFilter):
    title = gettext_lazy("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("unhealthy", _("Late, failing or slow")), *MonitorState.choices]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        if value == "unhealthy":
            return queryset.filter(state__in=MonitorState.UNHEALTHY)
        if value in MonitorState.values:
            return queryset.filter(state=value)
        return queryset


@admin.action(description=gettext_lazy("Check now"), permissions=["change"])
def check_now(
    model_admin: Any, request: HttpRequest, queryset: QuerySet[JobMonitor]
) -> None:
    names = list(queryset.values_list("job_name", flat=True))
    result = health.check(names)
    model_admin.message_user(
        request,
        _("Checked %(count)d monitors; %(changed)d changed state.")
        % {"count": len(result.assessments), "changed": len(result.changes)},
        messages.SUCCESS,
    )


class JobMonitorAdmin(GuardedAdmin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "job_name",
        "state_display",
        "cadence_display",
        "last_run_display",
        "next_expected_display",
        "incident_display",
        "enabled",
    )
    list_filter = (StateFilter, "enabled")
    search_fields = ("job_name",)
    ordering = ("job_name",)
    actions = (check_now,)
    readonly_fields = (
        "state_display",
        "state_changed_at",
        "checked_at",
        "enabled_at",
        "cadence_changed_at",
        "last_run_display",
        "next_expected_display",
        "incidents_display",
    )
    fieldsets = (
        (None, {"fields": ("job_name", "enabled")}),
        (
            gettext_lazy("Expected cadence"),
            {
                "fields": ("every", "cron", "grace"),
                "description": gettext_lazy(
                    "Give “every” or a cron expression (or neither, to watch only failures and durations)."
                ),
            },
        ),
        (
            gettext_lazy("Limits"),
            {"fields": ("max_duration", "max_duration_p95_factor", "max_failures")},
        ),
        (
            gettext_lazy("State"),
            {
                "fields": (
                    "state_display",
                    "state_changed_at",
                    "checked_at",
                    "enabled_at",
                    "cadence_changed_at",
                    "last_run_display",
                    "next_expected_display",
                    "incidents_display",
                )
            },
        ),
    )

    class Media:
        css = MEDIA_CSS
        js = MEDIA_JS

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, Any], set[str], list[Any]]:
        """The confirmation page's summary: the monitors, and their incidents counted.

        Deleting a monitor deletes its incidents (docs/health.md): the monitor's delete
        permission is enough, as in the API. Django's asked for the incidents' view and
        delete permissions too (a monitor that had ever failed could not be deleted
        without them), and listed each incident to a user who may not read them.
        """
        monitors = list(objs)
        shown: list[Any] = [
            format_html(
                '<a href="{}">{}</a>',
                reverse("admin:django_jobstatus_jobmonitor_change", args=[m.pk]),
                m,
            )
            for m in monitors
        ]
        incidents = JobMonitorIncident.objects.filter(
            monitor__in=[m.pk for m in monitors]
        ).count()
        counts = {str(JobMonitor._meta.verbose_name_plural): len(monitors)}
        if incidents:
            counts[str(JobMonitorIncident._meta.verbose_name_plural)] = incidents
        perms_needed = (
            set()
            if self.has_delete_permission(request)
            else {str(JobMonitor._meta.verbose_name)}
        )
        return shown, counts, perms_needed, []

    def get_queryset(self, request: HttpRequest) -> QuerySet[JobMonitor]:
        monitors = super().get_queryset(request)
        if request.method == "POST":
            # Read where the write goes: a replica (READ_DATABASE) may not have the state
            # a check just stored, nor a monitor just created.
            monitors = monitors.using(router.db_for_write(JobMonitor))
        return health.with_last_run(monitors)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """Without ``view_jobmonitorincident``, no incidents: their details quote runs'
        errors, which the incidents' own pages refuse to such a user."""
        fieldsets = super().get_fieldsets(request, obj)
        if _sees_incidents(request):
            return fieldsets
        return [
            (
                title,
                {
                    **options,
                    "fields": tuple(
                        field
                        for field in options["fields"]
                        if field != "incidents_display"
                    ),
                },
            )
            for title, options in fieldsets
        ]

    def save_model(
        self,
        request: HttpRequest,
        obj: JobMonitor,
        form: Any,
        change: bool,  # noqa: FBT001 (Django's signature)
    ) -> None:
        # A change saves the fields the form changed (and the stamps save() adds): a whole
        # save() wrote back the state as the form read it, over a check that stored
        # another meanwhile (the monitor healthy again with its incident open).
        obj.save(update_fields=form.changed_data if change else None)

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_display(self, monitor: JobMonitor) -> SafeString:
        return state_badge(monitor.state)

    @admin.display(description=gettext_lazy("cadence"))
    def cadence_display(self, monitor: JobMonitor) -> str:
        if monitor.every is not None:
            return _("every %(every)s") % {"every": format_duration(monitor.every)}
        return monitor.cron or "—"

    @admin.display(description=gettext_lazy("last run"), ordering="last_run_at")
    def last_run_display(self, monitor: JobMonitor) -> SafeString | str:
        run_id = getattr(monitor, "last_run_id", None)
        if run_id is None:
            return "—"
        when: datetime = monitor.last_run_at  # type: ignore[attr-defined]
        return format_html(
            '<a href="{}">{}</a> <span class="jobstatus-badge jobstatus-{}">{}</span>',
            reverse("admin:django_jobstatus_jobrun_change", args=[run_id]),
            moment(when, seconds=False),
            monitor.last_run_status,  # type: ignore[attr-defined]
            monitor.last_run_status,  # type: ignore[attr-defined]
        )

    @admin.display(description=gettext_lazy("next expected"))
    def next_expected_display(self, monitor: JobMonitor) -> SafeString | str:
        if monitor.pk is None:
            return "—"
        expected = health.expected_at(monitor)
        return moment(expected, seconds=False) if expected else "—"

    @admin.display(description=gettext_lazy("open incident"))
    def incident_display(self, monitor: JobMonitor) -> SafeString | str:
        incident = health.open_incident(monitor)
        if incident is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            reverse(
                "admin:django_jobstatus_jobmonitorincident_change", args=[incident.pk]
            ),
            _("since %(when)s")
            % {
                "when": timezone.localtime(incident.opened_at).strftime(
                    "%Y-%m-%d %H:%M"
                )
            },
        )

    @admin.display(description=gettext_lazy("incidents"))
    def incidents_display(self, monitor: JobMonitor) -> SafeString | str:
        if monitor.pk is None:
            return "—"
        incidents = list(
            monitor.incidents.order_by("-opened_at", "-id")[:RECENT_INCIDENTS]
        )
        if not incidents:
            return _("None yet.")
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse(
                        "admin:django_jobstatus_jobmonitorincident_change",
                        args=[incident.pk],
                    ),
                    incident.get_state_display(),
                    moment(incident.opened_at, seconds=False),
                    moment(incident.resolved_at, seconds=False)
                    if incident.resolved_at
                    else _("open"),
                    incident.detail,
                )
                for incident in incidents
            ),
        )
        every = reverse("admin:django_jobstatus_jobmonitorincident_changelist")
        return format_html(
            '<table class="jobstatus-incidents"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
            '<tbody>{}</tbody></table><p><a href="{}?{}">{}</a></p>',
            _("state"),
            _("opened"),
            _("resolved"),
            _("detail"),
            rows,
            every,
            urlencode({"monitor__id__exact": monitor.pk}),
            _("All incidents of this monitor"),
        )


class OpenFilter(admin.SimpleListFilter):
    title = gettext_lazy("open")
    parameter_name = "open"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Open")), ("no", _("Resolved"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() in ("yes", "no"):
            return queryset.filter(resolved_at__isnull=self.value() == "yes")
        return queryset


class JobMonitorIncidentAdmin(GuardedAdmin, admin.ModelAdmin):  # type: ignore[type-arg]
    """The incidents: a history to browse, written by the evaluation only."""

    list_display = (
        "monitor",
        "state_display",
        "opened_at",
        "resolved_at",
        "duration_display",
        "detail",
        "run_link",
    )
    list_filter = (OpenFilter, "state", "monitor")
    list_select_related = ("monitor",)
    ordering = ("-opened_at", "-id")
    date_hierarchy = "opened_at"
    fields = (
        "monitor",
        "state",
        "opened_at",
        "resolved_at",
        "resolved_to",
        "detail",
        "run_link",
        "open_alert_queued_at",
        "open_alert_at",
        "resolve_alert_queued_at",
        "resolve_alert_at",
    )
    readonly_fields = fields

    class Media:
        css = MEDIA_CSS
        js = MEDIA_JS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_display(self, incident: JobMonitorIncident) -> SafeString:
        return state_badge(incident.state)

    @admin.display(description=gettext_lazy("duration"))
    def duration_display(self, incident: JobMonitorIncident) -> str:
        return format_duration(incident.duration)

    @admin.display(description=gettext_lazy("run"))
    def run_link(self, incident: JobMonitorIncident) -> SafeString | str:
        if incident.run_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:django_jobstatus_jobrun_change", args=[incident.run_id]),
            str(incident.run_id)[:8],
        )


def _sees_incidents(request: HttpRequest) -> bool:
    """Whether the user may read incidents (``view_jobmonitorincident``): their details
    quote failed runs' errors. The monitors' pages and the dashboard's health panel follow
    it, as the API does (``api.permissions.sees_incidents``)."""
    opts = JobMonitorIncident._meta
    return bool(
        request.user.has_perm(
            f"{opts.app_label}.{get_permission_codename('view', opts)}"
        )
    )


# The dashboard's health panel.

_WORST_FIRST = Case(
    *(
        When(state=state, then=Value(index))
        for index, state in enumerate(MonitorState.UNHEALTHY)
    ),
    default=Value(len(MonitorState.UNHEALTHY)),
    output_field=IntegerField(),
)


def health_panel(request: HttpRequest) -> dict[str, Any] | None:
    """The dashboard's panel: late, failing and slow jobs first (with links), then counts; None without monitors.

    The reason (the open incident's detail) only for a user who may read incidents: it
    quotes failed runs' errors, which a user with ``view_jobrun`` alone does not see on
    the monitors' pages or in the API either.
    """
    counts = dict(
        JobMonitor.objects.order_by().values_list("state").annotate(n=Count("pk"))
    )
    if not counts:
        return None
    # The open incident's detail in the same query (the dashboard's bound is ten in all),
    # for a user who may read it; for another, no "why" column at all.
    reasons = _sees_incidents(request)
    detail: Subquery | Value = Value("")
    if reasons:
        detail = Subquery(
            JobMonitorIncident.objects.filter(
                monitor=OuterRef("pk"), resolved_at__isnull=True
            ).values("detail")[:1]
        )
    unhealthy = (
        JobMonitor.objects.filter(state__in=MonitorState.UNHEALTHY)
        .annotate(worst=_WORST_FIRST, open_detail=detail)
        .order_by("worst", "-state_changed_at", "job_name")
    )
    rows = []
    for monitor in unhealthy:
        rows.append(
            {
                "job_name": monitor.job_name,
                "state": monitor.state,
                "label": monitor.get_state_display(),
                "detail": monitor.open_detail or "",
                "since": monitor.state_changed_at,
                "runs_url": _runs_url(monitor.job_name),
                "monitor_url": reverse(
                    "admin:django_jobstatus_jobmonitor_change", args=[monitor.pk]
                ),
            }
        )
    changelist = reverse("admin:django_jobstatus_jobmonitor_changelist")
    return {
        "rows": rows,
        "reasons": reasons,
        "counts": [
            {
                "state": state,
                "label": label,
                "count": counts.get(state, 0),
                "url": f"{changelist}?{urlencode({'state': state})}",
            }
            for state, label in MonitorState.choices
        ],
        "url": changelist,
    }


# The runs' changelist: a monitor column and filter.


class MonitorFilter(ChoiceFilter):
    """Runs of the jobs whose monitor is in a state (or of monitored jobs at all, or not)."""

    title = gettext_lazy("monitor")
    parameter_name = "monitor"

    def __init__(
        self, request: HttpRequest, params: Any, model: Any, model_admin: Any
    ) -> None:
        self.request = request
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("any", _("Monitored")),
            ("unhealthy", _("Late, failing or slow")),
            *MonitorState.choices,
            ("none", _("Not monitored")),
        ]

    def apply(self, queryset: Any, value: str) -> Any:
        # The names first (one monitor a job: a short list), then their runs by the job
        # index. Asked as a subquery, the planner walked every run newest first looking
        # for those of a state no monitor was in (800 ms on a million runs).
        monitors = JobMonitor.objects.using(queryset.db)
        if value == "unhealthy":
            monitors = monitors.filter(state__in=MonitorState.UNHEALTHY)
        elif value in MonitorState.values:
            monitors = monitors.filter(state=value)
        names = set(monitors.values_list("job_name", flat=True))
        if value == "none":
            if not names:
                return queryset
            every = request_job_names(self.request, queryset.model, queryset.db)
            if len(every) > JOB_NAME_CHOICES:
                return queryset.exclude(job_name__in=sorted(names))
            # Every job's name is known: the others' runs are index ranges too, however
            # few they are.
            names = {name for name in every if name not in names}
        return queryset.filter(job_name__in=sorted(names)) if names else queryset.none()


@functools.cache
def _with_monitor_state(changelist: type) -> type:
    class ChangeListWithMonitors(changelist):  # type: ignore[misc]
        def get_queryset(
            self, request: HttpRequest, exclude_parameters: Any = None
        ) -> Any:
            states = JobMonitor.objects.filter(job_name=OuterRef("job_name"))
            return (
                super()
                .get_queryset(request, exclude_parameters)
                .annotate(monitor_state=Subquery(states.values("state")[:1]))
            )

    return ChangeListWithMonitors


class MonitorColumn:
    """For JobRunAdmin: the changelist's rows carry their job's monitor state (a subquery per shown row)."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> Any:
        return _with_monitor_state(super().get_changelist(request, **kwargs))  # type: ignore[misc]

    @admin.display(description=gettext_lazy("monitor"))
    def monitor_display(self, run: JobRun) -> SafeString | str:
        state = getattr(run, "monitor_state", None)
        return state_badge(state) if state else ""
