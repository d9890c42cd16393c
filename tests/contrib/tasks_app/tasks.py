"""Tasks of Django's tasks framework (django.tasks, or the backport on Django 5.2) for the tests."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async

from django_jobstatus import contrib, current_job
from tests.contrib import loops

try:
    from django.tasks import task
    from django.tasks.signals import task_finished

    FRAMEWORK = "django.tasks"
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task
    from django_tasks.signals import task_finished

    FRAMEWORK = "django_tasks"

logger = logging.getLogger(__name__)

# While set, tests/contrib/test_tasks.py makes every query on the app's tables fail.
OUTAGE = threading.Event()


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
async def async_add(a: int, b: int) -> int:
    return a + b


# Longer than the tests' PROGRESS_INTERVAL (0.05 s): each call after it writes.
PAST_THE_INTERVAL = 0.06


def _recorded(run_id: Any) -> dict[str, Any]:
    """What the database holds of a run's progress and logs now (read from sync code)."""
    from django_jobstatus.models import JobRun

    run = JobRun.objects.get(pk=run_id)
    return {
        "progress": [run.progress_current, run.progress_total],
        "step": run.step,
        "logs": list(run.logs.values_list("message", flat=True)),
    }


def _heartbeat_at(run_id: Any) -> Any:
    from django_jobstatus.models import JobRun

    return JobRun.objects.values_list("heartbeat_at", flat=True).get(pk=run_id)


@task()
async def async_report(n: int) -> dict[str, Any]:
    """Report progress, log, beat and check for a kill between awaits, each call once its
    write is due; returns what the database held of its run meanwhile."""
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.step("counting", total=n)
    for _ in range(n):
        await asyncio.sleep(PAST_THE_INTERVAL)
        job.advance()
    await asyncio.sleep(PAST_THE_INTERVAL)
    job.info("counted to %d", n)
    recorded = await sync_to_async(_recorded)(job.run.pk)
    before = await sync_to_async(_heartbeat_at)(job.run.pk)
    await asyncio.sleep(PAST_THE_INTERVAL)
    job.heartbeat()
    beaten = await sync_to_async(_heartbeat_at)(job.run.pk) > before
    await asyncio.sleep(PAST_THE_INTERVAL)
    job.check_kill()
    return {**recorded, "beaten": beaten}


@task()
async def async_kill_myself() -> str:
    """Ask for its own kill the way the admin does, then wait for it between awaits."""
    from django_jobstatus.models import JobRun

    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    runs = JobRun.objects.filter(pk=job.run.pk)
    await sync_to_async(contrib.request_kill)(runs)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job.check_kill()
        await asyncio.sleep(0.02)
    return "not killed"


@task()
async def async_wait_for_kill(seconds: float) -> str:
    """``wait_for_kill`` as an ``async def`` task."""
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.step("waiting for a kill")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_kill()
        job.heartbeat()
        await asyncio.sleep(0.02)
    return "not killed"


class TaskError(Exception):
    pass


@task()
def fail(message: str) -> None:
    raise TaskError(message)


@task()
def count(n: int) -> int:
    """Report progress and log through current_job()."""
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.step("counting", total=n)
    for _ in range(n):
        job.advance()
    job.message("counted")
    job.info("counted to %d", n)
    return n


@task()
def chatty(n: int) -> int:
    """Log through the logging module (see tests/contrib/test_logging.py)."""
    for i in range(n):
        logger.info("line %d", i)
    return n


@task()
def wait_for_kill(seconds: float) -> str:
    """Run until asked to stop (JobKilled from check_kill()), for ``seconds`` at most."""
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.step("waiting for a kill")  # shows that the body ran
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_kill()
        job.heartbeat()
        time.sleep(0.02)
    return "not killed"


@task()
def kill_myself() -> str:
    """Ask for its own kill the way the admin does, then wait for it."""
    from django_jobstatus.models import JobRun

    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    contrib.request_kill(JobRun.objects.filter(pk=job.run.pk))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job.check_kill()
        time.sleep(0.02)
    return "not killed"


@task()
def silent() -> str:
    """Reports nothing; returns once its run's heartbeat moved on without it (30 s at most)."""
    from django_jobstatus.models import JobRun

    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    runs = JobRun.objects.filter(pk=job.run.pk)
    first = runs.get().heartbeat_at
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if runs.filter(heartbeat_at__gt=first).exists():
            return "beaten"
        time.sleep(0.05)
    return "no heartbeat"


@task()
def end_outage() -> str:
    """Runs while the app's tables are unreachable, and ends the outage."""
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.info("ran during the outage")  # kept, and written once the run is recorded
    OUTAGE.clear()
    return "done"


@task()
def count_slowly(n: int) -> int:
    """The README's progress loop (tests/contrib/loops.py) as a task."""
    return loops.count_slowly(n)


@task()
def interrupt() -> None:
    """Raises KeyboardInterrupt, which the ImmediateBackend lets through with no signal."""
    raise KeyboardInterrupt


@task()
def leave() -> None:
    raise SystemExit(3)


@task()
def survive_an_interrupt() -> str:
    """Enqueues ``interrupt`` (inline on the ImmediateBackend), catches it, and succeeds."""
    try:
        interrupt.enqueue()
    except KeyboardInterrupt:
        return "survived"
    return "no interrupt"


@task()
def refused_after_success() -> str:
    """Succeeds; ``refuse_success`` (another project's receiver) then raises on its end."""
    return "done"


@task()
def rows_failed() -> None:
    raise ExceptionGroup(
        "several rows failed", [ValueError("row 1"), KeyError("row 2")]
    )


@task()
async def children_failed() -> None:
    """An ``asyncio.TaskGroup`` whose child fails: it raises an ExceptionGroup."""

    async def child() -> None:
        raise ValueError("one child broke")

    async with asyncio.TaskGroup() as group:
        group.create_task(child())


def undecorated() -> None:
    """A task a deploy left without its ``@task()``: its path imports, but is no Task."""


def refuse_success(sender: object, task_result: Any, **kwargs: object) -> None:
    """A ``task_finished`` receiver of another project that raises after a success."""
    if (
        task_result.task.func is refused_after_success.func
        and str(task_result.status) == "SUCCESSFUL"
    ):
        raise RuntimeError("the other receiver refused")


# Connected when this module is imported: in a db_worker, after the integration's receiver.
task_finished.connect(
    refuse_success, weak=False, dispatch_uid="tests.contrib.tasks_app.refuse_success"
)


@task()
def tolerant() -> str:
    """Enqueues ``fail``, looks at its result, and carries on: it succeeds."""
    sub = fail.enqueue("a sub-task failed, and was handled")
    return f"handled {sub.status}"


def _reports_add(a: int, b: int) -> int:
    return a + b


_reports_add.__name__ = _reports_add.__qualname__ = "reports_add"


def __getattr__(name: str) -> Any:
    """``reports_add``, declared ``@task(backend="reports")``, built when it is looked up.

    The decorator needs that backend configured, which the tests' settings are not until
    a test sets TASKS; a project whose TASKS has "reports" would import it as it is.
    """
    if name == "reports_add":
        return task(backend="reports")(_reports_add)
    raise AttributeError(name)


@task()
async def async_group_kill_myself() -> str:
    """Ask for its own kill, then wait for it in two children of an asyncio.TaskGroup,
    each checking for the kill between awaits (the fan-out of async code): the task
    fails with an ExceptionGroup of two JobKilled."""
    from django_jobstatus.models import JobRun

    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    await sync_to_async(contrib.request_kill)(JobRun.objects.filter(pk=job.run.pk))

    async def worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job.check_kill()
            await asyncio.sleep(0.02)

    async with asyncio.TaskGroup() as group:
        group.create_task(worker())
        group.create_task(worker())
    return "not killed"
