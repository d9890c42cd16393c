"""JobRunAdmin: the changelist, a run's page with its newest logs, and the per-run buttons."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_jobstatus import contrib
from django_jobstatus.admin import (
    actions,
    exports,
    failures,
    live,
    workers,
)
from django_jobstatus.admin.dashboard import DashboardMixin
from django_jobstatus.admin.display import (
    MEDIA_CSS,
    MEDIA_JS,
    duration_cell,
    error_line,
    format_cell,
    format_duration,
    moment,
    pretty_json,
    progress_bar,
    shorten,
    status_badge,
)
from django_jobstatus.admin.filters import (
    JOB_NAME_CHOICES,
    LEVELS,
    CreatedWithinFilter,
    FailureGroupFilter,
    FinishedWithinFilter,
    HasErrorsFilter,
    JobNameFilter,
    KillRequestedFilter,
    QueueFilter,
    SourceFilter,
    StatusFilter,
    WorkerFilter,
    level_number,
    request_job_names,
)
from django_jobstatus.admin.guard import GuardedAdmin
from django_jobstatus.admin.monitors import MonitorColumn, MonitorFilter
from django_jobstatus.admin.paginator import (
    COUNT_CAP,
    BigTableAdmin,
    CappedCountPaginator,
    search_words,
)
from django_jobstatus.exceptions import RetryRefused
from django_jobstatus.models import JobLog, JobRun, Status, attempt_time

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponse
    from django.utils.safestring import SafeString

    from django_jobstatus.querysets import JobRunQuerySet


def _attempt_moment(text: Any) -> SafeString | str:
    """An ``attempts`` entry's moment in the current time zone (stored as UTC text)."""
    when = attempt_time(text)
    return moment(when) if when is not None else "—"


# Log lines shown on a run's page; the rest are in the JobLog changelist.
INLINE_LOGS = 200


# A bulk delete's confirmation page counts the runs' log lines up to SUMMARY_LINES.
SUMMARY_LINES = 1_000


def _capped(
    n: int, *, cap: int | None = None, reached: bool | None = None
) -> int | str:
    """A count made up to ``cap`` (COUNT_CAP) + 1: ``n``, or "at least" (``10,000+``) once
    it went past the cap (``reached``, when ``n`` is not the count itself)."""
    if reached is None:
        reached = n > (COUNT_CAP if cap is None else cap)
    if reached:
        return f"{number_format(n - 1, force_grouping=True)}+"
    return n


class JobRunAdmin(
    MonitorColumn,
    BigTableAdmin,
    GuardedAdmin,
    DashboardMixin,
    admin.ModelAdmin,  # type: ignore[type-arg]
):
    list_display = (
        "job_name",
        "status_display",
        "progress_display",
        "message_display",
        "created_display",
        "duration_display",
        "source",
        "monitor_display",
    )
    list_display_links = ("job_name",)
    list_filter = (
        StatusFilter,
        JobNameFilter,
        SourceFilter,
        HasErrorsFilter,
        KillRequestedFilter,
        CreatedWithinFilter,
        FinishedWithinFilter,
        MonitorFilter,
        WorkerFilter,
        QueueFilter,
        FailureGroupFilter,
    )
    search_fields = ("id", "job_name", "backend_job_id", "subject", "message")
    search_help_text = gettext_lazy(
        "A run id, a backend job id, a subject, a job name or a part of one, or words of the message."
    )
    ordering = ("-created_at", "-id")
    sortable_by = ("job_name", "created_display")
    list_per_page = 50
    view_on_site = False
    # Big tables: no COUNT(*) of the whole table, no per-filter counts, counts capped.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator

    # No foreign key is shown in the list: nothing to join.
    list_select_related = False
    actions = (
        actions.request_kill,
        actions.mark_killed,
        actions.retry,
        actions.delete_selected,
        exports.export_matching_csv,
        exports.export_matching_jsonl,
    )
    change_list_template = "admin/django_jobstatus/jobrun/change_list.html"
    change_form_template = "admin/django_jobstatus/jobrun/change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "job_name",
                    "status_display",
                    "message",
                    "id",
                    "source",
                    "backend_job_id",
                    "queue",
                    "priority",
                    "subject",
                    "owner",
                    "worker",
                )
            },
        ),
        (
            gettext_lazy("Progress"),
            {
                "fields": (
                    "progress_detail",
                    "step",
                    "kill_requested_at",
                )
            },
        ),
        (gettext_lazy("Timeline"), {"fields": ("timeline_display",)}),
        (
            gettext_lazy("Arguments and result"),
            {"fields": ("params_display", "data_display", "result_display")},
        ),
        (
            gettext_lazy("Error"),
            {
                "fields": (
                    "has_errors_display",
                    "error",
                    "traceback_display",
                    "attempt",
                    "attempts_display",
                )
            },
        ),
        (gettext_lazy("Batch"), {"fields": ("parent", "children_display")}),
    )

    class Media:
        css = MEDIA_CSS
        js = MEDIA_JS

    # Read-only: runs are written by jobs, changed only through actions.

    def get_readonly_fields(
        self, request: HttpRequest, obj: JobRun | None = None
    ) -> list[str]:
        fields = [field.name for field in self.opts.fields]
        shown = [
            str(name)
            for _title, options in self.fieldsets
            for name in options["fields"]
        ]
        return [*fields, *(name for name in shown if name not in fields)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: JobRun | None = None
    ) -> bool:
        if obj is not None and obj.is_active:
            return False
        if (
            obj is not None
            and JobRun.objects.writing().filter(pk=obj.pk).held_by_batch().exists()
        ):
            # A batch that has not ended still counts it (as the purge and the bulk
            # delete, which keep it): without it, the batch would add up short.
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, Any], set[str], list[Any]]:
        """The confirmation page's summary: the first 100 runs, and the runs and their log
        lines counted up to COUNT_CAP (a selection may be every run, a run may have
        100,000 lines). Django's lists every run and every line."""
        runs = (
            objs
            if isinstance(objs, QuerySet)
            # A run's "Delete": counted where it is deleted, as the run was read.
            else JobRun.objects.writing().filter(pk__in=[run.pk for run in objs])
        ).order_by()
        first = list(runs.only("pk", "job_name", "status")[:100])
        total = runs.values("pk")[: COUNT_CAP + 1].count()
        shown: list[Any] = [
            format_html(
                '<a href="{}">{}</a>',
                reverse("admin:django_jobstatus_jobrun_change", args=[run.pk]),
                run,
            )
            for run in first
        ]
        if total > len(first):
            more = total - len(first)
            shown.append(
                ngettext("… and %(n)s more run", "… and %(n)s more runs", more)
                % {"n": _capped(more, reached=total > COUNT_CAP)}
            )
        # The lines of scattered runs cost an index probe a run: counted up to 10,000, the
        # page took 112 ms for the 80,000 failed runs of a million; up to 1,000, 36 ms.
        lines = (
            JobLog.objects.using(runs.db)
            .filter(run__in=runs.values_list("pk", flat=True))
            .order_by()[: SUMMARY_LINES + 1]
            .count()
        )
        counts = {
            str(JobRun._meta.verbose_name_plural): _capped(total),
            str(JobLog._meta.verbose_name_plural): _capped(lines, cap=SUMMARY_LINES),
        }
        perms_needed = (
            set()
            if self.has_delete_permission(request)
            else {str(JobRun._meta.verbose_name)}
        )
        return shown, counts, perms_needed, []

    # Columns.

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_display(self, run: JobRun) -> SafeString:
        # The attempt shows here when it is not the first (a column of 1s took room).
        if run.attempt > 1:
            return format_cell(
                '{}<div class="jobstatus-sub jobstatus-attempt">{}</div>',
                status_badge(run),
                _("attempt %(n)d") % {"n": run.attempt},
            )
        return status_badge(run)

    @admin.display(description=gettext_lazy("progress"))
    def progress_display(self, run: JobRun) -> SafeString:
        return progress_bar(run)

    @admin.display(description=gettext_lazy("progress"))
    def progress_detail(self, run: JobRun) -> SafeString:
        return progress_bar(run, counts=True)

    @admin.display(description=gettext_lazy("message"))
    def message_display(self, run: JobRun) -> SafeString | str:
        # A failed run shows why it failed, not the last progress message it wrote.
        if run.status == Status.FAILED and run.error:
            return format_cell(
                '<span class="jobstatus-error-line">{}</span>',
                shorten(error_line(run.error), 80),
            )
        return shorten(run.message, 80)

    @admin.display(description=gettext_lazy("has errors"))
    def has_errors_display(self, run: JobRun) -> SafeString | str:
        """A neutral marker: "errors logged" says nothing of the outcome (a run may succeed after one)."""
        if not run.has_errors:
            return "—"
        return format_html(
            '<span class="jobstatus-errors-logged">⚠ {}</span>', _("errors logged")
        )

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created_display(self, run: JobRun) -> SafeString:
        return moment(run.created_at, seconds=False)

    @admin.display(description=gettext_lazy("duration"))
    def duration_display(self, run: JobRun) -> SafeString:
        return duration_cell(run)

    # A run's page.

    @admin.display(description=gettext_lazy("timeline"))
    def timeline_display(self, run: JobRun) -> SafeString:
        steps = [
            (_("created"), run.created_at),
            (_("queued"), run.queued_at),
            (_("due"), run.due_at),
            (_("started"), run.started_at),
            (_("last heartbeat"), run.heartbeat_at),
            (_("kill requested"), run.kill_requested_at),
            (_("finished"), run.finished_at),
        ]
        items = format_html_join(
            "",
            '<li class="{}"><span class="jobstatus-timeline-label">{}</span> <time datetime="{}">{}</time></li>',
            (
                (
                    "done" if when else "pending",
                    label,
                    when.isoformat() if when else "",
                    when.strftime("%Y-%m-%d %H:%M:%S %Z") if when else "—",
                )
                for label, when in (
                    (label, when and timezone.localtime(when)) for label, when in steps
                )
            ),
        )
        return format_html(
            '<ol class="jobstatus-timeline">{}</ol><p>{}: {} · {}: {}</p>',
            items,
            _("waiting"),
            format_duration(run.waiting) or "—",
            _("duration"),
            duration_cell(run) if run.started_at else "—",
        )

    @admin.display(description=gettext_lazy("parameters"))
    def params_display(self, run: JobRun) -> SafeString:
        return pretty_json(run.params)

    @admin.display(description=gettext_lazy("data"))
    def data_display(self, run: JobRun) -> SafeString:
        return pretty_json(run.data)

    @admin.display(description=gettext_lazy("result"))
    def result_display(self, run: JobRun) -> SafeString:
        return pretty_json(run.result)

    @admin.display(description=gettext_lazy("traceback"))
    def traceback_display(self, run: JobRun) -> SafeString | str:
        return (
            format_html('<pre class="jobstatus-traceback">{}</pre>', run.traceback)
            if run.traceback
            else "—"
        )

    @admin.display(description=gettext_lazy("earlier attempts"))
    def attempts_display(self, run: JobRun) -> SafeString | str:
        if not run.attempts:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    a.get("attempt", ""),
                    a.get("status", ""),
                    _attempt_moment(a.get("started_at")),
                    _attempt_moment(a.get("finished_at")),
                    a.get("worker", ""),
                    a.get("error", ""),
                )
                for a in run.attempts
                if isinstance(a, dict)
            ),
        )
        return format_html(
            '<table class="jobstatus-attempts"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>',
            _("attempt"),
            _("outcome"),
            _("started"),
            _("finished"),
            _("worker"),
            _("error"),
            rows,
        )

    @admin.display(description=gettext_lazy("children"))
    def children_display(self, run: JobRun) -> SafeString | str:
        counts = run.children.count_by_status()
        if not counts:
            return "—"
        url = (
            reverse("admin:django_jobstatus_jobrun_changelist")
            + "?"
            + urlencode({"parent": str(run.pk)})
        )
        parts = format_html_join(
            " ",
            '<span class="jobstatus-badge jobstatus-{}">{} {}</span>',
            ((s, counts[s], label) for s, label in Status.choices if s in counts),
        )
        return format_html(
            '{} <a href="{}">{}</a>',
            parts,
            url,
            ngettext("%(n)d child", "%(n)d children", sum(counts.values()))
            % {"n": sum(counts.values())},
        )

    # Search: exact ids, job names, words of the message.

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[JobRun], search_term: str
    ) -> tuple[QuerySet[JobRun], bool]:
        """Each word: a run id, a backend job id or a subject; and a part of job names
        (those jobs' runs: an index range each) or, when no job name holds it, words of
        the message (or the start of a job name, when there are too many names to know
        them all). A word that is part of job names and no id or subject (two index
        probes tell) filters by the names alone.
        """
        names: list[str] | None = None
        for bit in search_words(search_term):
            query = Q(backend_job_id=bit) | Q(subject=bit)
            with contextlib.suppress(ValueError):
                query |= Q(pk=uuid.UUID(bit))
            if names is None:
                names = request_job_names(request, JobRun, queryset.db)
            jobs = [name for name in names if bit.casefold() in name.casefold()]
            every_name = len(names) <= JOB_NAME_CHOICES
            if jobs and every_name:
                # Usually no id or subject is the word: then only the names are asked
                # for, and one name's newest runs come in order from its index (an OR
                # with the other columns read every run of the names, then sorted them).
                if not JobRun.objects.using(queryset.db).filter(query).exists():
                    query = Q(job_name__in=jobs)
                else:
                    query |= Q(job_name__in=jobs)
            else:
                if not every_name:
                    # With every name known and none holding the word, no job name
                    # starts with it: asked anyway, the trigram index returned every run
                    # of the names sharing its trigrams, each then rejected (208 ms for a
                    # mistyped name among a million runs).
                    query |= Q(job_name__istartswith=bit)
                query |= Q(message__icontains=bit)
            queryset = queryset.filter(query)
        return queryset, False

    # Views.

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            *self.dashboard_urls(),
            *failures.failures_urls(self),
            *workers.workers_urls(self),
            *live.live_urls(self),
            *exports.export_urls(self),
            path(
                "<path:object_id>/kill/",
                view(self.kill_view),
                name="django_jobstatus_jobrun_kill",
            ),
            path(
                "<path:object_id>/force-kill/",
                view(self.force_kill_view),
                name="django_jobstatus_jobrun_force_kill",
            ),
            path(
                "<path:object_id>/retry/",
                view(self.retry_view),
                name="django_jobstatus_jobrun_retry",
            ),
            *super().get_urls(),
        ]

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> JobRun | None:
        """A run's "Delete" (its confirmation page too) and any other write read the run on
        DATABASE, as the buttons do: a replica (READ_DATABASE) may still have a run that
        just ended running, and has_delete_permission() refuses an active run. The run's
        page and its history, reads, stay on the replica."""
        match = request.resolver_match
        deleting = match is not None and match.url_name == (
            f"{self.opts.app_label}_{self.opts.model_name}_delete"
        )
        if request.method in ("GET", "HEAD") and not deleting:
            return cast(
                "JobRun | None", super().get_object(request, object_id, from_field)
            )
        runs = cast("JobRunQuerySet", self.get_queryset(request)).writing()
        field = self.opts.pk if from_field is None else self.opts.get_field(from_field)
        try:
            return runs.get(**{field.name: field.to_python(object_id)})
        except (JobRun.DoesNotExist, ValidationError, ValueError):
            return None

    def _run_for_button(self, request: HttpRequest, object_id: str) -> JobRun:
        if request.method != "POST":
            raise PermissionDenied
        # Judged where the write goes: a replica (READ_DATABASE) may lag behind it.
        run = get_object_or_404(
            cast("JobRunQuerySet", self.get_queryset(request)).writing(),
            pk=self.to_field_pk(object_id),
        )
        if not self.has_change_permission(request, run):
            raise PermissionDenied
        return run

    @staticmethod
    def to_field_pk(object_id: str) -> uuid.UUID:
        try:
            return uuid.UUID(object_id)
        except ValueError as exc:
            raise Http404(_("No run with id %(id)r.") % {"id": object_id}) from exc

    def kill_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        run = self._run_for_button(request, object_id)
        result = JobRun.objects.filter(pk=run.pk).request_kill()
        if result:
            self.message_user(request, _("Asked the run to stop."), messages.SUCCESS)
        elif not result.in_batches:
            self.message_user(
                request,
                _("The run is finished or was already asked to stop."),
                messages.WARNING,
            )
        if result.in_batches:
            self.message_user(
                request,
                ngettext(
                    "Asked %(n)d run under this batch to stop.",
                    "Asked %(n)d runs under this batch to stop.",
                    result.in_batches,
                )
                % {"n": result.in_batches},
                messages.SUCCESS,
            )
        actions.report_not_stopped(self, request, result)
        return HttpResponseRedirect(
            reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
        )

    def force_kill_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        run = self._run_for_button(request, object_id)
        result = JobRun.objects.filter(pk=run.pk).request_kill(force=True)
        if result:
            self.message_user(request, _("Killed the run."), messages.SUCCESS)
        else:
            self.message_user(
                request, _("The run has already finished."), messages.WARNING
            )
        if result.in_batches:
            self.message_user(
                request,
                ngettext(
                    "Killed %(n)d run under this batch.",
                    "Killed %(n)d runs under this batch.",
                    result.in_batches,
                )
                % {"n": result.in_batches},
                messages.SUCCESS,
            )
        actions.report_not_stopped(self, request, result)
        return HttpResponseRedirect(
            reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
        )

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        run = self._run_for_button(request, object_id)
        refusal = contrib.retry_refusal(run)
        if refusal is not None:
            self.message_user(request, refusal, messages.WARNING)
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
            )
        if not contrib.can_retry(run):
            self.message_user(
                request,
                _(
                    "This run cannot be retried: no enabled integration can enqueue source “%(source)s” again."
                )
                % {"source": run.source},
                messages.WARNING,
            )
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
            )
        try:
            new = contrib.retry(run)
        except RetryRefused as exc:
            self.message_user(request, str(exc), messages.WARNING)
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
            )
        except Exception as exc:  # the integration's error is shown, not raised
            self.message_user(
                request,
                _("Could not retry the run: %(error)s") % {"error": exc},
                messages.ERROR,
            )
            return HttpResponseRedirect(
                reverse("admin:django_jobstatus_jobrun_change", args=[run.pk])
            )
        self.message_user(request, _("Enqueued the job again."), messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:django_jobstatus_jobrun_change", args=[new.pk])
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Runs are read-only: not "Select job run to change".
        context = {
            "title": capfirst(self.opts.verbose_name_plural),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST":
            # Nothing on the page is editable; buttons post to their own views.
            return HttpResponseNotAllowed(["GET"])
        context = {
            # Runs are read-only: not "Change job run".
            "title": capfirst(self.opts.verbose_name),
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        run = self.get_object(request, object_id)
        if run is not None:
            context |= self._logs_context(request, run)
            context |= {
                "jobstatus_run": run,
                "can_kill": run.is_active
                and not run.kill_requested
                and self.has_change_permission(request, run),
                "can_force_kill": run.is_active
                and self.has_change_permission(request, run),
                "can_retry": contrib.retry_refusal(run) is None
                and contrib.can_retry(run)
                and self.has_change_permission(request, run),
                "live_poll": live.poll_seconds(request),
            }
        return super().change_view(request, object_id, form_url, context)

    def _logs_context(self, request: HttpRequest, run: JobRun) -> dict[str, Any]:
        """The newest INLINE_LOGS lines (one query, no count), optionally from a level up."""
        level_param = request.GET.get("log_level", "")
        logs = JobLog.objects.for_run(run).order_by("-created_at", "-id")
        query = {"run": str(run.pk)}
        if level_param:
            try:
                logs = logs.at_least(level_number(level_param))
            except ValueError as exc:
                self.message_user(
                    request,
                    _("Log level %(value)r ignored: %(error)s.")
                    % {"value": level_param, "error": exc},
                    messages.WARNING,
                )
                level_param = ""
            else:
                query["level"] = level_param
        lines = list(logs[: INLINE_LOGS + 1])
        shown = lines[:INLINE_LOGS]
        changelist = reverse("admin:django_jobstatus_joblog_changelist")
        return {
            "logs": shown,
            # Where the live tail starts, in the order it counts in (ids): the newest line
            # by time may not have the highest id (its writer's clock), and a tail after it
            # listed again lines the page shows.
            "logs_after": max((line.pk for line in shown), default=""),
            "logs_more": len(lines) > INLINE_LOGS,
            "logs_limit": INLINE_LOGS,
            "log_level": level_param,
            "log_levels": [(str(number), name) for number, name in LEVELS],
            "logs_url": f"{changelist}?{urlencode(query)}",
        }
