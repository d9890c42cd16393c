"""The RQ jobs of the integration tests: the test enqueues, a real rqworker runs these.

Also django-rq's settings for both sides; the worker's settings import this module, so
it imports nothing from Django at the top.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
import rq

REDIS_URL = os.environ.get("JOBSTATUS_RQ_REDIS", "redis://127.0.0.1:63799/7")
QUEUE = "jobstatus-tests"
# django-rq's settings, for the worker and for the test that enqueues.
LOCAL_QUEUE = "jobstatus-tests-local"  # for workers in the test process, apart from the rqworker's
HEARTBEAT_QUEUE = "jobstatus-heartbeats"  # tests/contrib/test_heartbeats.py's workers
# The workers of tests/contrib/test_rq_horses.py, apart from the others'.
HORSE_QUEUE = "jobstatus-horses"
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 120}
    for name in (QUEUE, LOCAL_QUEUE, HEARTBEAT_QUEUE, HORSE_QUEUE)
}
RQ = {
    "WORKER_CLASS": "django_jobstatus.contrib.rq.Worker",
    "JOB_CLASS": "django_jobstatus.contrib.rq.Job",
    "QUEUE_CLASS": "django_jobstatus.contrib.rq.Queue",
}


def add(x: int, y: int) -> int:
    return x + y


def fail(text: str) -> None:
    raise ValueError(text)


def report(n: int) -> dict[str, Any]:
    from django_jobstatus import current_job

    job = current_job()
    assert job is not None, "current_job() is None inside the job"
    job.step("counting", total=n)
    for _ in range(n):
        job.advance()
    job.info("counted %d items", n)
    return {"counted": n}


def report_written(n: int) -> dict[str, Any]:
    """report(), then its progress written at once: the work horse has a connection, and
    records the end itself."""
    from django_jobstatus import current_job

    counted = report(n)
    job = current_job()
    assert job is not None
    job.flush()
    return counted


def chatty(lines: int) -> int:
    """Log ``lines`` lines of a thousand characters and more."""
    from django_jobstatus import current_job

    job = current_job()
    assert job is not None, "current_job() is None inside the job"
    for i in range(lines):
        job.info("line %d %s", i, "x" * 1000)
    return lines


def flaky() -> str:
    job = rq.get_current_job()
    assert job is not None
    if job.retries_left:
        raise RuntimeError(f"{job.retries_left} retries left")
    return "done"


def sleepy(seconds: float) -> str:
    from django_jobstatus import current_job

    job = current_job()
    if job is not None:
        job.message("sleeping")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if job is not None:
            job.heartbeat()  # also writes the message
    return "woke up"


def silent(seconds: float) -> str:
    """Run for ``seconds`` without a word: no progress, no heartbeat, no log."""
    time.sleep(seconds)
    return "woke up"


def silent_and_seen(seconds: float, key: str) -> str:
    """silent(), its pid in ``key`` while it runs, and ``<key>:done`` set at its end."""
    connection = redis.Redis.from_url(REDIS_URL)
    connection.set(key, str(os.getpid()), ex=600)
    time.sleep(seconds)
    connection.set(f"{key}:done", "1", ex=600)
    return "woke up"


def failing_once_then_silent(key: str, seconds: float) -> str:
    """Fail on the first call; on the next, silent() with its pid in ``key``."""
    connection = redis.Redis.from_url(REDIS_URL)
    if connection.incr(f"{key}:calls") == 1:
        raise RuntimeError("the first attempt fails")
    connection.set(key, str(os.getpid()), ex=600)
    return silent(seconds)


def obedient(seconds: float) -> str:
    """A long job that stops when asked (cooperative kill)."""
    from django_jobstatus import current_job

    job = current_job()
    assert job is not None
    job.message("working")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        job.heartbeat()
        job.check_kill()
    return "done"


def lookup(table: dict[Any, Any], key: Any) -> Any:
    """``table``'s value for ``key``: a job that relies on the keys it was given."""
    return table.get(key)


def obedient_fan_out(seconds: float) -> str:
    """obedient() in two tasks of an ``asyncio.TaskGroup`` (a thread each): the kill comes
    back as an exception group of JobKilled."""
    import asyncio

    async def fan_out() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(2):
                group.create_task(asyncio.to_thread(obedient, seconds))

    asyncio.run(fan_out())
    return "done"


def retried_once(report: bool) -> str | rq.Retry:
    """Ask RQ for one retry by returning ``Retry`` (no exception); say which attempt runs when ``report``."""
    job = rq.get_current_job()
    assert job is not None
    if report:
        from django_jobstatus import current_job

        handle = current_job()
        assert handle is not None
        handle.message(f"attempt {(job.number_of_retries or 0) + 1}")
    if not job.number_of_retries:
        return rq.Retry(max=2)
    return "done"


def retried_after_writing(report: bool) -> str | rq.Retry:
    """Write on the first attempt, which then returns ``Retry`` (its work horse records);
    on the second, report without writing when ``report``, or nothing (either way its
    worker's main process records)."""
    from django_jobstatus import current_job

    job = rq.get_current_job()
    handle = current_job()
    assert job is not None and handle is not None
    if not job.number_of_retries:
        handle.message("attempt 1")
        handle.flush()
        return rq.Retry(max=1)
    if report:
        handle.message("attempt 2")
    return "done"


def refuse_success(job: rq.job.Job, connection: Any, result: Any) -> None:
    """An ``on_success`` callback that fails: RQ then fails the job that returned."""
    raise RuntimeError("the success callback failed")


def crash() -> None:
    """Die the way an OOM kill does: no exception, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)


def marked(key: str) -> str:
    redis.Redis.from_url(REDIS_URL).set(key, "1", ex=600)
    return key


def crash_first_attempt() -> str:
    """crash() on the first attempt (while it has retries left); succeed on the next."""
    job = rq.get_current_job()
    assert job is not None
    if not job.number_of_retries and job.retries_left:
        os.kill(os.getpid(), signal.SIGKILL)
    return "done"


class Calculator:
    """Enqueued as a bound method, RQ pickles the instance with the job."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def add(self, x: int) -> int:
        return self.offset + x

    @classmethod
    def double(cls, x: int) -> int:
        return 2 * x
