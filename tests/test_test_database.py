"""The suite's own SQLite test database: a lock another thread's connection kept is
released before the flush (tests/conftest.py), so one leaked cursor or transaction no
longer fails the flush of every later test ("database table is locked")."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import OperationalError, connection, connections

from django_jobstatus.models import JobRun
from tests.conftest import _release_other_sqlite_connections

pytestmark = [pytest.mark.engine_agnostic, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("left", ["a read half-done", "an open transaction"])
def test_a_lock_a_finished_thread_left_is_released(left: str) -> None:
    JobRun.objects.start("tests.one")
    JobRun.objects.start("tests.two")
    kept: list[Any] = []

    def leave() -> None:
        other = connections["default"]
        other.ensure_connection()
        cursor = other.connection.cursor()
        if left == "a read half-done":
            cursor.execute("SELECT id FROM django_jobstatus_jobrun")
            cursor.fetchone()
        else:
            cursor.execute("BEGIN")
            cursor.execute("UPDATE django_jobstatus_jobrun SET message = 'held'")
        kept.append(cursor)  # as a traceback would keep it

    thread = threading.Thread(target=leave)
    thread.start()
    thread.join(10)
    with pytest.raises(OperationalError, match="locked"):
        JobRun.objects.all().delete()
    held = _release_other_sqlite_connections(connection)
    assert held  # it says what held the lock
    JobRun.objects.all().delete()
    assert not JobRun.objects.exists()
