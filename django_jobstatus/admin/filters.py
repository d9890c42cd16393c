"""Changelist filters that stay cheap on millions of rows: each one is a scope or an index range."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_jobstatus.admin.rows import is_djangos
from django_jobstatus.admin.windows import WINDOWS, finished_since
from django_jobstatus.models import Status
from django_jobstatus.querysets import distinct_job_names

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
# At most this many sampled values are offered (the newest ones): a fleet of workers would
# otherwise list hundreds of links, each a query string to build on every changelist.
SAMPLED_CHOICES = 20
# The columns the sampled filters offer values of (one query reads them all).
SAMPLED_FIELDS = ("source", "worker", "queue")


class CheckedFilter(admin.SimpleListFilter):
    """A list filter whose value is checked first: a bad one is a message, never a 500.

    ``clean()`` raises ValueError for a bad value; the admin then shows the message and the
    list without filters (Django's ``?e=1``). ``apply()`` filters by the cleaned value.
    The template is Django's ``admin/filter.html`` with its items joined in Python, unless
    the project overrides ``admin/filter.html``: then that one.
    """

    @property
    def template(self) -> str:  # type: ignore[override]
        if is_djangos("admin/filter.html"):
            return "admin/django_jobstatus/filter.html"
        return "admin/filter.html"

    def clean(self, value: str) -> Any:
        return value

    def apply(self, queryset: Any, value: Any) -> Any:
        raise NotImplementedError

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        if not value:
            return queryset
        try:
            if "\x00" in value:
                raise ValueError(gettext("null characters are not allowed"))
            cleaned = self.clean(value)
        except ValueError as exc:
            messages.error(
                request,
                gettext("Filter “%(title)s”: %(value)r is not valid (%(error)s).")
                % {"title": self.title, "value": value, "error": exc},
            )
            raise IncorrectLookupParameters(exc) from exc
        return self.apply(queryset, cleaned)


class ChoiceFilter(CheckedFilter):
    """A filter whose value must be one of its choices."""

    def clean(self, value: str) -> Any:
        choices = [str(key) for key, _label in self.lookup_choices]
        if value not in choices:
            raise ValueError(
                gettext("choose one of %(choices)s") % {"choices": ", ".join(choices)}
            )
        return value


class StatusFilter(ChoiceFilter):
    """Each choice is a scope of the same name (plus "active" and "finished")."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("active", _("Active (not finished)")),
            *Status.choices,
            ("finished", _("Finished")),
        ]

    def apply(self, queryset: Any, value: str) -> Any:
        return getattr(queryset, value)()


def _memo(request: HttpRequest, key: tuple[Any, ...], read: Any) -> Any:
    """``read()``, once per request and key (the filters and the search ask for the same rows)."""
    memo: dict[tuple[Any, ...], Any] = request.__dict__.setdefault(
        "_jobstatus_memo", {}
    )
    if key not in memo:
        memo[key] = read()
    return memo[key]


def request_job_names(request: HttpRequest, model: Any, using: str) -> list[str]:
    """Up to JOB_NAME_CHOICES + 1 distinct job names (one more tells that the list is cut), read once per request."""
    return list(
        _memo(
            request,
            ("job_names", model._meta.label, using),
            lambda: distinct_job_names(model, using, JOB_NAME_CHOICES + 1),
        )
    )


class JobNameFilter(CheckedFilter):
    title = _("job name")
    parameter_name = "job_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = request_job_names(
            request, model_admin.model, model_admin.model.objects.db
        )[:JOB_NAME_CHOICES]
        value = self.value()
        if value and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def apply(self, queryset: Any, value: str) -> Any:
        return queryset.for_job(value)


class HasErrorsFilter(ChoiceFilter):
    title = _("has errors")
    parameter_name = "has_errors"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def apply(self, queryset: Any, value: str) -> Any:
        return (
            queryset.with_errors()
            if value == "yes"
            else queryset.filter(has_errors=False)
        )


class KillRequestedFilter(ChoiceFilter):
    title = _("kill requested")
    parameter_name = "kill_requested"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def apply(self, queryset: Any, value: str) -> Any:
        if value == "yes":
            return queryset.kill_requested()
        return queryset.not_kill_requested()


class _WithinFilter(ChoiceFilter):
    """A window of WINDOWS (last hour … 30 days) on a timestamp."""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(key, window.last) for key, window in WINDOWS.items()]


class CreatedWithinFilter(_WithinFilter):
    """A range on ``created_at`` (indexed on runs and on log lines)."""

    title = _("created")
    parameter_name = "created"

    def apply(self, queryset: Any, value: str) -> Any:
        return queryset.filter(created_at__gte=timezone.now() - WINDOWS[value].delta)


# ?finished=24h-or-active: the runs finished in the window and the active ones (the
# dashboard's "all runs").
OR_ACTIVE = "-or-active"


class FinishedWithinFilter(_WithinFilter):
    """A range on ``finished_at`` from the window's whole hour: the runs the dashboard counts
    (and, with OR_ACTIVE, the active runs too: no ``finished_at``)."""

    title = _("finished")
    parameter_name = "finished"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            *super().lookups(request, model_admin),
            *(
                (
                    f"{key}{OR_ACTIVE}",
                    gettext("%(window)s, or not finished yet")
                    % {"window": window.last},
                )
                for key, window in WINDOWS.items()
            ),
        ]

    def apply(self, queryset: Any, value: str) -> Any:
        key = value.removesuffix(OR_ACTIVE)
        since = Q(finished_at__gte=finished_since(key, timezone.now()))
        if key != value:
            return queryset.filter(since | Q(finished_at__isnull=True))
        return queryset.filter(since)


LEVELS = [
    (logging.DEBUG, "DEBUG"),
    (logging.INFO, "INFO"),
    (logging.WARNING, "WARNING"),
    (logging.ERROR, "ERROR"),
    (logging.CRITICAL, "CRITICAL"),
]


def level_number(text: str) -> int:
    """A logging level number from a query string: ASCII digits, 0 to 99999; else ValueError.

    (``"²".isdigit()`` is True, but ``int("²")`` fails.)
    """
    if not (text.isascii() and text.isdigit() and len(text) < 6):
        raise ValueError(
            gettext("a level is a number from 0 to 99999, e.g. 40 for ERROR")
        )
    return int(text)


class LevelFilter(CheckedFilter):
    """Log lines of a level and above."""

    title = _("level (and above)")
    parameter_name = "level"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(number), name) for number, name in LEVELS]

    def clean(self, value: str) -> int:
        return level_number(value)

    def apply(self, queryset: Any, value: int) -> Any:
        return queryset.at_least(value)


class _SampledFilter(CheckedFilter):
    """An exact filter on one field; its choices are up to SAMPLED_CHOICES values of the newest
    SOURCE_SAMPLE runs (one index range, no scan), plus ``known`` and the value chosen.
    """

    field = ""
    known: tuple[str, ...] = ()

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The sampled columns of the newest runs, read once for every sampled filter.
        model = model_admin.model
        rows = _memo(
            request,
            ("sampled", model._meta.label),
            lambda: list(
                model.objects.order_by("-created_at").values_list(*SAMPLED_FIELDS)[
                    :SOURCE_SAMPLE
                ]
            ),
        )
        column = SAMPLED_FIELDS.index(self.field)
        # Newest first, each value once, the first SAMPLED_CHOICES of them.
        seen = dict.fromkeys(row[column] for row in rows)
        seen.pop("", None)
        newest = list(seen)[:SAMPLED_CHOICES]
        value = self.value()
        values = sorted({*self.known, *newest, *([value] if value else [])} - {""})
        return [(item, item) for item in values]

    def apply(self, queryset: Any, value: str) -> Any:
        return queryset.filter(**{self.field: value})


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


class FailureGroupFilter(CheckedFilter):
    """The failed and lost runs of one cause (the failures view links here); shown only when set."""

    title = _("cause")
    parameter_name = "error_fingerprint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        if value is None:
            return []
        return [(value, value or gettext("(no error text)"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        # An empty cause is a group too (failed without an exception, lost without a
        # message): ``?error_fingerprint=`` lists its runs, never every run of the job.
        if self.value() == "":
            return self.apply(queryset, "")
        return super().queryset(request, queryset)

    def apply(self, queryset: Any, value: str) -> Any:
        return queryset.failed_or_lost().filter(error_fingerprint=value)
