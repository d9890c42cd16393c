"""django-filter FilterSets of the API: runs and log lines, plus the ``period`` parser."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import django_filters
from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import NotSupportedError, connections
from django.db.models import BooleanField, Expression, F, Q, QuerySet
from django.forms.utils import ErrorDict, ErrorList
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field

from django_jobstatus.models import JobLog, JobMonitor, JobRun, MonitorState, Status
from django_jobstatus.querysets import JobRunQuerySet
from django_jobstatus.redaction import redacted_keys_in

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# "active" and "finished" name groups of statuses; each maps to the scope of the same name.
STATUS_GROUPS = ("active", "finished")

_PERIOD_PART = re.compile(r"(\d+)\s*([a-z]+)")
_PERIOD_UNITS = {
    "s": "seconds",
    "sec": "seconds",
    "m": "minutes",
    "min": "minutes",
    "h": "hours",
    "d": "days",
    "w": "weeks",
}
# The longest period accepted (some 100 years).
_PERIOD_MAX = timedelta(days=365 * 100)
# The periods the OpenAPI pattern describes: today, yesterday, or one to four parts of a
# number (1 to 999) and a unit, all within _PERIOD_MAX. parse_period() accepts more (any
# case, longer numbers), and answers a clear error past _PERIOD_MAX.
PERIOD_PATTERN = (
    r"^ *(?:today|yesterday|(?:[1-9][0-9]{0,2} *(?:sec|min|s|m|h|d|w) *){1,4})?$"
)


def parse_period(text: str, now: datetime) -> tuple[datetime, datetime | None]:
    """``(since, until)`` for a period relative to ``now``; ``until`` None means open-ended.

    ``text`` is ``today``, ``yesterday`` (calendar days in the current time zone) or one or
    more ``<number><unit>`` parts (``s``, ``m``, ``h``, ``d``, ``w``), e.g. ``1h``,
    ``2h 30m``, ``10m``. ValueError when it is none of these.
    """
    value = text.strip().lower()
    if value in ("today", "yesterday"):
        local = timezone.localtime(now) if timezone.is_aware(now) else now
        midnight = datetime.combine(local.date(), time.min, tzinfo=local.tzinfo)
        if value == "today":
            return midnight, None
        # combine() again, so that a DST change yesterday still lands on midnight.
        day_before = datetime.combine(
            local.date() - timedelta(days=1), time.min, tzinfo=local.tzinfo
        )
        return day_before, midnight
    if not value or _PERIOD_PART.sub("", value).strip():
        raise ValueError(
            _("%(text)r is not a period such as 1h, 2h 30m, 10m, today or yesterday")
            % {"text": text}
        )
    delta = timedelta(0)
    for number, unit in _PERIOD_PART.findall(value):
        if unit not in _PERIOD_UNITS:
            raise ValueError(
                _("unknown unit %(unit)r in period %(text)r; use s, m, h, d or w")
                % {"unit": unit, "text": text}
            )
        if len(number) > 9:
            raise ValueError(_("period %(text)r is too long") % {"text": text})
        try:
            delta += timedelta(**{_PERIOD_UNITS[unit]: int(number)})
        except OverflowError:
            raise ValueError(
                _("period %(text)r is too long") % {"text": text}
            ) from None
    if delta <= timedelta(0):
        raise ValueError(_("period %(text)r must be longer than zero") % {"text": text})
    if delta > _PERIOD_MAX:
        raise ValueError(_("period %(text)r is too long") % {"text": text})
    return now - delta, None


# Form fields: each turns bad input into a ValidationError, which the API answers as a 400.
#
# django-filter's own filters serve the plain text filters (CharFilter). The values below
# have no django-filter or Django field that reads them as the API documents them; each
# names the test that shows what the library's field would get wrong.


class _TextField(forms.CharField):
    """Django's CharField (stripped; NUL refused by its validator), then ``parse()``d; empty means "no filter".

    ``pattern`` is the OpenAPI pattern of the parameter: every text it matches is accepted.
    """

    pattern: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "empty_value": None})

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        return None if text is None else self.parse(text)

    def parse(self, text: str) -> Any:
        return text


class PeriodField(_TextField):
    """A period ending now: django-filter's DateRangeFilter has only fixed choices (today,
    week…), not ``2h 30m`` (tests/api/test_fuzz_filters.py::test_relative_periods_select_the_runs_created_since)."""

    pattern = PERIOD_PATTERN

    def parse(self, text: str) -> tuple[datetime, datetime | None]:
        try:
            return parse_period(text, timezone.now())
        except ValueError as exc:
            # The reason quotes the input: as a param, a "%" in it is not a format.
            raise ValidationError(
                "%(reason)s", code="invalid", params={"reason": str(exc)}
            ) from exc


# Epoch milliseconds as the OpenAPI pattern describes them: up to 13 digits (the year
# 2286), so that every one is a date; longer ones are accepted while they are dates.
EPOCH_PATTERN = r"-?[0-9]{1,13}(?:\.[0-9]{1,6})?"


class MomentField(_TextField):
    """A date-time as ISO 8601 (a bare date means its midnight) or as epoch milliseconds.

    Not django-filter's IsoDateTimeField: it reads no epoch milliseconds
    (tests/api/test_fuzz_filters.py::test_epoch_milliseconds_of_any_size) and fails on a
    moment UTC cannot hold (tests/api/test_hostile_input.py::test_dates_in_the_schema_are_accepted).
    """

    def parse(self, text: str) -> datetime:
        message = _(
            "Enter an ISO 8601 date-time or a number of epoch milliseconds, not %(value)r."
        )
        try:
            if re.fullmatch(r"-?\d+(\.\d+)?", text):
                return datetime.fromtimestamp(float(text) / 1000, tz=UTC)
            # RFC 3339 (the schema's date-time) allows a lower-case t and z; Django does not.
            moment = parse_datetime(text.replace("t", "T").replace("z", "Z"))
            if moment is None:
                day = parse_date(text)
                if day is None:
                    raise ValueError(text)
                moment = datetime.combine(day, time.min)
            if timezone.is_naive(moment):
                moment = timezone.make_aware(moment)
        except (ValueError, OverflowError, OSError) as exc:
            raise ValidationError(
                message, code="invalid", params={"value": text}
            ) from exc
        try:
            # In UTC: PostgreSQL holds no offset past 15:59 (an ISO one may reach 23:59).
            return moment.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00+01:00 has no UTC date: it is before every row, as
            # 9999-12-31T23:59-01:00 is after every row.
            edge = datetime.min if moment.year == 1 else datetime.max
            return edge.replace(tzinfo=UTC)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


# How deep a JSON filter may nest: deeper ones are refused before they are parsed.
JSON_MAX_DEPTH = 32


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets in ``text``, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _unstorable_text(value: Any) -> bool:
    """Whether a key or string of ``value`` holds NUL or a lone surrogate (PostgreSQL refuses both)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and (
            "\x00" in item or any("\ud800" <= char <= "\udfff" for char in item)
        ):
            return True
    return False


class JSONObjectField(_TextField):
    """A JSON object; an empty one (``{}``) filters nothing, so it is "no filter" (None).

    Not Django's JSONField: it takes NaN and 1e400 (tests/api/test_bad_input.py::
    test_edge_values_answer_400_or_nothing_never_500), any depth and masked keys
    (tests/api/test_bad_input.py::test_a_redacted_key_cannot_be_filtered_on), and a ``{}``
    it returns would count as a filter of a bulk action (tests/api/test_hostile_input.py::
    test_bulk_actions_with_an_empty_params_object_are_400_and_touch_nobody).
    """

    def parse(self, text: str) -> dict[str, Any] | None:
        message = _('Enter a JSON object, e.g. {"user_id": 7}.')
        if _json_depth(text) > JSON_MAX_DEPTH:
            raise ValidationError(
                _("The JSON object nests deeper than %(max)d levels."),
                code="too_deep",
                params={"max": JSON_MAX_DEPTH},
            )
        try:
            parsed = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ValidationError(message, code="invalid") from exc
        if not isinstance(parsed, dict):
            raise ValidationError(message, code="invalid")
        if _unstorable_text(parsed):
            raise ValidationError(
                _(
                    "Null characters and lone surrogates (\\u0000, \\ud800) are not allowed."
                ),
                code="null_characters_not_allowed",
            )
        hidden = redacted_keys_in(parsed)
        if hidden:
            # Values the API masks cannot be guessed through a filter either.
            raise ValidationError(
                _("%(keys)s is redacted (REDACT_KEYS) and cannot be filtered on."),
                code="redacted",
                params={"keys": ", ".join(hidden)},
            )
        return parsed or None


def choices_pattern(allowed: Iterable[str]) -> str:
    """The OpenAPI pattern of a comma list of ``allowed`` names (empty items are skipped)."""
    name = "(?:" + "|".join(allowed) + ")"
    return rf"^ *{name}? *(?:, *{name}? *)*$"


class CommaListField(_TextField):
    """A comma-separated list; each item must be one of ``allowed`` when given.

    Not django-filter's BaseCSVField: it keeps empty items, so ``job_name=%20`` would count
    as a filter of a bulk action (tests/api/test_hostile_input.py::
    test_bulk_kill_with_only_empty_filters_is_400_and_asks_nobody), and its ChoiceField
    names neither the bad item nor the choices (tests/api/test_bad_input.py::test_the_bad_status_value_is_named).
    """

    def __init__(
        self, *args: Any, allowed: tuple[str, ...] | None = None, **kwargs: Any
    ) -> None:
        self.allowed = allowed
        super().__init__(*args, **kwargs)

    def parse(self, text: str) -> list[str] | None:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if self.allowed is not None:
            bad = [item for item in items if item not in self.allowed]
            if bad:
                raise ValidationError(
                    _(
                        "%(values)s is not a valid choice; use one or more of %(choices)s."
                    ),
                    code="invalid_choice",
                    params={
                        "values": ", ".join(repr(item) for item in bad),
                        "choices": ", ".join(self.allowed),
                    },
                )
        return items or None


class StrictBooleanField(_TextField):
    """true/false (also 1/0, yes/no); anything else is an error, not "no filter".

    Not django-filter's BooleanFilter: its NullBooleanField reads ``maybe`` as no filter
    (tests/api/test_bad_input.py::test_bad_list_parameters_are_400_naming_the_field).
    """

    _VALUES = {
        "true": True,
        "1": True,
        "yes": True,
        "false": False,
        "0": False,
        "no": False,
    }
    choices = ("", *_VALUES)

    def parse(self, text: str) -> bool:
        try:
            return self._VALUES[text.lower()]
        except KeyError:
            raise ValidationError(
                _("Enter true or false, not %(value)r."),
                code="invalid",
                params={"value": text},
            ) from None


class UserField(_TextField):
    """A user's id of any primary key type, in range; not a ModelChoiceField, which would
    look the user up (a 400 for a deleted owner, whose runs stay)."""

    pattern = r"^(?:-?[0-9]{1,18})?$"

    def parse(self, text: str) -> Any:
        try:
            pk = get_user_model()._meta.pk.to_python(text)
            if isinstance(pk, int) and not -(2**63) <= pk < 2**63:
                raise ValidationError("out of range")
            return pk
        except ValidationError as exc:
            raise ValidationError(
                _("Enter a valid user id, not %(value)r."),
                code="invalid",
                params={"value": text},
            ) from exc


# Logging levels by name (logging.getLevelName() knows these), for the OpenAPI pattern.
LEVEL_NAMES = (
    "CRITICAL",
    "FATAL",
    "ERROR",
    "WARNING",
    "WARN",
    "INFO",
    "DEBUG",
    "NOTSET",
)


class LevelField(_TextField):
    """A logging level: a number (0 or more) or a name such as ERROR."""

    pattern = (
        "^(?:[0-9]{1,5}|"
        + "|".join([*LEVEL_NAMES, *(name.lower() for name in LEVEL_NAMES)])
        + ")?$"
    )

    def parse(self, text: str) -> int:
        # ASCII digits only: "²".isdigit() is True, but int() refuses it.
        if text.isascii() and text.isdigit() and len(text) < 6:
            return int(text)
        level = logging.getLevelName(text.upper())
        if isinstance(level, int):
            return level
        raise ValidationError(
            _(
                "%(value)r is not a logging level; use a number or DEBUG, INFO, WARNING, ERROR, CRITICAL."
            ),
            code="invalid",
            params={"value": text},
        )


class RunIdField(_TextField):
    """A run id (a UUID); unlike the other filters, an empty value is an error, not "no filter".

    Not django-filter's UUIDFilter: it reads ``parent=`` as no filter
    (tests/api/test_hostile_input.py::test_bulk_kill_with_an_empty_parent_is_400) and takes
    ids outside the schema's ``uuid`` format (32 bare hex digits, braces).
    """

    pattern = (
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )

    def to_python(self, value: Any) -> Any:
        if value is not None and not re.search(self.pattern, str(value)):
            raise ValidationError(
                _("Enter a run id (a UUID), not %(value)r."),
                code="invalid",
                params={"value": str(value)},
            )
        return super().to_python(value)

    def parse(self, text: str) -> uuid.UUID:
        return uuid.UUID(text)


# Filters.


# Text without NUL, which PostgreSQL cannot store or compare.
NO_NUL_PATTERN = r"^[^\x00]*$"

# The simple form of a JSON object filter, for the OpenAPI pattern: up to five keys with a
# number, a short string, true, false or null (nested objects are accepted too).
_JSON_KEY = r'"[a-z0-9_]{1,16}" *: *(?:[0-9]{1,9}|"[a-z0-9 _]{0,16}"|true|false|null)'
JSON_OBJECT_PATTERN = (
    rf"^ *(?:\{{ *(?:{_JSON_KEY}(?: *, *{_JSON_KEY}){{0,4}})? *\}})? *$"
)


class _Documented(django_filters.Filter):
    """A filter whose OpenAPI parameter says what it accepts: its field's pattern, and its help text."""

    def schema(self) -> dict[str, Any]:
        pattern = getattr(self.field_class, "pattern", None)
        return {"type": "string", "pattern": pattern or NO_NUL_PATTERN}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extend_schema_field(
            {**self.schema(), "description": self.extra.get("help_text", "")}
        )(self)


class TextFilter(_Documented, django_filters.CharFilter):
    """Any text but NUL (Django's CharField refuses it)."""


class RunIdFilter(_Documented):
    field_class = RunIdField

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uuid"}


class PeriodFilter(_Documented):
    field_class = PeriodField

    def filter(
        self, qs: QuerySet[Any], value: tuple[datetime, datetime | None] | None
    ) -> QuerySet[Any]:
        if value is None:
            return qs
        since, until = value
        qs = qs.filter(**{f"{self.field_name}__gte": since})
        if until is not None:
            qs = qs.filter(**{f"{self.field_name}__lt": until})
        return qs


class MomentFilter(_Documented):
    field_class = MomentField

    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
                {"type": "string", "pattern": f"^{EPOCH_PATTERN}$"},
                {"type": "string", "maxLength": 0},
            ]
        }


class BooleanFilter(_Documented):
    field_class = StrictBooleanField

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(StrictBooleanField.choices)}


class UserFilter(_Documented):
    field_class = UserField


class LevelFilter(_Documented):
    field_class = LevelField


class JSONObjectFilter(_Documented):
    field_class = JSONObjectField

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": JSON_OBJECT_PATTERN}


class CommaListFilter(_Documented):
    field_class = CommaListField

    def schema(self) -> dict[str, Any]:
        allowed = self.extra.get("allowed")
        if allowed is None:
            return super().schema()
        return {"type": "string", "pattern": choices_pattern(allowed)}

    def filter(self, qs: QuerySet[Any], value: list[str] | None) -> QuerySet[Any]:
        if not value:
            return qs
        return qs.filter(**{f"{self.field_name}__in": value})


_MOMENT_HELP = _(
    "ISO 8601 date-time (a date means its midnight) or epoch milliseconds."
)
_PERIOD_HELP = _("Relative to now: 1h, 2h 30m, 10m, 7d, today or yesterday.")


class StrictFilterSet(django_filters.FilterSet):
    """A FilterSet that names what it does not know, and tells an empty filter from a real one.

    ``known`` are the other query parameters the view reads (page size, cursor, format…):
    any other parameter that is not a filter is an error, so that a typo never widens what a
    list shows or what a bulk action touches. So is a parameter given twice: Django's forms
    read its last value only, and ``status=failed&status=`` would filter nothing.
    """

    def __init__(self, *args: Any, known: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known = frozenset(known)

    def unknown_parameters(self) -> list[str]:
        return sorted(
            name
            for name in self.data
            if name not in self.filters and name not in self.known
        )

    def repeated_parameters(self) -> list[str]:
        getlist = getattr(self.data, "getlist", None)
        if getlist is None:  # a plain dict holds each name once
            return []
        return sorted(name for name in self.data if len(getlist(name)) > 1)

    def is_valid(self) -> bool:
        return (
            bool(super().is_valid())
            and not self.unknown_parameters()
            and not self.repeated_parameters()
        )

    @property
    def errors(self) -> ErrorDict:
        """The form's errors, and one for each unknown parameter under its name."""
        errors = ErrorDict(self.form.errors)
        choices = ", ".join(sorted({*self.filters, *self.known}))
        for name in self.unknown_parameters():
            errors[name] = ErrorList(
                [
                    ValidationError(
                        _("%(name)r is not a parameter here; use one of %(choices)s."),
                        code="unknown",
                        params={"name": name, "choices": choices},
                    )
                ]
            )
        for name in self.repeated_parameters():
            errors.setdefault(name, ErrorList()).append(
                ValidationError(
                    _(
                        "Give %(name)r once; to ask for several values, separate them with commas where the parameter allows it."
                    ),
                    code="repeated",
                    params={"name": name},
                )
            )
        return errors

    def narrows(self) -> bool:
        """Whether at least one filter has a value (empty values filter nothing)."""
        return any(
            value not in (None, "", [], ()) for value in self.form.cleaned_data.values()
        )


def _moment(field: str, lookup: str, help_text: StrOrPromise) -> MomentFilter:
    return MomentFilter(
        field_name=field,
        lookup_expr=lookup,
        help_text=format_lazy("{} {}", help_text, _MOMENT_HELP),
    )


class JobRunFilterSet(StrictFilterSet):
    status = CommaListFilter(
        method="filter_status",
        allowed=(*Status.values, *STATUS_GROUPS),
        help_text=_(
            "One status or a comma list (queued, running, retrying, succeeded, failed, killed, lost, or the groups active and finished)."
        ),
    )
    job_name = CommaListFilter(
        field_name="job_name", help_text=_("One job name or a comma list.")
    )
    source = TextFilter(
        field_name="source", help_text=_("How the run was started, e.g. celery.")
    )
    subject = TextFilter(
        field_name="subject",
        help_text=_('What the run is about, e.g. "library.Book:53".'),
    )
    owner = UserFilter(
        field_name="owner_id", help_text=_("The id of the user who started the run.")
    )
    worker = TextFilter(
        field_name="worker",
        help_text=_("The worker that ran it, as host:pid (or WORKER_NAME)."),
    )
    queue = TextFilter(field_name="queue", help_text=_("The queue it was enqueued on."))
    backend_job_id = TextFilter(
        field_name="backend_job_id",
        help_text=_("The task system's own id of the run, e.g. a Celery task id."),
    )
    parent = RunIdFilter(
        field_name="parent_id", help_text=_("The id of the parent run (batches).")
    )
    has_errors = BooleanFilter(
        field_name="has_errors",
        help_text=_("Runs that logged an error (true) or did not (false)."),
    )
    kill_requested = BooleanFilter(
        method="filter_kill_requested",
        help_text=_("Runs someone asked to stop (true) or not (false)."),
    )
    created_after = _moment("created_at", "gte", _("Created at or after."))
    created_before = _moment("created_at", "lt", _("Created before."))
    started_after = _moment("started_at", "gte", _("Started at or after."))
    started_before = _moment("started_at", "lt", _("Started before."))
    finished_after = _moment("finished_at", "gte", _("Finished at or after."))
    finished_before = _moment("finished_at", "lt", _("Finished before."))
    period = PeriodFilter(
        field_name="created_at",
        help_text=format_lazy("{} {}", _("Runs created in this period."), _PERIOD_HELP),
    )
    q = TextFilter(
        method="filter_q",
        help_text=_(
            "A run id (that run), or text searched in the job name, subject and message."
        ),
    )
    params = JSONObjectFilter(
        method="filter_params",
        help_text=_(
            'A JSON object the run\'s params must contain, e.g. {"user_id": 7}.'
        ),
    )

    class Meta:
        model = JobRun
        fields: list[str] = []

    def filter_status(
        self, qs: JobRunQuerySet, name: str, value: list[str] | None
    ) -> JobRunQuerySet:
        if not value:
            return qs
        # Every status and group has a scope of the same name: queued(), active(), finished()…
        combined = None
        for item in dict.fromkeys(value):
            part = getattr(qs, item)()
            combined = part if combined is None else combined | part
        return combined if combined is not None else qs

    def filter_kill_requested(
        self,
        qs: JobRunQuerySet,
        name: str,
        value: bool | None,  # noqa: FBT001 (django-filter calls it so)
    ) -> JobRunQuerySet:
        if value is None:
            return qs
        return qs.kill_requested() if value else qs.not_kill_requested()

    def filter_q(self, qs: JobRunQuerySet, name: str, value: str) -> JobRunQuerySet:
        value = value.strip()
        if not value:
            return qs
        try:
            # A run id finds that run (by primary key: fast at any size).
            return qs.filter(pk=uuid.UUID(value))
        except ValueError:
            pass
        match = (
            Q(job_name__icontains=value)
            | Q(subject__icontains=value)
            | Q(message__icontains=value)
        )
        return qs.filter(match)

    def filter_params(
        self, qs: JobRunQuerySet, name: str, value: dict[str, Any] | None
    ) -> JobRunQuerySet:
        if not value:
            return qs
        if connections[qs.db].features.supports_json_field_contains:
            # PostgreSQL: params @> '{...}', served by the GIN index of migration 0002.
            return qs.filter(params__contains=value)
        return qs.filter(_Contains(F("params"), value))


class _Contains(Expression):
    """JSON containment on SQLite (no ``contains``), as PostgreSQL's ``@>`` reads it.

    Each key is looked up with ``json_each()``, whose ``key`` column is the key as stored,
    unescaped: a JSON path cannot say every key (Django's turns ``"0"`` and ``"-1"`` into
    array indexes, and SQLite's path compares quoted labels with the stored, escaped
    text, so ``a"b`` and ``é`` were not found). Objects are contained key by key and lists
    item by item, like ``@>``; any other value must be equal, of the same JSON type.
    """

    output_field = BooleanField()

    def __init__(self, column: Any, wanted: dict[str, Any]) -> None:
        super().__init__()
        self.column = column
        self.wanted = wanted

    def get_source_expressions(self) -> list[Any]:
        return [self.column]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        (self.column,) = exprs

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        raise NotSupportedError("The params filter needs JSON contains or SQLite.")

    def as_sqlite(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        column, params = compiler.compile(self.column)
        sql, more = _object_holds(column, self.wanted, itertools.count())
        return sql, (*params, *more)


def _object_holds(
    container: str, wanted: dict[str, Any], aliases: Iterator[int]
) -> tuple[str, list[Any]]:
    """SQL true when the JSON object ``container`` holds every key of ``wanted`` with its value."""
    parts, params = [], []
    for key, value in wanted.items():
        each = f"jobstatus_each_{next(aliases)}"
        match, match_params = _value_is(each, value, aliases, container, key)
        parts.append(
            f"EXISTS (SELECT 1 FROM json_each({container}) AS {each}"  # noqa: S608 (our aliases; values are parameters)
            f" WHERE {each}.key = %s AND {match})"
        )
        params += [key, *match_params]
    return " AND ".join(parts), params


def _list_holds(
    container: str, wanted: list[Any], aliases: Iterator[int]
) -> tuple[str, list[Any]]:
    """SQL true when the JSON array ``container`` holds every item of ``wanted``, as ``@>``
    reads it: each item somewhere, in any order and however often (``[1, 1]`` is in ``[1]``),
    an object or a list contained in an item of its type."""
    parts, params = [], []
    for value in wanted:
        each = f"jobstatus_each_{next(aliases)}"
        match, match_params = _value_is(each, value, aliases, container, None)
        parts.append(
            f"EXISTS (SELECT 1 FROM json_each({container}) AS {each} WHERE {match})"  # noqa: S608 (our aliases; values are parameters)
        )
        params += match_params
    return " AND ".join(parts), params


def _value_is(
    each: str, value: Any, aliases: Iterator[int], container: str, key: str | None
) -> tuple[str, list[Any]]:
    """SQL true when the ``json_each()`` row ``each`` of ``container`` (under ``key``, or an
    array's item when ``key`` is None) holds ``value`` (contains it, for an object or a list)."""
    if isinstance(value, dict):
        if not value:
            return f"{each}.type = 'object'", []
        inner, params = _object_holds(f"{each}.value", value, aliases)
        return f"{each}.type = 'object' AND {inner}", params
    if isinstance(value, list):
        if not value:
            return f"{each}.type = 'array'", []
        inner, params = _list_holds(f"{each}.value", value, aliases)
        return f"{each}.type = 'array' AND {inner}", params
    if value is None or isinstance(value, bool):
        return f"{each}.type = %s", [json.dumps(value)]  # 'null', 'true', 'false'
    if isinstance(value, str):
        return f"{each}.type = 'text' AND {each}.atom = %s", [value]
    return _number_is(each, value, container, key)


# The integers SQLite reads as integers; past them, as doubles.
_INT64 = range(-(2**63), 2**63)


def _number_is(
    each: str, number: float, container: str, key: str | None
) -> tuple[str, list[Any]]:
    """SQL true when the row ``each`` holds a number equal to ``number`` as PostgreSQL
    compares them: as decimals, exactly (``1`` is ``1.0``, ``1e+20`` is ``10**20``).

    A stored integer is compared by value, or past 64 bits by its text, as SQLite reads it
    as a double there (``2**64 + 1`` would be ``2**64``). A stored real, written as its
    shortest text, can only be the double nearest to ``number``, and only when that
    double's shortest text has the same value (``2.0**60`` is ``1.152921504606847e+18``).
    """
    exact = Decimal(json.dumps(number))
    options: list[str] = []
    params: list[Any] = []
    if exact == exact.to_integral_value():
        whole = int(exact)
        if whole in _INT64:
            # typeof: past 64 bits the atom is a double, -2**63 for -2**63 - 1.
            options.append(
                f"{each}.type = 'integer' AND typeof({each}.atom) = 'integer'"
                f" AND {each}.atom = %s"
            )
            params.append(whole)
        else:
            same_text, text_params = _text_is(each, str(whole), container, key)
            options.append(f"{each}.type = 'integer' AND {same_text}")
            params += text_params
    nearest = float(exact)
    if math.isfinite(nearest) and Decimal(repr(nearest)) == exact:
        # SQLite reads the text as it reads the stored one: the same double.
        options.append(f"{each}.type = 'real' AND {each}.atom = json_extract(%s, '$')")
        params.append(repr(nearest))
    return "(" + " OR ".join(f"({option})" for option in options) + ")", params


def _text_is(
    each: str, text: str, container: str, key: str | None
) -> tuple[str, list[Any]]:
    """SQL true when the JSON text of the row ``each`` of ``container`` is ``text``.

    ``json_each()`` gives only the value, as a double past 64 bits, and no JSON path can
    name every key. So the item is written over with ``text``, by its index in an array
    and by its key with ``json_patch()`` in an object (the key written as the JSONField
    writes it): the JSON stays the same only if the item already said ``text``.
    """
    if key is None:
        return (
            f"json_replace({container}, '$[' || {each}.key || ']', json(%s))"
            f" = json({container})",
            [text],
        )
    return (
        f"json_patch({container}, %s) = json({container})",
        ["{" + json.dumps(key) + ":" + text + "}"],
    )


class JobLogFilterSet(StrictFilterSet):
    level = LevelFilter(
        field_name="level",
        lookup_expr="gte",
        help_text=_(
            "This level and above: a number or a name (DEBUG, INFO, WARNING, ERROR, CRITICAL)."
        ),
    )
    level_exact = LevelFilter(
        field_name="level", help_text=_("Exactly this level: a number or a name.")
    )
    message = TextFilter(
        field_name="message",
        lookup_expr="icontains",
        help_text=_("Lines whose message contains this text."),
    )
    after = _moment("created_at", "gte", _("Written at or after."))
    before = _moment("created_at", "lt", _("Written before."))
    period = PeriodFilter(
        field_name="created_at",
        help_text=format_lazy(
            "{} {}", _("Lines written in this period."), _PERIOD_HELP
        ),
    )

    class Meta:
        model = JobLog
        fields: list[str] = []


class JobMonitorFilterSet(django_filters.FilterSet):
    state = CommaListFilter(
        method="filter_state",
        allowed=(*MonitorState.values, "unhealthy"),
        help_text=_(
            "One state or a comma list (healthy, late, failing, slow, disabled, or unhealthy: late, failing and slow)."
        ),
    )
    job_name = CommaListFilter(
        field_name="job_name", help_text=_("One job name or a comma list.")
    )
    enabled = BooleanFilter(
        field_name="enabled", help_text=_("true: enabled monitors; false: disabled.")
    )

    class Meta:
        model = JobMonitor
        fields: list[str] = []

    def filter_state(
        self, qs: QuerySet[JobMonitor], name: str, value: list[str] | None
    ) -> QuerySet[JobMonitor]:
        if not value:
            return qs
        states = set(value)
        if "unhealthy" in states:
            states = (states - {"unhealthy"}) | set(MonitorState.UNHEALTHY)
        return qs.filter(state__in=sorted(states))
