"""A Celery app whose tasks replace themselves with a chain or a group (``self.replace()``),
with a result backend: Celery makes a group that replaces a task a chord, and a chord needs
one. test_celery.py runs a real worker on it."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chain, group

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.worker_settings")

BROKER_URL = os.environ.get("JOBSTATUS_CELERY_BROKER", "redis://127.0.0.1:63799/6")
QUEUE = "jobstatus-tests-replace"

app = Celery("tests.contrib.celery_replace", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task(name="tests.replace.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.replace.fail")
def fail(text: str) -> None:
    raise ValueError(text)


@app.task(name="tests.replace.stop")
def stop(text: str) -> None:
    """Stop as a job whose asyncio.TaskGroup saw a kill request does: an exception group
    of JobKilled."""
    from django_jobstatus import JobKilled

    raise ExceptionGroup(text, [JobKilled(text), JobKilled(text)])


@app.task(name="tests.replace.by_chain", bind=True)
def replaced_by_chain(self: Any, text: str | None, first_task: str = "fail") -> Any:
    """Hand the work over to a chain of two tasks, whose first (``fail``, or ``stop``)
    does not succeed if ``text`` is given: Celery's replace() gives this task's id to
    the chain's last task, and the first one an id of its own."""
    first = {"fail": fail, "stop": stop}[first_task].si(text) if text else add.si(1, 2)
    return self.replace(chain(first, add.si(3, 4)))


@app.task(name="tests.replace.by_group", bind=True)
def replaced_by_group(self: Any, text: str | None) -> Any:
    """Hand the work over to a group of two tasks, whose first fails with ``text`` if
    given: Celery's replace() makes it a chord whose callback (``celery.accumulate``)
    takes this task's id; the group's tasks get ids of their own."""
    first = fail.si(text) if text is not None else add.si(1, 2)
    return self.replace(group(first, add.si(3, 4)))
