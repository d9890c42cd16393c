"""Tasks of Django's tasks framework (django.tasks, or the backport on Django 5.2) for the tests."""

from __future__ import annotations

import logging
import threading
import time

from django_jobstatus import contrib, current_job
from tests.contrib import loops

try:
    from django.tasks import task

    FRAMEWORK = "django.tasks"
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task

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
