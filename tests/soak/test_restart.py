"""Database restart: a PostgreSQL cluster of the test's own is stopped and started again while tracked jobs run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.contrib.workers import ROOT
from tests.soak.conftest import Cluster, actor_env, start_actor, wait_for_line
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres]

NAME = "jobstatus_restart"
KINDS = ("through", "ok", "fail", "atomic")
ENDING = ("ok", "fail", "atomic")  # the jobs that end while the database is down


def _query(cluster: Cluster, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="postgres", dbname=NAME
    ) as db:
        return db.execute(sql, params).fetchall()  # type: ignore[arg-type]


def test_tracked_jobs_run_through_a_database_restart(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    with psycopg.connect(
        host="127.0.0.1",
        port=pg_cluster.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as db:
        db.execute(f"CREATE DATABASE {NAME}")
    database = pg_cluster.database(NAME)
    env = actor_env(database, {"PROGRESS_INTERVAL": 0.1, "FINISH_RETRY_TIMEOUT": 120.0})
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr
    (tmp_path / "config.json").write_text(json.dumps({}))

    with contextlib.ExitStack() as stack:
        processes = {
            kind: start_actor(stack, tmp_path, "outage", kind, env) for kind in KINDS
        }
        runs: dict[str, str] = {}
        for kind, process in processes.items():
            line = wait_for_line(tmp_path, "outage", kind, "run ", process)
            runs[kind] = line.split()[1]
        wait_for(
            lambda: (
                _query(
                    pg_cluster,
                    "SELECT count(*) FROM django_jobstatus_jobrun WHERE status = 'running' AND progress_current > 0",
                )
                == [(len(KINDS),)]
            ),
            timeout=60,
            what="every job to record progress",
        )
        before = _query(
            pg_cluster,
            "SELECT progress_current FROM django_jobstatus_jobrun WHERE id = %s",
            runs["through"],
        )[0][0]

        pg_cluster.stop()
        for kind in ENDING:
            (tmp_path / f"end-{kind}").touch()
        for kind, process in processes.items():
            text = "write failed" if kind == "through" else "finish refused"
            wait_for_line(tmp_path, "outage", kind, text, process)
        pg_cluster.start()

        # Once the database is back, the ends recorded during the outage arrive, and the
        # job that kept working records its progress again.
        for kind in ENDING:
            assert processes[kind].wait(timeout=180) == 0
        wait_for(
            lambda: (
                _query(
                    pg_cluster,
                    "SELECT progress_current > %s FROM django_jobstatus_jobrun WHERE id = %s",
                    before,
                    runs["through"],
                )
                == [(True,)]
            ),
            timeout=60,
            what="the running job to record progress after the restart",
            process=processes["through"],
            log=tmp_path / "outage-through.log",
        )
        (tmp_path / "end-through").touch()
        assert processes["through"].wait(timeout=180) == 0

    reports = {
        kind: json.loads((tmp_path / f"outage-{kind}.json").read_text())
        for kind in KINDS
    }
    # Nothing raised into the jobs; the failed writes were logged, never raised.
    assert {kind: report["errors"] for kind, report in reports.items()} == {
        kind: [] for kind in KINDS
    }
    assert all(
        message.startswith(("Could not record the progress", "Could not read the kill"))
        for message in reports["through"]["warnings"]
    ), reports["through"]["warnings"]
    assert reports["through"]["warnings"]
    for kind in ENDING:
        assert reports[kind]["refused"].get("finishing", 0) >= 1, kind

    rows = {
        str(pk): (status, current, error, result, finished)
        for pk, status, current, error, result, finished in _query(
            pg_cluster,
            "SELECT id, status, progress_current, error, result, finished_at IS NOT NULL FROM django_jobstatus_jobrun",
        )
    }
    assert len(rows) == len(KINDS)
    through = reports["through"]
    assert rows[runs["through"]] == (
        "succeeded",
        through["items"],
        "",
        {"items": through["items"]},
        True,
    )
    assert rows[runs["ok"]][0::4] == ("succeeded", True)
    assert rows[runs["atomic"]][0::4] == ("succeeded", True)
    assert rows[runs["fail"]][0] == "failed"
    assert rows[runs["fail"]][2] == (
        "PlannedError: planned failure while the database is down"
    )
    assert {kind: report["recorded"] for kind, report in reports.items()} == {
        "through": "succeeded",
        "ok": "succeeded",
        "fail": "failed",
        "atomic": "succeeded",
    }
    # The log lines written while the database was away were kept and written once it was back.
    lines = dict(
        _query(
            pg_cluster,
            "SELECT run_id::text, count(*) FROM django_jobstatus_joblog GROUP BY run_id",
        )
    )
    assert lines == {runs[kind]: reports[kind]["logs"] for kind in KINDS}
