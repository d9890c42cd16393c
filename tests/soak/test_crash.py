"""Crash: a worker process killed with SIGKILL mid-run, then ``reap_jobstatus``, on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from django_jobstatus import track
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.signals import job_status_changed
from tests.soak.conftest import (
    actor_env,
    start_actor,
    suite_database,
    wait_for_line,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TIMEOUT = 5  # the heartbeat timeout the reaper is given, in seconds


def _reap(timeout: float) -> str:
    out = StringIO()
    call_command("reap_jobstatus", f"--timeout={timeout}", stdout=out)
    return out.getvalue()


def _started(out: Path, index: int, process: Any) -> JobRun:
    """The run of beater ``index``, once it has reported progress and written a log line."""
    line = wait_for_line(out, "beater", index, "run ", process)
    run = JobRun.objects.get(pk=line.split()[1])
    wait_for(
        lambda: (
            JobRun.objects.filter(pk=run.pk, progress_current__gte=20).exists()
            and JobLog.objects.filter(run=run).exists()
        ),
        timeout=60,
        what=f"beater {index} to record progress and logs",
        process=process,
        log=out / f"beater-{index}.log",
    )
    return run


def _row(run: JobRun) -> dict[str, Any]:
    return JobRun.objects.filter(pk=run.pk).values().get()


def _lines(run: JobRun) -> list[tuple[Any, ...]]:
    return list(
        JobLog.objects.filter(run=run)
        .order_by("pk")
        .values_list("pk", "created_at", "level", "message")
    )


def test_a_killed_worker_leaves_its_run_running_until_the_reaper_marks_it_lost(
    tmp_path: Path, settings: Any
) -> None:
    # The reaper's configuration: it refuses a timeout below two of its heartbeat intervals.
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": TIMEOUT}
    with track("faults.done") as job:
        job.info("done before the crash")
    done = job.run
    done_row = _row(done)
    (tmp_path / "config.json").write_text(json.dumps({}))
    env = actor_env(suite_database(), {"PROGRESS_INTERVAL": 0.1})
    signalled: list[tuple[str, str, str]] = []

    def record(sender: Any, run: JobRun, previous: str, status: str, **_: Any) -> None:
        signalled.append((str(run.pk), previous, status))

    job_status_changed.connect(record, weak=False, dispatch_uid="test-crash")
    try:
        with contextlib.ExitStack() as stack:
            victim = start_actor(stack, tmp_path, "beater", 0, env)
            survivor = start_actor(stack, tmp_path, "beater", 1, env)
            lost = _started(tmp_path, 0, victim)
            alive = _started(tmp_path, 1, survivor)

            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
            crashed = _row(lost)
            lines = _lines(lost)
            assert crashed["status"] == Status.RUNNING
            assert crashed["finished_at"] is None

            # Within the timeout the reaper leaves it alone.
            assert "Marked 0 runs lost" in _reap(3600)
            assert _row(lost) == crashed

            wait_for(
                lambda: JobRun.objects.stale(TIMEOUT).filter(pk=lost.pk).exists(),
                timeout=TIMEOUT + 60,
                what="the dead worker's heartbeat to get older than the timeout",
            )
            assert "Marked 1 run lost; 0 finished" in _reap(TIMEOUT)

            reaped = _row(lost)
            changed = {name for name in crashed if crashed[name] != reaped[name]}
            # error_fingerprint: the run's cause, for the failures view.
            assert changed == {
                "status",
                "finished_at",
                "updated_at",
                "message",
                "error_fingerprint",
            }
            assert reaped["status"] == Status.LOST
            assert reaped["finished_at"] >= crashed["heartbeat_at"]
            assert re.match(r"Lost: no heartbeat since .*; reaped\.", reaped["message"])
            new_lines = _lines(lost)
            assert new_lines[:-1] == lines  # the job's lines are all kept
            assert new_lines[-1][2:] == (logging.WARNING, reaped["message"])
            assert signalled == [(str(lost.pk), Status.RUNNING, Status.LOST)]

            # Nothing else changed: the live worker still runs, the finished run is as it was.
            assert JobRun.objects.get(pk=alive.pk).status == Status.RUNNING
            assert _row(done) == done_row
            assert "Marked 0 runs lost" in _reap(TIMEOUT)
            assert _row(lost) == reaped

            alive.request_kill()
            assert survivor.wait(timeout=60) == 0
            assert JobRun.objects.get(pk=alive.pk).status == Status.KILLED
    finally:
        job_status_changed.disconnect(dispatch_uid="test-crash")
