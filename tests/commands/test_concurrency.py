"""PostgreSQL: reaping races a finishing job; purging runs while other processes write runs and logs."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connection, connections
from django.db.models import Count
from django.utils import timezone

from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, Status
from tests.commands.seeding import seed
from tests.waiting import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _in_thread(
    target: Any, barrier: threading.Barrier, errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            barrier.wait(timeout=30)
            target()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_reapers_and_a_finishing_job_race_with_exactly_one_outcome_per_run() -> None:
    old = timezone.now() - timedelta(hours=1)
    runs = [
        JobRun.objects.start("tests.race", started_at=old, heartbeat_at=old)
        for _ in range(150)
    ]
    job_won: set[Any] = set()
    reaper_won: set[Any] = set()
    results: list[Any] = []
    errors: list[BaseException] = []

    def finish_jobs() -> None:
        for run in reversed(runs):  # meets the reapers (which go by pk) in the middle
            try:
                run.mark_succeeded({"ok": True})
                job_won.add(run.pk)
            except InvalidTransition:
                reaper_won.add(run.pk)

    def reaper() -> None:
        results.append(JobRun.objects.reap(60, batch_size=5))

    barrier = threading.Barrier(3)
    threads = [
        _in_thread(target, barrier, errors) for target in (finish_jobs, reaper, reaper)
    ]
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)

    statuses = dict(JobRun.objects.for_job("tests.race").values_list("pk", "status"))
    assert set(statuses.values()) <= {Status.SUCCEEDED, Status.LOST}
    assert {
        pk for pk, status in statuses.items() if status == Status.SUCCEEDED
    } == job_won
    assert {
        pk for pk, status in statuses.items() if status == Status.LOST
    } == reaper_won
    assert len(job_won) + len(reaper_won) == len(runs)
    assert sum(result.reaped for result in results) == len(
        reaper_won
    )  # no run reaped twice
    reap_lines = dict(
        JobLog.objects.filter(run__job_name="tests.race")
        .values_list("run_id")
        .annotate(n=Count("pk"))
    )
    assert reap_lines == dict.fromkeys(reaper_won, 1)


def _said(process: subprocess.Popen[str], expected: str) -> bool:
    """Whether ``process`` has printed a line now, and it is ``expected`` (never blocks)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 0)
    return bool(ready) and process.stdout.readline().strip() == expected


@contextlib.contextmanager
def writers(
    database: dict[str, Any], tmp_path: Path, count: int = 2
) -> Iterator[list[dict[str, Any]]]:
    """``count`` writer processes (tests/commands/writer.py) on ``database``, each past its
    warm-up; the list yielded holds their reports once the block has ended.
    """
    env = {**os.environ, "JOBSTATUS_WRITER_DB": json.dumps(database)}
    stop = tmp_path / "stop"
    logs = [tmp_path / f"writer-{index}.err" for index in range(count)]
    processes = []
    for log in logs:
        with log.open("w") as err:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.commands.writer", str(stop)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            )
    reports: list[dict[str, Any]] = []
    try:
        for process, log in zip(processes, logs, strict=True):
            wait_for(
                lambda process=process: _said(process, "ready"),
                timeout=60,
                what="the writer to say 'ready'",
                process=process,
                log=log,
            )
        yield reports
    finally:
        stop.touch()
        outputs = []
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                outputs.append(process.communicate())
    reports.extend(json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)


def test_purge_while_other_processes_create_and_finish_tracked_runs(
    tmp_path: Path,
) -> None:
    seed(
        connection, runs=20_000, logs_per_run=3, jobs=5, newest_days=40, oldest_days=100
    )
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")
    database = {key: connection.settings_dict[key] for key in keys}
    with writers(database, tmp_path) as reports:
        began = time.time()
        result = JobRun.objects.purge(days=0, keep_last=0, batch_size=500)
        ended = time.time()

    # Every writer operation succeeded: no run was deleted under a live job, no log refused.
    assert [report["errors"] for report in reports] == [[], []]
    assert not JobRun.objects.active().exists()
    assert not JobRun.objects.filter(job_name__startswith="seed.").exists()
    assert result.runs >= 20_000
    assert result.logs >= 60_000
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {JobLog._meta.db_table} l LEFT JOIN {JobRun._meta.db_table} r ON r.id = l.run_id WHERE r.id IS NULL"  # noqa: S608
        )
        assert cursor.fetchone() == (0,)  # no orphaned log line
    # A writer's run is either gone with all its lines, or kept with all of them.
    lines = (
        JobLog.objects.filter(run__job_name="tests.writer")
        .values_list("run_id")
        .annotate(n=Count("pk"))
    )
    assert {n for _, n in lines} <= {3}

    # The writers never waited on the purge for more than one batch.
    ops = [op for report in reports for op in report["ops"]]
    during = [
        seconds for start, seconds in ops if start < ended and start + seconds > began
    ]
    before = [seconds for start, seconds in ops[10:] if start + seconds < began]
    assert during, "no writer operation overlapped the purge"
    margin = 1.0 + 3 * max(before, default=0.0)
    assert max(during) < result.longest_batch + margin, (
        max(during),
        result.longest_batch,
        margin,
        result.batches,
    )


def test_two_purges_at_once_share_the_work_and_count_each_run_once() -> None:
    seed(connection, runs=4000, logs_per_run=2, jobs=3, newest_days=40, oldest_days=100)
    results: list[Any] = []
    errors: list[BaseException] = []

    def purge() -> None:
        results.append(JobRun.objects.purge(days=0, keep_last=0, batch_size=100))

    barrier = threading.Barrier(2)
    threads = [_in_thread(purge, barrier, errors) for _ in range(2)]
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sum(result.runs for result in results) == 4000
    assert sum(result.logs for result in results) == 8000
    assert not JobRun.objects.exists()
    assert not JobLog.objects.exists()
