"""Jobs whose work is async: a TaskGroup that sees a kill, a job's thread that outlives the
main thread, a job that locks its own run and reports from a coroutine (found by a
red-team pass)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction

from django_jobstatus import JobKilled, track
from django_jobstatus.contrib import tasks as integration
from django_jobstatus.models import JobRun, Status
from tests.contrib.tasks_app import tasks

ROOT = Path(__file__).resolve().parents[2]

IMMEDIATE = {
    "default": {
        "BACKEND": f"{tasks.FRAMEWORK}.backends.immediate.ImmediateBackend",
        "QUEUES": [],
    }
}


@pytest.fixture
def immediate(settings: Any) -> Iterator[None]:
    settings.JOBSTATUS = {**settings.JOBSTATUS, "PROGRESS_INTERVAL": 0.05}
    settings.TASKS = IMMEDIATE
    integration.connect()
    yield
    integration.disconnect()


def fan_out(job: Any) -> None:
    """Two children of an asyncio.TaskGroup that check for a kill between awaits (run
    with async_to_sync from the job's block)."""

    async def worker() -> None:
        for _ in range(1500):
            job.check_kill()
            await asyncio.sleep(0.01)

    async def work() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(worker())
            group.create_task(worker())

    async_to_sync(work)()


# A kill seen inside an asyncio.TaskGroup reaches track() wrapped in an ExceptionGroup.


def test_a_kill_seen_by_a_task_group_s_children_ends_the_run_killed(
    transactional_db: None,
) -> None:
    """The children raise JobKilled, which the TaskGroup hands on wrapped in an
    ExceptionGroup: the job stopped because it was asked to, so the run ends ``killed``
    and nothing is re-raised, as for a bare JobKilled. It ended failed ("ExceptionGroup:
    unhandled errors in a TaskGroup (2 sub-exceptions)"), and the group was re-raised."""
    escaped: BaseException | None = None
    run_id = None
    try:
        with track("tests.async.group_kill", interval=0) as job:
            run_id = job.run.pk
            JobRun.objects.filter(pk=run_id).request_kill()
            fan_out(job)
    except BaseException as exc:  # what left the block is checked below
        escaped = exc
    run = JobRun.objects.get(pk=run_id)
    assert run.kill_requested_at is not None
    assert (run.status, run.error) == (Status.KILLED, ""), (
        f"asked to stop and stopped by JobKilled, the run ended {run.status}: {run.error!r}"
    )
    assert escaped is None


def test_an_exception_group_that_mixes_a_kill_with_an_error_ends_the_run_failed(
    transactional_db: None,
) -> None:
    """A group holding a ValueError besides the kill is a failure: the run ends
    ``failed`` with the group's line, and the group is re-raised."""
    with (
        pytest.raises(ExceptionGroup),
        track("tests.async.group_kill_and_error", interval=0) as job,
    ):
        run_id = job.run.pk
        JobRun.objects.filter(pk=run_id).request_kill()
        try:
            job.check_kill()
        except JobKilled as kill:
            raise ExceptionGroup("rows", [kill, ValueError("bad row")]) from None
    run = JobRun.objects.get(pk=run_id)
    assert (run.status, run.error) == (
        Status.FAILED,
        "ExceptionGroup: rows (2 sub-exceptions)",
    )


def test_an_async_task_s_task_group_killed_ends_the_run_killed(
    transactional_db: None, immediate: None
) -> None:
    """The same through Django's tasks framework: the task result says it failed with an
    ExceptionGroup (of JobKilled, read from its traceback's boxes); the run says
    ``killed``, as for an async task whose own code raised JobKilled
    (tests/contrib/test_tasks.py::test_immediate_async_task_kill_ends_the_run_killed)."""
    result = tasks.async_group_kill_myself.enqueue()
    assert str(result.status) == "FAILED"
    assert result.errors[-1].exception_class_path == "builtins.ExceptionGroup"
    run = JobRun.objects.get(source="django_tasks", backend_job_id=str(result.id))
    assert run.kill_requested_at is not None
    assert (run.status, run.error) == (Status.KILLED, ""), (
        f"asked to stop and stopped by JobKilled, the run ended {run.status}: {run.error!r}"
    )


# A job that locks its own run, reporting from async code.


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_async_progress_of_a_job_that_locks_its_own_run_does_not_wait_on_it() -> None:
    """docs/tracking.md: a job that locks its own run's row in its transaction
    (``select_for_update()``) is seen without waiting, and a progress write is kept for
    the next one; a handle on an event loop's thread works as in sync code. From a
    coroutine (``async_to_sync`` in the job's block) each due write went to the
    ``jobstatus-async`` thread, whose connection is not in the job's transaction and
    waited on the job's own lock until its 10 s lock timeout, while the event loop, and
    the job, waited on it: 3 progress calls took 30 s."""
    with track("tests.async.own_lock", interval=0) as job, transaction.atomic():
        JobRun.objects.select_for_update().get(pk=job.run.pk)

        def sync_work() -> None:
            job.step("sync work", total=2)
            job.advance()
            job.advance()

        async def async_work() -> None:
            job.step("async work", total=2)
            for _ in range(2):
                await asyncio.sleep(0)
                job.advance()

        began = time.monotonic()
        sync_work()
        sync_took = time.monotonic() - began
        began = time.monotonic()
        async_to_sync(async_work)()
        async_took = time.monotonic() - began
    assert sync_took < 2  # the control: the sync path does not wait on the job's lock
    assert async_took < 5, (
        f"3 progress calls from async code took {async_took:.1f} s "
        f"(the same from sync code: {sync_took:.2f} s): each waited on the job's own lock"
    )
    run = JobRun.objects.get(pk=job.run.pk)
    assert (run.status, run.step, run.progress_current) == (
        Status.SUCCEEDED,
        "async work",
        2,
    )


# The main thread ends while a non-daemon thread runs an async job.

SHUTDOWN_SCRIPT = """
import asyncio, os, sys, threading
sys.path.insert(0, {root!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django_jobstatus import track
from django_jobstatus.models import JobRun

started = threading.Event()

def job():
    run_id = None
    try:
        with track("tests.async.shutdown", interval=0) as handle:
            run_id = handle.run.pk
            async def work():
                started.set()
                handle.step("async work", total=20)
                for _ in range(20):
                    await asyncio.sleep(0.05)
                    handle.advance()
            asyncio.run(work())
        print("LEFT-THE-BLOCK", flush=True)
    except BaseException as exc:
        print("RAISED", repr(exc), flush=True)
    run = JobRun.objects.get(pk=run_id)
    print("STATUS", run.status, repr(run.error), run.progress_current, flush=True)

threading.Thread(target=job).start()  # not a daemon: Python waits for it
started.wait(10)
# The main thread ends here; the job's thread goes on to its end.
"""


def ran_to_its_end(script_text: str, tmp_path: Any) -> None:
    """Run ``script_text`` in a process of its own, on a SQLite file: its job ran to the
    end of its block, nothing was raised into it, and its run succeeded with 20 steps."""
    script = tmp_path / "job.py"
    script.write_text(script_text.format(root=str(ROOT)))
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    env.pop("JOBSTATUS_TEST_DB", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LEFT-THE-BLOCK" in done.stdout, done.stdout
    assert "STATUS succeeded '' 20" in done.stdout, done.stdout


LATE_SCRIPT = SHUTDOWN_SCRIPT.replace(
    "def job():\n    run_id = None\n",
    "def job():\n    threading.main_thread().join()  # the interpreter shuts down\n"
    "    run_id = None\n",
).replace("started.wait(10)\n", "")


@pytest.mark.engine_agnostic
def test_a_job_started_after_the_main_thread_ended_runs_to_its_end(
    tmp_path: Any,
) -> None:
    """Once the main thread has ended, Python 3.12 lets no thread start: the heartbeat
    thread, the async writer's and the monitors' outbox each raised RuntimeError ("can't
    create new thread at interpreter shutdown") into a job that a thread outliving the
    main one began then, or into its end (the outbox, from job_status_changed)."""
    ran_to_its_end(LATE_SCRIPT, tmp_path)


@pytest.mark.engine_agnostic
def test_an_async_job_in_a_thread_outliving_the_main_thread_is_not_failed_by_its_tracking(
    tmp_path: Any,
) -> None:
    """A non-daemon thread runs a tracked job whose work is async (``asyncio.run()`` in
    the block) and the main thread returns: Python keeps the process up until that thread
    ends, so the job runs to its end. A progress write is never raised into the job
    (DESIGN.md); but the handle's writes from the loop went to a ThreadPoolExecutor,
    which concurrent.futures shuts down at the main thread's end: ``RuntimeError: cannot
    schedule new futures after shutdown`` was raised into the job, and its run ended
    ``failed``. The async writer is now a daemon thread of its own."""
    ran_to_its_end(SHUTDOWN_SCRIPT, tmp_path)
