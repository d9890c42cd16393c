"""Keyset ("cursor") pagination: stable while rows are added, and fast at millions of rows.

DRF's CursorPagination, subclassed: ordered by ``(key, id)``, with NULL as the largest
value, and the last row's ``(key, id)`` in an opaque cursor (see KeysetPagination).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import F, Q, QuerySet
from django.db.models.expressions import OrderBy
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import (
    Cursor,
    CursorPagination,
    PageNumberPagination,
)
from rest_framework.request import Request
from rest_framework.utils.urls import remove_query_param, replace_query_param

from django_jobstatus.conf import settings
from django_jobstatus.querysets import DURATION

_DURATION_ALIAS = "jobstatus_duration"


class Position(NamedTuple):
    """Where a cursor's page starts: after the row ``(value, pk)``, or at it when ``inclusive``.

    A page starts after the row its link was taken from, which the page before showed.
    An empty page has no row of its own, so its link back starts at the row its cursor
    named: that row was not on the empty page, and may still be there to list.
    """

    value: Any
    pk: Any
    inclusive: bool = False


def page_size(request: Request, param: str) -> int:
    """``?page_size=``: API_PAGE_SIZE when absent, else a whole number from 1 to API_MAX_PAGE_SIZE (a 400 otherwise)."""
    raw = request.query_params.get(param)
    if raw in (None, ""):
        return int(min(settings.API_PAGE_SIZE, settings.API_MAX_PAGE_SIZE))
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= settings.API_MAX_PAGE_SIZE:
        raise ValidationError(
            {
                param: [
                    _("Enter a whole number from 1 to %(max)d.")
                    % {"max": settings.API_MAX_PAGE_SIZE}
                ]
            }
        )
    return size


class KeysetPagination(CursorPagination):
    """DRF's CursorPagination, with a position of ``(key, id)`` instead of ``key`` and an offset.

    From DRF it keeps the query parameters, the page of links and its response, the
    browsable API's page controls and the schema's parameters. It replaces what cannot
    serve here: DRF filters on the first ordering field alone and walks ties with an offset
    capped at ``offset_cutoff`` (1000), so ``ordering=job_name`` over more runs per job than
    that shows rows again and never reaches the rest
    (``tests/api/test_runs.py::test_ordering_by_job_name_pages_through_more_ties_than_drfs_offset_cutoff``);
    its position is ``str(value)``, so NULL (a run not started) and the
    ``duration`` expression cannot be positions; a bad cursor is a 404 and a bad page size
    falls back silently. Here a position is the last row's ``(key, id)`` in a JSON cursor
    (see Position for an empty page's links), NULL sorts as the largest value, and bad
    input is a 400 naming the parameter. Tests:
    ``tests/api/test_runs.py::test_every_ordering_pages_through_all_runs_in_order_with_nulls_largest``,
    ``test_cursor_pages_walk_forward_and_back_without_gaps``,
    ``test_the_previous_link_of_an_emptied_page_lists_the_runs_before_it``,
    ``test_the_next_link_of_an_emptied_previous_page_lists_the_runs_after_it``,
    ``tests/api/test_bad_input.py::test_tampered_cursors_are_400``,
    ``tests/api/test_fuzz_filters.py::test_any_page_size_text_is_a_200_or_a_400_naming_it``.
    """

    page_size_query_param = "page_size"
    cursor_query_description = _("The cursor from a page's next or previous link.")
    invalid_cursor_message = _(
        "Invalid cursor: use the next or previous link of a page with the same ordering."
    )
    ordering_query_param = "ordering"
    # Public ordering name -> (expression name in the queryset, kind of value, nullable).
    orderings: dict[str, tuple[str, str, bool]] = {
        "created_at": ("created_at", "datetime", False),
        "started_at": ("started_at", "datetime", True),
        "finished_at": ("finished_at", "datetime", True),
        "duration": (_DURATION_ALIAS, "duration", True),
        "job_name": ("job_name", "str", False),
    }
    # The default; paginate_queryset sets the request's as a 1-tuple (as DRF does).
    ordering: str | tuple[str] = "-created_at"
    ordering_param_enabled = True

    # Set by paginate_queryset (DRF's names).
    has_next = False
    has_previous = False
    next_position: Position | None = None
    previous_position: Position | None = None

    def get_page_size(self, request: Request) -> int:
        return page_size(request, self.page_size_query_param)

    def get_ordering(self, request: Request, queryset: Any, view: Any) -> tuple[str]:
        raw = (
            request.query_params.get(self.ordering_query_param)
            if self.ordering_param_enabled
            else None
        )
        if raw in (None, ""):
            return (str(type(self).ordering),)
        if raw.removeprefix("-") not in self.orderings:
            choices = ", ".join(f"{name}, -{name}" for name in self.orderings)
            raise ValidationError(
                {
                    self.ordering_query_param: [
                        _("%(value)r is not a valid ordering; use one of %(choices)s.")
                        % {"value": raw, "choices": choices}
                    ]
                }
            )
        return (str(raw),)

    # Cursors: DRF's Cursor, whose position is a Position; the offset is always 0.

    def encode_cursor(self, cursor: Cursor) -> str:
        value, pk, inclusive = cursor.position
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, timedelta):
            value = value // timedelta(microseconds=1)
        payload = {
            "o": self.ordering[0],
            "v": value,
            "i": str(pk),
            "p": cursor.reverse,
            "x": inclusive,
        }
        encoded = (
            base64.urlsafe_b64encode(
                json.dumps(payload, separators=(",", ":")).encode()
            )
            .decode()
            .rstrip("=")
        )
        return str(replace_query_param(self.base_url, self.cursor_query_param, encoded))

    def decode_cursor(self, request: Request) -> Cursor | None:
        raw = request.query_params.get(self.cursor_query_param)
        if not raw:
            return None
        error = ValidationError(
            {self.cursor_query_param: [self.invalid_cursor_message]}
        )
        kind = self.orderings[self.ordering[0].removeprefix("-")][1]
        try:
            payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            if (
                not isinstance(payload, dict)
                or payload.get("o") != self.ordering[0]
                or not isinstance(payload.get("p"), bool)
                # Absent in the cursors of earlier versions.
                or not isinstance(payload.get("x", False), bool)
            ):
                raise error
            value = payload.get("v")
            if value is not None:
                value = self._position_value(value, kind)
                if value is None:
                    raise error
            pk = self.pk_field.to_python(payload.get("i"))
            if pk is None:
                raise error
        except (
            ValueError,
            TypeError,
            OverflowError,
            binascii.Error,
            UnicodeError,
            DjangoValidationError,
        ) as exc:
            raise error from exc
        return Cursor(
            offset=0,
            reverse=payload["p"],
            position=Position(value, pk, payload.get("x", False)),
        )

    @staticmethod
    def _position_value(value: Any, kind: str) -> Any:
        """A cursor's ``v`` as the database can compare it; None when it cannot."""
        if kind == "datetime":
            moment = parse_datetime(value) if isinstance(value, str) else None
            if moment is None or timezone.is_naive(moment):
                return None
            # In UTC (0001-01-01T00:00+01:00 has no UTC date: an OverflowError), as
            # PostgreSQL holds no offset past 15:59.
            return moment.astimezone(UTC)
        if kind == "duration":
            # Microseconds, as a signed 64-bit integer (SQLite's and PostgreSQL's bigint).
            if isinstance(value, bool) or not isinstance(value, int):
                return None
            if not -(2**63) <= value < 2**63:
                return None
            return timedelta(microseconds=value)
        if not isinstance(value, str) or "\x00" in value:
            return None
        # Text PostgreSQL stores: no NUL, no lone surrogate.
        value.encode()
        return value

    # Paging.

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any]:
        self.request = request
        self.base_url = request.build_absolute_uri()
        self.page_size = self.get_page_size(request)
        self.ordering = self.get_ordering(request, queryset, view)
        self.pk_field = queryset.model._meta.pk
        self.cursor = self.decode_cursor(request)
        field, _kind, nullable = self.orderings[self.ordering[0].removeprefix("-")]
        if field == _DURATION_ALIAS:
            queryset = queryset.alias(**{_DURATION_ALIAS: DURATION})
        position = self.cursor.position if self.cursor else None
        backwards = bool(self.cursor and self.cursor.reverse)
        # Walking backwards is walking the reversed order forwards. NULL sorts as the
        # largest value (PostgreSQL's default), so that a plain b-tree index serves both ways.
        desc = self.ordering[0].startswith("-") != backwards
        queryset = queryset.order_by(
            _key(field, desc=desc, nullable=nullable), "-pk" if desc else "pk"
        )
        if position is not None:
            queryset = queryset.filter(
                _beyond(
                    field, position, desc=desc, nulls_last=not desc, nullable=nullable
                )
            )
        rows = list(queryset[: self.page_size + 1])
        more = len(rows) > self.page_size
        self.page = rows = rows[: self.page_size]
        if backwards:
            rows.reverse()
        first = Position(self._value(rows[0], field), rows[0].pk) if rows else None
        last = Position(self._value(rows[-1], field), rows[-1].pk) if rows else None
        # An empty page links back from its cursor's own row (see Position).
        reopened = position._replace(inclusive=True) if position else None
        if backwards:
            self.has_previous, self.previous_position = more, first
            self.has_next, self.next_position = True, last or reopened
        else:
            self.has_next, self.next_position = more, last
            self.has_previous = position is not None
            self.previous_position = first or reopened
        self.display_page_controls = self.has_previous or self.has_next
        return rows

    @staticmethod
    def _value(row: Any, field: str) -> Any:
        if field == _DURATION_ALIAS:
            if row.started_at is None or row.finished_at is None:
                return None
            return row.finished_at - row.started_at
        return getattr(row, field)

    def get_next_link(self) -> str | None:
        if not self.has_next or self.next_position is None:
            return None
        return self.encode_cursor(
            Cursor(offset=0, reverse=False, position=self.next_position)
        )

    def get_previous_link(self) -> str | None:
        if not self.has_previous:
            return None
        if self.previous_position is None:
            return str(remove_query_param(self.base_url, self.cursor_query_param))
        return self.encode_cursor(
            Cursor(offset=0, reverse=True, position=self.previous_position)
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = super().get_paginated_response_schema(schema)
        # next and previous are always there (null at either end); DRF's example links
        # (api.example.org/accounts/ with its own cursor format) are not ours.
        response["required"] = ["next", "previous", "results"]
        for link in ("next", "previous"):
            response["properties"][link].pop("example", None)
        return response

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = str(
                    _("Rows per page (default %(default)d, at most %(max)d).")
                    % {
                        "default": settings.API_PAGE_SIZE,
                        "max": settings.API_MAX_PAGE_SIZE,
                    }
                )
                parameter["schema"] |= {
                    "minimum": 1,
                    "maximum": settings.API_MAX_PAGE_SIZE,
                }
        if self.ordering_param_enabled:
            choices = [f"{sign}{name}" for name in self.orderings for sign in ("-", "")]
            parameters.append(
                {
                    "name": self.ordering_query_param,
                    "required": False,
                    "in": "query",
                    "description": str(
                        _(
                            "Sort key; a leading - sorts newest/largest first (default %(default)s). Runs without a value (not started, not finished) sort as the largest."
                        )
                        % {"default": type(self).ordering}
                    ),
                    "schema": {"type": "string", "enum": choices},
                }
            )
        return parameters


def _key(field: str, *, desc: bool, nullable: bool) -> OrderBy:
    """``field``'s sort, NULL as the largest value."""
    if not nullable:
        return F(field).desc() if desc else F(field).asc()
    return F(field).desc(nulls_first=True) if desc else F(field).asc(nulls_last=True)


def _beyond(
    field: str, position: Position, *, desc: bool, nulls_last: bool, nullable: bool
) -> Q:
    """Rows after ``position`` (or at it, when inclusive) in the order ``(field, pk)``, both ``desc`` or both ascending."""
    value, pk, inclusive = position
    past = "lt" if desc else "gt"
    # The id breaks ties, so it alone decides whether the position's own row is in.
    pk_past = f"pk__{past}e" if inclusive else f"pk__{past}"
    if value is None:
        # Position among the NULLs.
        after_nulls = Q(**{f"{field}__isnull": True, pk_past: pk})
        return (
            after_nulls
            if nulls_last
            else after_nulls | Q(**{f"{field}__isnull": False})
        )
    same_or_past = Q(**{f"{field}__{past}e": value})  # lets an index bound the scan
    strictly = Q(**{f"{field}__{past}": value}) | Q(**{pk_past: pk})
    condition = same_or_past & strictly
    if nullable and nulls_last:
        condition |= Q(**{f"{field}__isnull": True})
    return condition


class LogPagination(KeysetPagination):
    """Log lines, oldest first; no ``ordering`` parameter."""

    orderings = {"created_at": ("created_at", "datetime", False)}
    ordering = "created_at"
    ordering_param_enabled = False


class MonitorPagination(PageNumberPagination):
    """Pages of monitors and incidents: small tables, numbered pages, the API's page sizes."""

    page_size_query_param = "page_size"

    def get_page_size(self, request: Request) -> int:
        return page_size(request, self.page_size_query_param)

    def get_page_number(self, request: Request, paginator: Any) -> Any:
        """``?page=``: 1 when absent, ``last``, or a whole number of 1 or more (a 400 otherwise).

        DRF answers any page it cannot show with 404 "Invalid page.", which names no
        parameter and reads as "no such monitor"; a page past the last one stays a 404.
        Digits only: Django's paginator would also read ``1e3`` and ``1.0``.
        """
        number = request.query_params.get(self.page_query_param) or "1"
        if number in self.last_page_strings:
            return paginator.num_pages
        if not (number.isascii() and number.isdigit() and number.lstrip("0")):
            raise ValidationError(
                {
                    self.page_query_param: [
                        _("Enter a whole number of 1 or more, or last.")
                    ]
                }
            )
        return number

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            bounds = {"minimum": 1}
            if parameter["name"] == self.page_size_query_param:
                bounds["maximum"] = settings.API_MAX_PAGE_SIZE
            parameter["schema"] |= bounds
        return parameters
