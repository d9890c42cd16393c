"""The record tells the truth under real workers: db_worker (Django tasks), Celery ``-P solo``, rqworker.

A kill request stops the README's loop (``job.advance()`` and no ``check_kill()``) at its
next progress call; a run killed by force stops its job there and is written no more; a
run that succeeds after a failed attempt keeps no error of that attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from subprocess import Popen
from typing import Any

import pytest
import rq
from django.utils import timezone
from rq import Retry

from django_jobstatus.models import JobRun, Status
from tests.contrib import rq_jobs
from tests.contrib.celery_app import add, count_slowly, flaky
from tests.contrib.dbproxy import Proxy
from tests.contrib.loops import count_slowly as count_slowly_job
from tests.contrib.tasks_app import tasks
from tests.contrib.test_celery import finished as celery_finished
from tests.contrib.test_celery import recorded as celery_recorded
from tests.contrib.test_rq import finished as rq_finished
from tests.contrib.test_rq import queue, rq_worker, settle
from tests.contrib.test_rq import recorded as rq_recorded
from tests.contrib.test_tasks import (
    Worker,
    integration_on,
    run_of,
    run_reaching,
    worker,
)
from tests.contrib.workers import (
    celery_worker,
    db_proxy,
    refreshed,
)
from tests.waiting import wait_for

__all__ = [  # fixtures
    "db_proxy",
    "integration_on",
    "queue",
    "rq_worker",
    "worker",
]

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ITEMS = 6000  # a minute of work at 10 ms an item: a kill must stop it long before
SOLO_QUEUE = "jobstatus-tests-solo"


def _stop(run: JobRun, how: str, *, cooperative_only: bool = False) -> None:
    """Ask the run to stop (``request``), or kill it by force (``force``), once it counts.

    ``cooperative_only``: record the request without telling the task system (RQ's stop-job
    would end the job itself; tests/contrib/test_kill_enqueue.py covers that path).
    """
    wait_for(
        lambda: refreshed(run).status == Status.RUNNING and run.progress_current > 0,
        timeout=90,
        what=f"run {run.pk} to count",
    )
    if how == "request" and cooperative_only:
        assert JobRun.objects.filter(pk=run.pk).update(kill_requested_at=timezone.now())
    elif how == "request":
        assert JobRun.objects.filter(pk=run.pk).request_kill() == 1
    else:
        JobRun.objects.get(pk=run.pk).mark_killed()


def _check_stopped(run: JobRun, how: str, frozen: JobRun | None) -> None:
    """The run ended killed, early; killed by force, nothing was written on it afterwards."""
    run.refresh_from_db()
    assert run.status == Status.KILLED
    assert 0 < run.progress_current < ITEMS  # the loop stopped early
    if how == "request":
        assert run.kill_requested_at is not None
        assert run.message == "Killed on request."
    else:
        assert frozen is not None
        assert (run.progress_current, run.heartbeat_at, run.updated_at) == (
            frozen.progress_current,
            frozen.heartbeat_at,
            frozen.updated_at,
        )


def _killed_then_next(
    run: JobRun,
    how: str,
    next_done: Callable[[], JobRun],
    *,
    cooperative_only: bool = False,
) -> JobRun | None:
    """Stop ``run``; wait for a task queued after it on the same one-at-a-time worker.

    The next task ending proves the killed one's code stopped. Returns the row right
    after a forced kill (nothing may change it afterwards).
    """
    _stop(run, how, cooperative_only=cooperative_only)
    frozen = JobRun.objects.get(pk=run.pk) if how == "force" else None
    assert next_done().status == Status.SUCCEEDED
    return frozen


# Django tasks: a real db_worker.


@pytest.mark.parametrize("how", ["request", "force"])
def test_db_worker_a_kill_stops_the_loop_at_advance(worker: Worker, how: str) -> None:
    result = tasks.count_slowly.enqueue(ITEMS)
    run = run_of(result)
    after = tasks.add.enqueue(1, 2)
    frozen = _killed_then_next(run, how, lambda: run_reaching(after, worker))
    _check_stopped(run, how, frozen)
    result.refresh()
    assert result.status == "FAILED"
    assert result.errors[-1].exception_class_path == (
        "django_jobstatus.exceptions.JobKilled"
    )


# Celery: a real worker with the solo pool, which revoke(terminate=True) cannot stop.


@pytest.fixture(scope="module")
def solo_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Popen[bytes]]:
    with celery_worker(
        db_proxy,
        tmp_path_factory,
        pool="solo",
        queue=SOLO_QUEUE,
        prefix="jobstatus-solo",
    ) as process:
        yield process


def _solo(task: Any, *args: Any) -> JobRun:
    return celery_recorded(task.apply_async(args, queue=SOLO_QUEUE).id)


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
@pytest.mark.parametrize("how", ["request", "force"])
def test_celery_solo_a_kill_stops_the_loop_at_advance(
    solo_worker: Popen[bytes], how: str
) -> None:
    run = _solo(count_slowly, ITEMS)
    after = _solo(add, 1, 2)
    frozen = _killed_then_next(
        run, how, lambda: celery_finished(after, solo_worker, timeout=90)
    )
    _check_stopped(run, how, frozen)


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
def test_celery_a_success_after_a_retry_keeps_no_error(
    solo_worker: Popen[bytes],
) -> None:
    run = celery_finished(_solo(flaky, 2), solo_worker, timeout=90)
    assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, 2)
    assert (run.error, run.traceback) == ("", "")
    assert [entry["error"] for entry in run.attempts] == [
        "RuntimeError: attempt 1 failed"
    ]


# RQ: a real rqworker (forking Worker).


@pytest.fixture
def rq_one_at_a_time(rq_worker: Popen[bytes], rq_on: None) -> Iterator[Popen[bytes]]:
    """The rqworker; it finishes its job before the test's tables are flushed."""
    yield rq_worker
    settle(rq_worker)


@pytest.mark.redis
@pytest.mark.parametrize("how", ["request", "force"])
def test_rq_a_kill_stops_the_loop_at_advance(
    rq_one_at_a_time: Popen[bytes], queue: rq.Queue, how: str
) -> None:
    run = rq_recorded(queue.enqueue(count_slowly_job, ITEMS))
    after = rq_recorded(queue.enqueue(rq_jobs.add, 1, 2))
    frozen = _killed_then_next(
        run,
        how,
        lambda: rq_finished(after, rq_one_at_a_time, timeout=90),
        cooperative_only=True,
    )
    _check_stopped(run, how, frozen)


@pytest.mark.redis
def test_rq_a_success_after_a_retry_keeps_no_error(
    rq_one_at_a_time: Popen[bytes], queue: rq.Queue
) -> None:
    run = rq_finished(
        rq_recorded(queue.enqueue(rq_jobs.flaky, retry=Retry(max=1))),
        rq_one_at_a_time,
        timeout=90,
    )
    assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, "done")
    assert (run.error, run.traceback) == ("", "")
    assert [entry["error"] for entry in run.attempts] == [
        "RuntimeError: 1 retries left"
    ]
