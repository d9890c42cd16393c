"""SQLite: a purge, a reap or an integration's record while others write never fails with "database is locked".

A file database in WAL mode, as the demo runs it. A deferred transaction that reads and
then writes cannot get the write lock once another connection has committed since its
read began: SQLite answers SQLITE_BUSY at once, whatever the busy timeout. Each purge
batch, each reaper batch and each integration's look-up-then-write must therefore take the
write lock up front (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands.test_concurrency import ROOT, writers


def _run(path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.commands.sqlite_purge", str(path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


def _report(path: Path, action: str) -> dict:
    """What the process doing ``action`` printed last, as JSON."""
    return json.loads(_run(path, action).strip().splitlines()[-1])


def _in_a_new_database(tmp_path: Path, action: str) -> dict:
    path = tmp_path / "db.sqlite3"
    _run(path, "migrate")
    return _report(path, action)


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_purge_of_a_file_database_while_two_processes_write(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _run(path, "migrate")
    _run(path, "seed", "3000")
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
    with writers(database, tmp_path) as reports:
        report = _report(path, "purge")

    assert report["code"] == 0, report["err"]
    assert report["left"] == 0
    assert "Deleted 3000 runs and 6000 log lines" in report["out"]
    assert all(writer["runs"] > 5 for writer in reports)


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_reap_of_a_file_database_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    # Each time the reaper is about to end a run it has read, another connection writes.
    # In a deferred transaction that write committed, and the reaper's own then failed
    # ("database is locked"). Holding the write lock from its first read, the reaper
    # makes the other connection wait (refused here: its busy timeout is zero).
    report = _in_a_new_database(tmp_path, "reap")

    assert report["code"] == 0, report["err"]
    assert report["statuses"] == {
        "tests.silent": "lost",
        "tests.forgotten": "killed",
        "tests.bystander": "running",
    }
    assert report["writes"] == ["database is locked", "database is locked"]


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_an_integration_records_a_task_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    # Each time the integration has looked up the task's run, another connection writes.
    # In a deferred transaction that write committed, and the integration's own then
    # failed, twice (it tries once more): the enqueueing went unrecorded, and the start
    # waited for the task's end. Holding the write lock from the look-up, the integration
    # makes the other connection wait (refused here: its busy timeout is zero).
    report = _in_a_new_database(tmp_path, "record")

    assert report["queued"] is True
    assert report["started"] is True
    assert report["statuses"] == {
        "tests.bystander": "running",
        "tests.queued": "queued",
        "tests.started": "running",
    }
    assert report["writes"] == ["database is locked", "database is locked"]
