"""A paginator that never counts a whole big table (integrations.md §5.5)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.core.paginator import Paginator
from django.db import connections

# Counting stops here: a changelist shows "10000" rather than scanning millions of rows.
COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """``count`` is exact up to COUNT_CAP rows, and capped (or estimated, unfiltered on PostgreSQL) above."""

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        queryset: Any = self.object_list
        query = getattr(queryset, "query", None)
        if query is None:
            return len(queryset)
        connection = connections[queryset.db]
        if not query.where and connection.vendor == "postgresql":
            estimate = self._estimate(connection, queryset.model._meta.db_table)
            if estimate > self.cap:
                return estimate
        return int(queryset.order_by()[: self.cap].count())

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
