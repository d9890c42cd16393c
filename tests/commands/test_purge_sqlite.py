"""SQLite: a purge while other processes write runs and logs never fails with "database is locked".

A file database in WAL mode, as the demo runs it. A deferred transaction that reads and
then writes cannot get the write lock once another connection has committed since its
read began: SQLite answers SQLITE_BUSY at once, whatever the busy timeout. Each purge
batch must therefore take the write lock up front (BEGIN IMMEDIATE).
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


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_purge_of_a_file_database_while_two_processes_write(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _run(path, "migrate")
    _run(path, "seed", "3000")
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
    with writers(database, tmp_path) as reports:
        report = json.loads(_run(path, "purge").strip().splitlines()[-1])

    assert report["code"] == 0, report["err"]
    assert report["left"] == 0
    assert "Deleted 3000 runs and 6000 log lines" in report["out"]
    assert all(writer["runs"] > 5 for writer in reports)
