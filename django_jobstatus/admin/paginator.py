"""Big tables in the admin: a paginator that never counts a whole table (the changelist's
COUNT(*) reads every row: seconds on millions of runs), deep pages that never walk a long
OFFSET over whole rows, and a changelist that never lists more than a page and reaches
every row with "older" links, whatever the count says.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ORDER_VAR, PAGE_VAR, ChangeList
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext

from django_jobstatus.admin.display import format_cell
from django_jobstatus.admin.forms import ActionForm

# Counting stops one row past here: a changelist shows "10,000+" rather than scanning millions of rows.
COUNT_CAP = 10_000
# The order both big changelists use by default, which their (created_at, id) indexes serve.
NEWEST_FIRST = ("-created_at", "-id")
# Pages that start past this many rows find their first row through the index alone.
DEEP = 1000
# The query parameter of the "older" links: the created_at and id of the last row shown.
OLDER_VAR = "older"


def _newest_first(queryset: Any) -> bool:
    # The changelist appends the model's ordering to its own: the same fields twice.
    return tuple(dict.fromkeys(queryset.query.order_by)) == NEWEST_FIRST


def _past(created: datetime, pk: Any, *, reverse: bool = False, inclusive: bool) -> Q:
    """Rows after (created, pk) in newest-first order, or before it in oldest-first
    (``reverse``); with ``inclusive``, that row too.

    The plain bound on ``created_at`` says no more than the OR beside it, and is what an
    index of (…, created_at) starts its scan at: without it the scan began at the newest
    row and filtered out every row before the page (a job's page 2,000: 294 ms; an
    *Older* link 900,000 runs down: 883 ms).
    """
    if reverse:
        tie = Q(id__gte=pk) if inclusive else Q(id__gt=pk)
        return Q(created_at__gte=created) & (
            Q(created_at__gt=created) | Q(created_at=created) & tie
        )
    tie = Q(id__lte=pk) if inclusive else Q(id__lt=pk)
    return Q(created_at__lte=created) & (
        Q(created_at__lt=created) | Q(created_at=created) & tie
    )


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """``count`` is exact up to COUNT_CAP rows and capped above; on a big PostgreSQL table it never scans.

    On PostgreSQL, when the table holds more than COUNT_CAP rows: unfiltered, the count is
    the table's estimate (``pg_class.reltuples``); filtered, the capped count runs unless
    the planner would read it with a sequential scan (a filter no index serves, whose
    matches are rare) or it searches for a substring, and then the planner's estimate of
    the matches is the count (BigTableChangeList never lists more than a page for it).
    """

    cap = COUNT_CAP
    # True once ``count`` came from PostgreSQL's estimate: the real count may be above or below.
    estimated = False
    # True once ``count`` found a row past the cap (it then says the cap, as pages go).
    counted_past = False

    @property
    def past_cap(self) -> bool:
        """Whether more rows match than the cap: counted past it, or estimated above it."""
        return self.counted_past or self.count > self.cap

    @cached_property
    def count(self) -> int:
        queryset: Any = self.object_list
        query = getattr(queryset, "query", None)
        if query is None:
            return len(queryset)
        if query.is_empty():
            return 0  # .none(): nothing to count, nor to EXPLAIN
        connection = connections[queryset.db]
        # One row past the cap: exactly the cap is a count, more is "10,000+".
        capped = queryset.order_by()[: self.cap + 1]
        if (
            connection.vendor == "postgresql"
            and self._estimate(connection, queryset.model._meta.db_table) > self.cap
        ):
            if not query.where:
                self.estimated = True
                return self._estimate(connection, queryset.model._meta.db_table)
            if _substring(query.where):
                # A substring search: its matches are checked row by row, even through a
                # trigram index, so counting would read every candidate.
                self.estimated = True
                return max(int(_plan(connection, queryset.order_by())["Plan Rows"]), 0)
            plan = _plan(connection, capped)
            if _scans(plan):
                # A table scan: the estimate of the rows under the LIMIT is the count.
                self.estimated = True
                return max(int(_under_limit(plan)["Plan Rows"]), 0)
        found = int(capped.count())
        self.counted_past = found > self.cap
        return min(found, self.cap)

    def page(self, number: Any) -> Page:  # type: ignore[type-arg]
        """Newest first, a deep page reads from the nearer end of the index, never a long OFFSET of rows.

        The back half of the pages is read oldest first from the end, so the last page
        holds the oldest rows even when an estimated count is below the real one (the
        "older" links reach the rows between); a page past DEEP rows finds its first row
        with an index-only OFFSET of (created_at, id), then reads its rows from there.
        """
        queryset: Any = self.object_list
        if getattr(queryset, "query", None) is None or not _newest_first(queryset):
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        size = self.per_page
        if number == self.num_pages:
            # What the count leaves, estimated or not: a full page here repeated rows of
            # the page before whenever the count was not a multiple of the page size.
            size = self.count - bottom
            from_end = 0
        else:
            from_end = self.count - bottom - size
        if number > 1 and from_end < bottom:
            oldest_first = queryset.reverse()
            rows = list(
                reversed(self._rows(oldest_first, from_end, size, reverse=True))
            )
        else:
            rows = self._rows(queryset, bottom, size)
        return Page(rows, number, self)

    @staticmethod
    def _rows(
        queryset: Any, offset: int, size: int, *, reverse: bool = False
    ) -> list[Any]:
        if offset < DEEP:
            return list(queryset[offset : offset + size])
        first = queryset.values_list("created_at", "id")[offset : offset + 1].first()
        if first is None:
            return []
        return list(
            queryset.filter(_past(*first, reverse=reverse, inclusive=True))[:size]
        )

    @staticmethod
    def _estimate(connection: Any, table: str) -> int:
        # reltuples is -1 before the first ANALYZE (PostgreSQL 14+): then the capped count runs.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [table],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else -1


def _plan(connection: Any, queryset: Any) -> dict[str, Any]:
    """PostgreSQL's plan of ``queryset`` (EXPLAIN, not run)."""
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        value = cursor.fetchone()[0]
    plan: dict[str, Any] = (json.loads(value) if isinstance(value, str) else value)[0][
        "Plan"
    ]
    return plan


def _under_limit(plan: dict[str, Any]) -> dict[str, Any]:
    """The node a Limit reads from (its estimate is the rows before the LIMIT); else ``plan``."""
    if plan.get("Node Type") != "Limit":
        return plan
    return next(
        (
            child
            for child in plan.get("Plans", [])
            if child.get("Parent Relationship") == "Outer"
        ),
        plan,
    )


def search_words(search_term: str) -> list[str]:
    """The words of an admin search as Django's own search reads them (a quoted phrase is one)."""
    words = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        words.append(bit)
    return words


def rarest_first(queryset: Any, lookup: str, words: list[str]) -> list[str]:
    """``words`` with the one PostgreSQL expects the fewest rows of ``lookup`` for first (EXPLAIN, not run).

    The planner reads a common word's share from the column's statistics; it cannot tell
    what a trigram index spends on one (every line holding any of its trigrams).
    """
    connection = connections[queryset.db]
    rows = [
        _plan(connection, queryset.filter(**{lookup: word}).order_by())["Plan Rows"]
        for word in words
    ]
    first = rows.index(min(rows))
    return [words[first], *words[:first], *words[first + 1 :]]


def _substring(node: Any) -> bool:
    """Whether a WHERE clause holds a substring lookup (``contains``, ``icontains``)."""
    if getattr(node, "lookup_name", None) in {"contains", "icontains"}:
        return True
    return any(_substring(child) for child in getattr(node, "children", ()))


def _scans(plan: dict[str, Any]) -> bool:
    """Whether a node of ``plan`` reads a whole table."""
    return plan.get("Node Type") == "Seq Scan" or any(
        _scans(child) for child in plan.get("Plans", [])
    )


class BigTableChangeList(ChangeList):
    """A changelist that lists at most a page, and links to the rows older than its last one.

    Django lists the whole queryset when the count is below a page, and PostgreSQL's
    estimate of a search's matches can be tiny when thousands match: here a page never
    holds more than ``list_per_page`` rows (``list_max_show_all`` for "Show all"). In the
    newest-first order, a full page links to the next rows by their (created_at, id)
    ("?older="), so every row can be reached however far the count is from the truth.
    Another order has no such link: its pages end where the count does, and the page
    says so, with a link to the newest-first order.
    """

    older_url: str | None = None
    # The newest-first changelist, set when the active order's pages may end before its
    # last matching row (past the cap, or after an estimate).
    newest_first_url: str | None = None
    # The count the page states, and how: "exact", "about" (PostgreSQL's estimate) or
    # "at least" (counting stopped at the cap, or the estimate is below the rows listed).
    counted = 0
    count_is = "exact"

    @property
    def capped_total(self) -> str:
        """What "Select all" acts on when more runs match than the paginator's cap: "10,000+";
        "" when the count is exact (the cap itself too), or when it is an estimate not
        above the cap (see ``uncounted``).

        Django's action bar offers "Select all 10000 job runs" for the capped count, then acts
        on every matching run: the bar must say what the action will touch.
        """
        paginator = getattr(self, "paginator", None)
        if not isinstance(paginator, CappedCountPaginator):
            return ""
        if not paginator.past_cap or self.params.get(OLDER_VAR):
            return ""
        return f"{number_format(paginator.cap, force_grouping=True)}+"

    @property
    def uncounted(self) -> bool:
        """Whether the count is PostgreSQL's estimate not above the cap: any number of runs may
        match, and "Select all" says "all matching" rather than a number."""
        return bool(
            getattr(getattr(self, "paginator", None), "estimated", False)
            and not self.params.get(OLDER_VAR)
            and not self.capped_total
        )

    def get_filters_params(self, params: Any = None) -> Any:
        lookup_params = super().get_filters_params(params)
        lookup_params.pop(OLDER_VAR, None)
        return lookup_params

    def get_queryset(self, request: Any, exclude_parameters: Any = None) -> Any:
        queryset = super().get_queryset(request, exclude_parameters)
        older = self.params.get(OLDER_VAR)
        if older and _newest_first(queryset):
            queryset = queryset.filter(self._older_than(str(older)))
        return queryset

    def get_ordering_field(self, field_name: Any) -> Any:
        # Only the columns offered for sorting, whose orders an index serves: Django would
        # sort by any column an ?o= names (by status: a third of a second on a million runs).
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)

    def _older_than(self, value: str) -> Q:
        created, _sep, pk = value.partition(",")
        try:
            moment = datetime.fromisoformat(created)
            if timezone.is_naive(moment):
                moment = timezone.make_aware(moment)
            # In UTC, as the link writes it: 0001-01-01T00:00+01:00 has no UTC date (SQLite
            # raised OverflowError adapting it, a 500), and PostgreSQL holds no offset past
            # 15:59. No row has such a moment, so it is a bad link like any other.
            moment = moment.astimezone(UTC)
            key = self.model._meta.pk.to_python(pk)
        except (ValueError, OverflowError, ValidationError) as exc:
            raise IncorrectLookupParameters(exc) from exc
        return _past(moment, key, inclusive=False)

    def get_results(self, request: Any) -> None:
        super().get_results(request)
        limit = (
            self.list_max_show_all
            if self.show_all and self.can_show_all
            else self.list_per_page
        )
        newest_first = _newest_first(self.queryset)
        # "Show all" lists one page only where it may: past list_max_show_all, Django pages
        # the rows, and its page links keep all= (each listed the first page again).
        one_page = bool(
            self.params.get(OLDER_VAR)
            or not self.multi_page
            or (self.show_all and self.can_show_all)
        )
        if one_page:
            # The count said one page (or none was asked for): never more than a page.
            rows = list(self.queryset._clone()[: limit + 1])
            more = len(rows) > limit
            self.result_list = rows[:limit]
            before = 0
            complete = not more
        else:
            rows = list(self.result_list)
            self.result_list = rows
            last_page = self.page_num >= self.paginator.num_pages
            more = len(rows) >= limit and not last_page
            before = (self.page_num - 1) * self.list_per_page
            # A first page short of a page lists every match, whatever an estimate said
            # (above it, with stale statistics: "about 200" over 3 runs, empty pages).
            complete = self.page_num == 1 and len(rows) < limit
            if complete:
                self.multi_page = False
                self.result_count = len(rows)
        self._state_count(before + len(self.result_list), all_seen=complete)
        if self.params.get(OLDER_VAR):
            # Django offers "Select all" when the count differs from the rows listed, and
            # it would act on every match, not on the older runs alone.
            self.multi_page = False
            self.result_count = len(self.result_list)
        paginator: Any = self.paginator
        # Past a page, rows no page lists; past the last page, maybe.
        uncertain = getattr(paginator, "past_cap", False) or getattr(
            paginator, "estimated", False
        )
        if not newest_first and (more if one_page else uncertain):
            self.newest_first_url = self.get_query_string(
                remove=[ORDER_VAR, PAGE_VAR, OLDER_VAR]
            )
        if more and newest_first and self.result_list:
            last = self.result_list[-1]
            with contextlib.suppress(AttributeError):
                self.older_url = self.get_query_string(
                    {OLDER_VAR: f"{last.created_at.isoformat()},{last.pk}"},
                    remove=[PAGE_VAR],
                )

    def _state_count(self, seen: int, *, all_seen: bool) -> None:
        """Set the count the page states: never an estimate as a fact, never fewer than
        the ``seen`` rows up to this page's last (all of them when ``all_seen``).

        PostgreSQL's estimate of a search's matches can say 1 where 130 match, and a
        page reached by an "older" link counts the runs from there on, not its own rows.
        """
        paginator: Any = self.paginator
        if all_seen:
            self.counted, self.count_is = seen, "exact"
        elif getattr(paginator, "past_cap", False):
            self.counted, self.count_is = paginator.cap, "at least"
        elif seen > paginator.count:
            self.counted, self.count_is = seen, "at least"
        else:
            self.counted = paginator.count
            self.count_is = (
                "about" if getattr(paginator, "estimated", False) else "exact"
            )


class BigTableAdmin:
    """A ModelAdmin mixin for tables of millions of rows: its changelist is a BigTableChangeList.

    Listed before the ModelAdmin in the bases, and after mixins that wrap the changelist
    (such as the monitor column), which then wrap this one.
    """

    action_form = ActionForm

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return BigTableChangeList

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, obj: Any) -> SafeString:
        """Django's row checkbox, the same HTML, without rendering a form widget's templates per row."""
        return format_cell(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            format_cell(gettext("Select this object for an action - {}"), str(obj)),
        )
