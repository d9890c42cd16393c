"""A Celery app routed as Celery's "Routing Tasks" guide shows: a topic exchange, a queue
bound to it with ``feed.#``, and a task routed there with the routing key ``feed.import``,
which names no queue. test_celery.py runs a real worker on it."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.worker_settings")

BROKER_URL = os.environ.get("JOBSTATUS_CELERY_BROKER", "redis://127.0.0.1:63799/6")
QUEUE = "jobstatus-tests-feeds"
EXCHANGE = "jobstatus-tests-topic"
ROUTING_KEY = "jobstatus-tests-feed.import"

app = Celery("tests.contrib.celery_routes", broker=BROKER_URL)
app.conf.update(
    task_queues=[
        Queue(
            QUEUE,
            Exchange(EXCHANGE, type="topic"),
            routing_key="jobstatus-tests-feed.#",
        )
    ],
    task_routes={"tests.import_feed": {"queue": QUEUE, "routing_key": ROUTING_KEY}},
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)


@app.task(name="tests.import_feed")
def import_feed(x: int) -> int:
    return x * 2
