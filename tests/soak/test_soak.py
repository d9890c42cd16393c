"""Soak: worker processes run tracked jobs while others kill, purge, reap and read, on PostgreSQL.

The size comes from the environment: JOBSTATUS_SOAK_WORKERS processes (default 8) each run
JOBSTATUS_SOAK_JOBS jobs (default 60: about a minute on 2 cores, the bounded soak of the
PostgreSQL run; the full soak is ``JOBSTATUS_SOAK_JOBS=500 pytest -m soak``), with a
PROGRESS_INTERVAL of JOBSTATUS_SOAK_INTERVAL seconds (default 0.2). A quarter of the jobs
run inside their own transaction. The totals are printed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count

from django_jobstatus.models import JobLog, JobRun, Status
from tests.soak.actors import ABANDONED, CHURN, KEPT
from tests.soak.conftest import actor_env, start_actor, suite_database

pytestmark = [pytest.mark.postgres, pytest.mark.soak]

WORKERS = int(os.environ.get("JOBSTATUS_SOAK_WORKERS", "8"))
JOBS = int(os.environ.get("JOBSTATUS_SOAK_JOBS", "60"))
INTERVAL = float(os.environ.get("JOBSTATUS_SOAK_INTERVAL", "0.2"))
ITEMS_PER_INTERVAL = 10  # a job's item sleeps INTERVAL / ITEMS_PER_INTERVAL
# A kill is read at most one interval after it is requested, and may take one more when a
# read fails: the items a job starts after the request, plus the one it was on.
KILL_BOUND = 2 * ITEMS_PER_INTERVAL + 2
REAP_TIMEOUT = 30  # seconds; far above the live jobs' heartbeat gaps

TERMINAL = {str(status) for status in Status.TERMINAL}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _lost_updates(
    pk: str, entry: dict[str, Any], row: dict[str, Any], lines: int
) -> list[str]:
    """What the run's row lacks of what its job wrote: progress, errors, result, log lines."""
    expected = {
        "progress_current": entry["done"],
        "progress_total": entry["items"],
        "has_errors": entry["errors"] > 0,
        "lines": entry["logs"],
    }
    found = {name: row.get(name) for name in expected} | {"lines": lines}
    if entry["outcome"] == "succeeded":
        expected["result"] = {"items": entry["items"]}
        found["result"] = row["result"]
    if entry["outcome"] == "failed":
        expected["error"] = f"PlannedError: planned failure at item {entry['done']}"
        found["error"] = row["error"]
    return [] if found == expected else [f"{pk}: {found}, the job wrote {expected}"]


@pytest.mark.timeout(max(600, JOBS * 40))
def test_soak(
    tmp_path: Path,
    audit: None,
    django_user_model: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    django_user_model.objects.create_superuser("soak", "soak@example.com", "soak")
    config = {
        "seed": 20261202,
        "jobs": JOBS,
        "interval": INTERVAL,
        "items_per_interval": ITEMS_PER_INTERVAL,
        "min_items": 10,
        "max_items": 50,
        "fail_rate": 0.1,
        "abandon_rate": 0.03,
        "atomic_rate": 0.25,
        "kill_pause": [0.2, 0.8],
        "reap_timeout": REAP_TIMEOUT,
        "user": "soak",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = actor_env(
        suite_database(),
        {
            "PROGRESS_INTERVAL": INTERVAL,
            "HEARTBEAT_TIMEOUT": REAP_TIMEOUT,
            "FINISH_RETRY_TIMEOUT": 30.0,
        },
    )
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        helpers = {
            role: start_actor(stack, tmp_path, role, 0, env)
            for role in ("killer", "purger", "reaper", "reader")
        }
        workers = [
            start_actor(stack, tmp_path, "worker", index, env)
            for index in range(WORKERS)
        ]
        deadline = (
            time.monotonic() + JOBS * 50 * INTERVAL / ITEMS_PER_INTERVAL * 4 + 120
        )
        for index, process in enumerate(workers):
            code = process.wait(timeout=max(deadline - time.monotonic(), 1))
            assert code == 0, (tmp_path / f"worker-{index}.log").read_text()[-3000:]
        (tmp_path / "stop").touch()
        for role, process in helpers.items():
            code = process.wait(timeout=120)
            assert code == 0, (tmp_path / f"{role}-0.log").read_text()[-3000:]
    elapsed = time.monotonic() - began
    report = _check(tmp_path, elapsed)
    with capsys.disabled():
        print(f"\nsoak totals:\n{report}")  # noqa: T201


def _worker_records(out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """What the workers' jobs wrote down, and the write warnings they logged (none expected)."""
    runs = [
        entry
        for index in range(WORKERS)
        for entry in _read_jsonl(out / f"worker-{index}.jsonl")
    ]
    assert len([r for r in runs if r["name"] != ABANDONED]) == WORKERS * JOBS
    # No error, deadlock or serialization failure surfaced to a job, and no write failed.
    assert [r["error"] for r in runs if r["outcome"] == "error"] == []
    warnings = [
        message
        for index in range(WORKERS)
        for message in json.loads((out / f"worker-{index}.json").read_text())[
            "warnings"
        ]
    ]
    assert warnings == []
    return runs, warnings


def _helper_reports(out: Path) -> dict[str, dict[str, Any]]:
    """The killer's, purger's, reaper's and reader's reports; none met an error."""
    helpers = {
        role: json.loads((out / f"{role}-0.json").read_text())
        for role in ("killer", "purger", "reaper", "reader")
    }
    assert {
        role: report["errors"] for role, report in helpers.items()
    } == dict.fromkeys(helpers, [])
    assert (
        helpers["reader"]["flips"] == []
    )  # the API never showed a finished run otherwise
    return helpers


@dataclasses.dataclass
class _Audit:
    """The audit trigger's rows: status changes, deletions, ends and kill requests per run."""

    changes: dict[uuid.UUID, list[tuple[str, str]]]
    deleted: dict[uuid.UUID, tuple[str, datetime | None]]
    ended_at: dict[uuid.UUID, datetime]
    killed_at: dict[uuid.UUID, datetime]  # when the kill request was written


def _audit() -> _Audit:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT run_id, op, old_status, new_status, kill_requested_at, at FROM soak_audit ORDER BY id"
        )
        rows = cursor.fetchall()
    audit = _Audit(defaultdict(list), {}, {}, {})
    for run_id, op, old, new, kill_at, at in rows:
        if op == "delete":
            audit.deleted[run_id] = (old, kill_at)
        elif op == "kill":
            audit.killed_at[run_id] = at
        else:
            audit.changes[run_id].append((old, new))
            if new in TERMINAL:
                audit.ended_at[run_id] = at
    return audit


def _signals(out: Path) -> list[dict[str, Any]]:
    """The job_status_changed signals the actors received; none left a finished state."""
    signals = [
        entry
        for path in sorted(out.glob("signals-*.jsonl"))
        for entry in _read_jsonl(path)
    ]
    assert [s for s in signals if s["previous"] in TERMINAL] == []
    return signals


@dataclasses.dataclass
class _Tally:
    """What the check of each job's run found: the problems, and the totals."""

    wrong: list[str] = dataclasses.field(default_factory=list)
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    kills: Counter[str] = dataclasses.field(default_factory=Counter)
    after_kill: list[int] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    purged: int = 0


def _final_state(
    entry: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    lines: dict[uuid.UUID, int],
    audit: _Audit,
    tally: _Tally,
) -> tuple[str, datetime | None] | None:
    """The run's last status and kill request, from its row or its deletion; None when gone."""
    pk = entry["run"]
    key = uuid.UUID(pk)
    if pk in rows:
        row = rows[pk]
        if entry["name"] != ABANDONED:
            tally.wrong += _lost_updates(pk, entry, row, lines.get(key, 0))
        return row["status"], row["kill_requested_at"]
    if key in audit.deleted:
        tally.purged += 1
        if entry["name"] != CHURN:
            tally.wrong.append(f"{pk} ({entry['name']}) was purged")
        return audit.deleted[key]
    tally.wrong.append(f"{pk}: gone without a trace")
    return None


def _check_kill(
    entry: dict[str, Any], kill_at: datetime | None, audit: _Audit, tally: _Tally
) -> None:
    """A kill request stopped the job within KILL_BOUND items, and only a request killed it."""
    pk, outcome = entry["run"], entry["outcome"]
    key = uuid.UUID(pk)
    # The request counts from when it was written to the table (the trigger's clock),
    # not from the requester's clock, which may be read long before the write.
    request = _ts(audit.killed_at.get(key)) if kill_at is not None else None
    if outcome == "killed" and (request is None or request >= entry["end"]):
        tally.wrong.append(f"{pk}: killed without a kill request while it ran")
    if request is None:
        return
    if request >= entry["end"]:
        tally.kills["requested after the job's work was done"] += 1
        return
    started_after = sum(1 for start in entry["starts"] if start >= request)
    tally.after_kill.append(started_after)
    if started_after > KILL_BOUND:
        tally.wrong.append(
            f"{pk}: {started_after} items started after the kill request (at most {KILL_BOUND})"
        )
    if outcome == "killed":
        tally.kills["ended killed"] += 1
        tally.latencies.append(audit.ended_at[key].timestamp() - request)
    else:
        tally.kills[f"ended {outcome} on its own first"] += 1


def _check(out: Path, elapsed: float) -> str:
    """Check the soak's records against the database; the totals."""
    runs, warnings = _worker_records(out)
    helpers = _helper_reports(out)
    audit = _audit()
    # Nothing left a finished state, and only finished runs were purged.
    left_terminal = [
        (pk, old, new)
        for pk, moves in audit.changes.items()
        for old, new in moves
        if old in TERMINAL
    ]
    assert left_terminal == []
    assert {status for status, _ in audit.deleted.values()} <= TERMINAL

    signals = _signals(out)
    ends_signalled: dict[str, list[str]] = defaultdict(list)
    for entry in signals:
        if entry["status"] in TERMINAL:
            ends_signalled[entry["run"]].append(entry["status"])

    rows = {
        str(row["id"]): row
        for row in JobRun.objects.filter(job_name__in=[KEPT, CHURN, ABANDONED]).values(
            "id",
            "status",
            "kill_requested_at",
            "progress_current",
            "progress_total",
            "has_errors",
            "result",
            "error",
        )
    }
    lines = dict(
        JobLog.objects.filter(run__job_name__in=[KEPT, ABANDONED, CHURN])
        .values_list("run_id")
        .annotate(n=Count("pk"))
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {JobLog._meta.db_table} l LEFT JOIN {JobRun._meta.db_table} r ON r.id = l.run_id WHERE r.id IS NULL"  # noqa: S608
        )
        assert cursor.fetchone() == (0,)  # no log line of a missing run

    tally = _Tally()
    for entry in runs:
        pk, outcome = entry["run"], entry["outcome"]
        tally.outcomes[outcome] += 1
        state = _final_state(entry, rows, lines, audit, tally)
        if state is None:
            continue
        final, kill_at = state
        if final != outcome:
            tally.wrong.append(f"{pk}: {final}, but its job ended {outcome}")
        if ends_signalled[pk] != [outcome]:
            tally.wrong.append(
                f"{pk}: ends signalled {ends_signalled[pk]}, expected [{outcome}]"
            )
        if entry["name"] != ABANDONED:
            _check_kill(entry, kill_at, audit, tally)
    assert tally.wrong == []
    assert (
        not JobRun.objects.filter(job_name__in=[KEPT, CHURN, ABANDONED])
        .active()
        .exists()
    )
    # The soak exercised every path.
    outcomes = tally.outcomes
    assert outcomes["killed"] and outcomes["failed"] and outcomes["lost"], outcomes
    assert tally.purged, "the purge deleted nothing"

    reader = helpers["reader"]
    latencies = sorted(tally.latencies)
    totals = {
        "workers x jobs": f"{WORKERS} x {JOBS}",
        "progress interval (s)": INTERVAL,
        "duration (s)": round(elapsed, 1),
        "runs by outcome": dict(sorted(outcomes.items())),
        "jobs inside their own transaction": sum(1 for r in runs if r.get("atomic")),
        "runs purged while the soak ran": tally.purged,
        "log lines kept": sum(lines.values()),
        "status changes audited": sum(len(moves) for moves in audit.changes.values()),
        "signals": len(signals),
        "transitions out of a finished state": len(left_terminal),
        "kill requests (API answers)": helpers["killer"]["answers"],
        "kill requests while a job ran": dict(tally.kills),
        "items started after a kill request (max, bound)": (
            max(tally.after_kill, default=0),
            KILL_BOUND,
        ),
        "kill to killed (s, median / p99 / max)": (
            round(statistics.median(latencies), 3),
            round(latencies[int(len(latencies) * 0.99)], 3),
            round(latencies[-1], 3),
        )
        if latencies
        else None,
        "purge loops": helpers["purger"]["loops"],
        "reap loops": helpers["reaper"]["loops"],
        "API reads (answers)": reader["answers"],
        "finished runs the reader watched": reader["finished_seen"],
        "write warnings in jobs": len(warnings),
    }
    report = "\n".join(f"  {name}: {value}" for name, value in totals.items())
    (out / "totals.txt").write_text(report)
    return report
