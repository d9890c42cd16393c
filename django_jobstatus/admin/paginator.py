"""A paginator that never counts a whole big table (integrations.md §5.5)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.core.paginator import Paginator
from django.db import connections

# Counting stops here: a changelist shows "10000" rather than scanning millions of rows.
COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """``count`` is exact up to COUNT_CAP rows and capped above; on a big PostgreSQL table it never scans.

    On PostgreSQL, when the table holds more than COUNT_CAP rows: unfiltered, the count is
    the table's estimate (``pg_class.reltuples``); filtered, the capped count runs unless
    the planner would read it with a sequential scan (a filter no index serves, whose
    matches are rare), and then the planner's estimate of the matches is the count.
    """

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        queryset: Any = self.object_list
        query = getattr(queryset, "query", None)
        if query is None:
            return len(queryset)
        connection = connections[queryset.db]
        capped = queryset.order_by()[: self.cap]
        if (
            connection.vendor == "postgresql"
            and self._estimate(connection, queryset.model._meta.db_table) > self.cap
        ):
            if not query.where:
                return self._estimate(connection, queryset.model._meta.db_table)
            if _scans(_plan(connection, capped)):
                return max(int(_plan(connection, queryset.order_by())["Plan Rows"]), 0)
        return int(capped.count())

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
    import json

    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        value = cursor.fetchone()[0]
    plan: dict[str, Any] = (json.loads(value) if isinstance(value, str) else value)[0][
        "Plan"
    ]
    return plan


def _scans(plan: dict[str, Any]) -> bool:
    """Whether a node of ``plan`` reads a whole table."""
    return plan.get("Node Type") == "Seq Scan" or any(
        _scans(child) for child in plan.get("Plans", [])
    )
