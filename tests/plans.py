"""PostgreSQL plans in tests: EXPLAIN with plan types priced out, and tables vacuumed as on a real server."""

from __future__ import annotations

from django.db import connection


def plan(
    sql: str, params: list | tuple = (), off: tuple[str, ...] = ("seqscan",)
) -> str:
    """EXPLAIN with the plan types ``off`` priced out: an index the query can use shows up in the plan.

    Set back at once: a SET LOCAL would last to the end of the test's transaction (its
    teardown's deletes then crawled without indexes).
    """
    with connection.cursor() as cursor:
        try:
            for plan_type in off:
                cursor.execute(f"SET enable_{plan_type} = off")
            cursor.execute(f"EXPLAIN {sql}", params)
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            for plan_type in off:
                cursor.execute(f"RESET enable_{plan_type}")


def vacuum_analyze(*models) -> None:
    """VACUUM ANALYZE the models' tables once their rows' commits are on disk.

    The test server commits asynchronously (``synchronous_commit=off``), and VACUUM marks a
    page all-visible, which an index-only scan needs, only when its rows' commits are
    flushed. Without the CHECKPOINT, whether it did depended on the WAL writer's timing, and
    so did the plan the planner chose.
    """
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
        for model in models:
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
