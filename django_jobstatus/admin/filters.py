"""Changelist filters that stay cheap on millions of rows: each one is a scope or an index range."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db import connections
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_jobstatus.models import Status

if TYPE_CHECKING:
    from django.http import HttpRequest

# How many job names the job-name filter offers.
JOB_NAME_CHOICES = 100
# Sources every integration may record, offered even before a run of them exists.
KNOWN_SOURCES = (
    "manual",
    "command",
    "schedule",
    "api",
    "admin",
    "django_tasks",
    "celery",
    "rq",
)
# The newest runs whose other sources the source filter offers too (one index range, no scan).
SOURCE_SAMPLE = 1000


class StatusFilter(admin.SimpleListFilter):
    """Each choice is a scope of the same name (plus "active" and "finished")."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("active", _("Active (not finished)")),
            *Status.choices,
            ("finished", _("Finished")),
        ]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        if value in {*Status.values, "active", "finished"}:
            return getattr(queryset, str(value))()
        return queryset


def job_names_sql(table: str) -> str:
    """Distinct job names by skipping through the (job_name, created_at) index; one ``%s``: the limit.

    A plain ``SELECT DISTINCT`` reads every row; this recursive query (a "loose index
    scan") does one index probe per name, so its cost follows the number of names.
    ``table`` must be quoted already.
    """
    return (
        f"WITH RECURSIVE names(name) AS ("  # noqa: S608 - only the quoted table name is formatted in
        f" SELECT MIN(job_name) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN(job_name) FROM {table} WHERE job_name > names.name) FROM names WHERE names.name IS NOT NULL"
        f") SELECT name FROM names WHERE name IS NOT NULL LIMIT %s"
    )


def distinct_job_names(
    model: Any, using: str, limit: int = JOB_NAME_CHOICES
) -> list[str]:
    """Up to ``limit`` distinct job names, in order, without reading the table."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            job_names_sql(connection.ops.quote_name(model._meta.db_table)), [limit]
        )
        return [row[0] for row in cursor.fetchall()]


class JobNameFilter(admin.SimpleListFilter):
    title = _("job name")
    parameter_name = "job_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = distinct_job_names(model_admin.model, model_admin.model.objects.db)
        value = self.value()
        if value and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        return queryset.for_job(value) if value else queryset


class HasErrorsFilter(admin.SimpleListFilter):
    title = _("has errors")
    parameter_name = "has_errors"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "yes":
            return queryset.with_errors()
        if self.value() == "no":
            return queryset.filter(has_errors=False)
        return queryset


class KillRequestedFilter(admin.SimpleListFilter):
    title = _("kill requested")
    parameter_name = "kill_requested"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "yes":
            return queryset.kill_requested()
        if self.value() == "no":
            return queryset.filter(kill_requested_at__isnull=True)
        return queryset


WITHIN = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


class CreatedWithinFilter(admin.SimpleListFilter):
    """A range on ``created_at`` (indexed on runs and on log lines)."""

    title = _("created")
    parameter_name = "created"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("1h", _("Last hour")),
            ("24h", _("Last 24 hours")),
            ("7d", _("Last 7 days")),
            ("30d", _("Last 30 days")),
        ]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        delta = WITHIN.get(str(self.value()))
        return (
            queryset.filter(created_at__gte=timezone.now() - delta)
            if delta
            else queryset
        )


LEVELS = [
    (logging.DEBUG, "DEBUG"),
    (logging.INFO, "INFO"),
    (logging.WARNING, "WARNING"),
    (logging.ERROR, "ERROR"),
    (logging.CRITICAL, "CRITICAL"),
]


class LevelFilter(admin.SimpleListFilter):
    """Log lines of a level and above."""

    title = _("level (and above)")
    parameter_name = "level"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(number), name) for number, name in LEVELS]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        return queryset.at_least(int(value)) if value and value.isdigit() else queryset


class _SampledFilter(admin.SimpleListFilter):
    """An exact filter on one field; its choices are the values of the newest SOURCE_SAMPLE runs (one index range, no scan), plus ``known``."""

    field = ""
    known: tuple[str, ...] = ()

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        seen = set(
            model_admin.model.objects.order_by("-created_at").values_list(
                self.field, flat=True
            )[:SOURCE_SAMPLE]
        )
        value = self.value()
        values = sorted({*self.known, *seen, *([value] if value else [])} - {""})
        return [(item, item) for item in values]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class SourceFilter(_SampledFilter):
    title = _("source")
    parameter_name = field = "source"
    known = KNOWN_SOURCES


class WorkerFilter(_SampledFilter):
    title = _("worker")
    parameter_name = field = "worker"


class QueueFilter(_SampledFilter):
    title = _("queue")
    parameter_name = field = "queue"


class FailureGroupFilter(admin.SimpleListFilter):
    """The failed and lost runs of one cause (the failures view links here); shown only when set."""

    title = _("cause")
    parameter_name = "error_fingerprint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value is not None else []

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        if value is None:
            return queryset
        return queryset.failed_or_lost().filter(error_fingerprint=value)
