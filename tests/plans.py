"""PostgreSQL plans in tests: EXPLAIN with plan types priced out, and tables vacuumed as on a real server."""

from __future__ import annotations

import functools

import pytest
from django.db import connection

from tests.waiting import wait_for


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


def vacuum_analyze(*models, timeout: float = 30.0) -> None:
    """VACUUM ANALYZE the models' tables until every page of them is all-visible.

    The test server commits asynchronously (``synchronous_commit=off``), and VACUUM marks a
    page all-visible, which an index-only scan needs, only when its rows' commits are
    flushed (hence the CHECKPOINT) and older than every snapshot open in the database (an
    autovacuum worker's ANALYZE, say). A table left partly visible has its index-only scans
    priced as index scans, and the planner chose another index (a CI run, 2026-12-05):
    VACUUM again until ``pg_class.relallvisible`` covers its pages, or fail naming the
    sessions that hold the rows back. The index pass is asked for (``INDEX_CLEANUP ON``):
    VACUUM skips it when under 2% of a table's pages hold dead items (a rolled-back
    insert's), and such a page is never all-visible (a CI run, 2026-12-07).
    """
    with connection.cursor() as cursor:
        for model in models:
            table = model._meta.db_table
            try:
                wait_for(
                    functools.partial(_vacuumed, cursor, table),
                    timeout=timeout,
                    interval=0.05,
                    what=f"every page of {table} all-visible",
                )
            except pytest.fail.Exception as exc:
                pytest.fail(f"{exc}; {_why_not(cursor, table)}")


def _vacuumed(cursor, table: str) -> bool:
    """VACUUM ANALYZE ``table`` (its commits flushed first); whether every page is all-visible."""
    cursor.execute("CHECKPOINT")
    cursor.execute(f"VACUUM (ANALYZE, INDEX_CLEANUP ON) {table}")
    pages, visible = _pages(cursor, table)
    return visible >= pages


def visible_pages(model) -> tuple[int, int]:
    """The pages of ``model``'s table and how many of them are all-visible, as VACUUM last counted."""
    with connection.cursor() as cursor:
        return _pages(cursor, model._meta.db_table)


def _pages(cursor, table: str) -> tuple[int, int]:
    cursor.execute(
        "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass",
        [table],
    )
    pages, visible = cursor.fetchone()
    return pages, visible


def _why_not(cursor, table: str) -> str:
    """What may keep ``table``'s pages from being all-visible, for a failure's message."""
    cursor.execute(
        "SELECT relpages, relallvisible, n_dead_tup, n_live_tup"
        " FROM pg_class JOIN pg_stat_user_tables ON relid = pg_class.oid"
        " WHERE pg_class.oid = %s::regclass",
        [table],
    )
    pages, visible, dead, live = cursor.fetchone()
    cursor.execute(
        "SELECT pid, backend_type, state, backend_xid IS NOT NULL"
        " OR backend_xmin IS NOT NULL, left(query, 80)"
        " FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    sessions = cursor.fetchall()
    holding = [row[:3] + row[4:] for row in sessions if row[3]]
    cursor.execute(
        "SELECT pid, mode, granted FROM pg_locks"
        " WHERE relation = %s::regclass AND pid <> pg_backend_pid()",
        [table],
    )
    return (
        f"{visible} of {pages} pages all-visible, {live} live and {dead} dead rows;"
        f" transactions holding rows back: {holding};"
        f" locks on the table: {cursor.fetchall()};"
        f" other sessions: {[row[:3] + row[4:] for row in sessions]}"
    )
