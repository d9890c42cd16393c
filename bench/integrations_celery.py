"""The Celery app of bench/bench_integrations.py: one trivial task, recorded as BENCH_RECORD says."""

from __future__ import annotations

import os

from celery import Celery

from bench.integrations_jobs import noop as _noop

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.integrations_settings")

app = Celery(
    "bench.integrations_celery",
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_RECORD") == "dcr":
    # django-celery-results as its README sets it up, with the STARTED state and the
    # task's name, arguments and worker kept: what our integration records.
    app.conf.update(
        result_backend="django-db", task_track_started=True, result_extended=True
    )


@app.task(name="bench.noop")
def noop(i: int, n: int, key: str) -> int:
    return _noop(i, n, key)
