"""The trivial task of bench/bench_integrations.py (RQ runs it; Celery and Django tasks wrap it).

The first and the last of ``n`` tasks leave the time they ran in Redis (``key``), so
that the bench measures the rate of the tasks between them, without the worker's start.
With ``--log`` (BENCH_LOG in the environment), each task recorded by our integration
also logs one line through ``current_job()``.
"""

from __future__ import annotations

import os
import time

import redis


def noop(i: int, n: int, key: str) -> int:
    if os.environ.get("BENCH_LOG") and os.environ.get("BENCH_RECORD") == "ours":
        # bench_integrations.py --log. Only with our integration: unrecorded, the task
        # stays the trivial one (no import that a work horse would pay for each job).
        from django_jobstatus import current_job

        job = current_job()
        if job is None:
            raise RuntimeError("current_job() is None inside a recorded task")
        job.info("task %d of %d", i, n)
    if i in (0, n - 1):
        stamp = time.time()
        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        redis.Redis.from_url(url).set(
            f"{key}:{'first' if i == 0 else 'last'}", stamp, ex=3600
        )
    return i
