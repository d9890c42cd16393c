"""The SQL an enqueue sends: in the caller's thread, and then by the writer of queued runs (writebehind.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

from django.db import connections
from django.test.utils import CaptureQueriesContext

from django_jobstatus import writebehind


@contextlib.contextmanager
def _behind() -> Iterator[list[str]]:
    """The SQL the writer of queued runs sends while the block runs, and until it has written them."""
    sql: list[str] = []
    insert = writebehind._insert

    def capturing(alias: str, rows: list[dict[str, Any]]) -> None:
        with CaptureQueriesContext(connections[alias]) as captured:
            insert(alias, rows)
        sql.extend(query["sql"] for query in captured.captured_queries)

    with mock.patch.object(writebehind, "_insert", capturing):
        yield sql
        assert writebehind.flush()


def statements(send: Callable[[], Any]) -> list[str]:
    """The SQL this process sent for ``send()`` (BEGIN, COMMIT and savepoints included): in
    the caller's thread, and then by the writer of queued runs, which only PostgreSQL has."""
    with _behind() as behind:
        with CaptureQueriesContext(connections["default"]) as captured:
            send()
        caller = [query["sql"] for query in captured.captured_queries]
    if connections["default"].vendor == "postgresql":
        assert not [sql for sql in caller if "django_jobstatus" in sql], caller
        # One query (one transaction): the tasks' advisory locks, the INSERT, the adoption.
        [sql] = [sql for sql in behind if sql not in ("BEGIN", "COMMIT")]
        assert sql.startswith("SELECT pg_advisory_xact_lock"), sql
        return [*caller, sql[sql.index('INSERT INTO "django_jobstatus_jobrun"') :]]
    assert behind == []
    return caller
