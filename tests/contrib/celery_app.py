"""The Celery app of the integration tests: the test publishes, a real worker runs these."""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject

from django_jobstatus import current_job
from tests.contrib import loops

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.worker_settings")

BROKER_URL = os.environ.get("JOBSTATUS_CELERY_BROKER", "redis://127.0.0.1:63799/6")

app = Celery("tests.contrib.celery_app", broker=BROKER_URL)
app.conf.update(
    task_default_queue="jobstatus-tests",
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)


def _mark(key: str) -> None:
    """Leave a trace in Redis that the task body ran (for the database outage test)."""
    redis.Redis.from_url(BROKER_URL).set(key, "1", ex=600)


def _first(key: str) -> bool:
    """True on the first call with ``key`` (a mark in the broker's Redis): a task's first
    delivery, when the message of a task is delivered again."""
    return bool(redis.Redis.from_url(BROKER_URL).set(key, "1", ex=600, nx=True))


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.charge")
def charge(card: dict[str, Any]) -> dict[str, Any]:
    """A result with a secret beside a value JSON cannot hold (a datetime)."""
    return {"token": card["token"], "expires": datetime.datetime(2030, 1, 1)}


class UnpicklableError(Exception):
    """An exception Celery cannot pickle (it holds a lock): it reports a wrapper."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()


@app.task(name="tests.unpicklable")
def unpicklable() -> None:
    raise UnpicklableError("has a lock")


@app.task(
    name="tests.lost_then_ok",
    bind=True,
    retry_on_worker_lost=True,
    max_retries=3,
    default_retry_delay=1,
)
def lost_then_ok(self: Any) -> int:
    """Its first pool process dies (an OOM kill); Celery's main process sends it again."""
    if self.request.retries == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return self.request.retries + 1


@app.task(name="tests.fail")
def fail(text: str) -> None:
    raise ValueError(text)


@app.task(name="tests.report")
def report(n: int) -> dict[str, Any]:
    job = current_job()
    assert job is not None, "current_job() is None inside the task"
    job.step("counting", total=n)
    for _ in range(n):
        job.advance()
    job.info("counted %d items", n)
    return {"counted": n}


@app.task(name="tests.flaky", bind=True, max_retries=3)
def flaky(self: Any, succeed_at: int) -> int:
    if self.request.retries + 1 < succeed_at:
        raise self.retry(
            exc=RuntimeError(f"attempt {self.request.retries + 1} failed"), countdown=0
        )
    return self.request.retries + 1


@app.task(name="tests.sleepy")
def sleepy(seconds: float) -> str:
    job = current_job()
    if job is not None:
        job.message("sleeping")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if job is not None:
            job.heartbeat()  # also writes the message
    return "woke up"


@app.task(name="tests.silent")
def silent(seconds: float) -> str:
    """Run for ``seconds`` without a word: no progress, no heartbeat, no log."""
    time.sleep(seconds)
    return "woke up"


@app.task(name="tests.silent_once", acks_late=True)
def silent_once(key: str) -> str:
    """Acknowledged when it ends (``acks_late``): the first delivery sets ``key`` and runs a
    minute without a word, the next ends at once."""
    if _first(key):
        time.sleep(60)
    return key


@app.task(
    name="tests.slow_once_late", acks_late=True, acks_on_timeout=False, time_limit=1
)
def slow_once_late(key: str) -> str:
    """Put back in the queue on a hard time limit (``acks_late``, not ``acks_on_timeout``):
    the first delivery runs past it, the next ends at once."""
    if _first(key):
        time.sleep(30)
    return key


def _waited(key: str, timeout: float = 60) -> None:
    """Wait until ``key`` (a mark in the broker's Redis) is set, at most ``timeout`` s."""
    broker = redis.Redis.from_url(BROKER_URL)
    deadline = time.monotonic() + timeout
    while not broker.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)


def _delivered_again(task_id: str) -> None:
    """Put the message of ``task_id``, delivered and not acknowledged, back in its queue,
    as the Redis transport does when its visibility timeout passes."""
    broker = redis.Redis.from_url(BROKER_URL)
    for entry in broker.hvals("unacked"):
        message, _exchange, routing_key = json.loads(entry)
        if message["headers"]["id"] == task_id:
            broker.lpush(routing_key, json.dumps(message))


@app.task(name="tests.handed_over", bind=True, acks_late=True)
def handed_over(self: Any, key: str) -> str:
    """Delivered again while its first delivery runs (``acks_late``, the message not
    acknowledged yet): the first delivery puts its message back in the queue, waits for
    the next delivery (on another worker) to run, and dies as an OOM kill does; the next
    one runs until ``key:release`` is set."""
    if _first(key):
        _delivered_again(self.request.id)
        _waited(f"{key}:again")
        os.kill(os.getpid(), signal.SIGKILL)
    _mark(f"{key}:again")
    _waited(f"{key}:release")
    return key


@app.task(name="tests.rejects_once")
def rejects_once(key: str) -> str:
    """The first delivery rejects its message with ``requeue=True``, acknowledged already."""
    if _first(key):
        raise Reject("not now", requeue=True)
    return key


@app.task(name="tests.rejects_once_late", acks_late=True)
def rejects_once_late(key: str) -> str:
    """The first delivery rejects its message with ``requeue=True``, which puts it back."""
    if _first(key):
        raise Reject("not now", requeue=True)
    return key


@app.task(name="tests.marked")
def marked(key: str) -> str:
    _mark(key)
    return key


@app.task(name="tests.rejects")
def rejects() -> None:
    raise Reject("bad message", requeue=False)


@app.task(name="tests.ignores")
def ignores() -> None:
    """Tell Celery to record no state for this task (its documented "revoke-like" use)."""
    raise Ignore()


@app.task(name="tests.replaced", bind=True)
def replaced(self: Any, task: str, *args: Any) -> Any:
    """Hand the work over to the task named ``task`` (it takes over this task's id)."""
    return self.replace(app.signature(task, args=args))


@app.task(name="tests.crash")
def crash() -> None:
    """Die the way an OOM kill does: the pool process is gone, no exception, no signal from it."""
    os.kill(os.getpid(), signal.SIGKILL)


count_slowly = app.task(name="tests.count_slowly")(loops.count_slowly)
