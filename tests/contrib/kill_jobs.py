"""Jobs for tests/contrib/test_kill_enqueue.py: Celery tasks (a worker loads them with
``--include``) and RQ functions that report to Redis, not through the handle, so that
only the task system can stop them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from tests.contrib import rq_jobs
from tests.contrib.celery_app import BROKER_URL, app

# Send these with apply_async(queue=...): CELERY_QUEUE (prefork) or CELERY_SOLO_QUEUE.
CELERY_QUEUE = "jobstatus-kill"
CELERY_SOLO_QUEUE = "jobstatus-kill-solo"


def _pid_and_sleep(url: str, key: str, seconds: float) -> str:
    """Leave this process's pid in Redis, then sleep without a word to the handle."""
    redis.Redis.from_url(url).set(key, os.getpid(), ex=600)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "slept"


def _count(url: str, key: str) -> int:
    return int(redis.Redis.from_url(url).incr(key))


# Celery.


@app.task(name="tests.kill.silent")
def c_silent(key: str, seconds: float) -> str:
    return _pid_and_sleep(BROKER_URL, key, seconds)


@app.task(name="tests.kill.retried", bind=True, max_retries=5)
def c_retried(self: Any, key: str, countdown: float) -> None:
    """Count each attempt in Redis, fail, and retry after ``countdown`` seconds."""
    attempt = _count(BROKER_URL, key)
    raise self.retry(
        exc=RuntimeError(f"attempt {attempt} failed"),
        countdown=countdown,
        queue=CELERY_QUEUE,
    )


# RQ.


def silent(key: str, seconds: float) -> str:
    return _pid_and_sleep(rq_jobs.REDIS_URL, key, seconds)


def counted(key: str) -> None:
    """Count each attempt in Redis, and fail (an RQ Retry runs it again)."""
    attempt = _count(rq_jobs.REDIS_URL, key)
    raise RuntimeError(f"attempt {attempt} failed")


def mark(key: str) -> str:
    redis.Redis.from_url(rq_jobs.REDIS_URL).set(key, "1", ex=600)
    return key
