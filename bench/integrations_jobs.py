"""The trivial task of bench/bench_integrations.py (RQ runs it; Celery and Django tasks wrap it).

The first and the last of ``n`` tasks leave the time they ran in Redis (``key``), so
that the bench measures the rate of the tasks between them, without the worker's start.
"""

from __future__ import annotations

import os
import time

import redis


def noop(i: int, n: int, key: str) -> int:
    if i in (0, n - 1):
        stamp = time.time()
        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        redis.Redis.from_url(url).set(
            f"{key}:{'first' if i == 0 else 'last'}", stamp, ex=3600
        )
    return i
