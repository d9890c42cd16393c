"""What an enqueue costs the database with an integration on (issue 12): one INSERT, and nothing around it.

No BEGIN/COMMIT pair, no savepoint, no SELECT before or after it: run in autocommit, as
an application enqueues outside a transaction. On PostgreSQL the INSERT is written behind
the caller (writebehind.py), which then sends nothing: the writer sends it, after the
advisory lock of the task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import django_rq
import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from django_jobstatus.contrib import tasks as jobstatus_tasks
from django_jobstatus.models import JobRun, Status
from tests.contrib import rq_jobs
from tests.contrib.celery_app import app
from tests.contrib.sent import statements
from tests.contrib.tasks_app import tasks
from tests.plans import plan

pytestmark = pytest.mark.django_db(transaction=True)

DATABASE_TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}
}


def our_inserts(sql: list[str]) -> list[str]:
    return [
        text for text in sql if text.startswith('INSERT INTO "django_jobstatus_jobrun"')
    ]


@pytest.fixture
def rq_queue(rq_on: None) -> Iterator[Any]:
    queue = django_rq.get_queue(rq_jobs.LOCAL_QUEUE)
    yield queue
    queue.empty()


@pytest.fixture
def tasks_on(settings: Any) -> Iterator[None]:
    settings.TASKS = DATABASE_TASKS
    jobstatus_tasks.connect()
    yield
    jobstatus_tasks.disconnect()


def test_a_celery_enqueue_is_one_insert(celery_on: None) -> None:
    sql = statements(
        lambda: app.send_task("tests.add", (1, 2), queue="jobstatus-unused")
    )
    assert len(sql) == 1, sql
    assert our_inserts(sql) == sql
    assert JobRun.objects.get().status == Status.QUEUED


def test_an_rq_enqueue_is_one_insert(rq_queue: Any) -> None:
    sql = statements(lambda: rq_queue.enqueue(rq_jobs.add, 1, 2))
    assert len(sql) == 1, sql
    assert our_inserts(sql) == sql
    assert JobRun.objects.get().status == Status.QUEUED


def test_a_django_task_enqueue_is_one_insert_besides_the_framework_s(
    tasks_on: None,
) -> None:
    sql = statements(lambda: tasks.add.enqueue(1, 2))
    # The database backend's own INSERT of the task, and ours.
    assert len(sql) == 2, sql
    assert len(our_inserts(sql)) == 1
    run = JobRun.objects.get()
    assert (run.status, run.params) == (Status.QUEUED, {"args": [1, 2], "kwargs": {}})


def test_a_django_task_a_worker_recorded_first_keeps_one_run(
    tasks_on: None, settings: Any
) -> None:
    """The task is committed before task_enqueued is sent: a worker may record it first."""
    jobstatus_tasks.disconnect()
    result = tasks.add.enqueue(1, 2)
    jobstatus_tasks.connect()
    started = JobRun.objects.start(
        result.task.module_path, source="django_tasks", backend_job_id=str(result.id)
    )
    jobstatus_tasks.on_enqueued(sender=None, task_result=result)
    assert list(JobRun.objects.values_list("pk", "status")) == [
        (started.pk, Status.RUNNING)
    ]


@pytest.mark.postgres  # PostgreSQL's planner
def test_a_start_reads_the_run_by_its_primary_key_whatever_is_queued() -> None:
    """With statistics that know nothing of them (a new table), 300 queued runs made
    PostgreSQL walk an index on status for each start: one row must be read, by its key.

    A table scan priced out: once the server's autovacuum had counted the few rows the
    tests before left, reading the table's few pages cost less than the key's index.
    Any index read by the key will do: at 300 rows the index of (created_at, id), one or
    two pages, may price the same as the primary key's, and a make test run chose it
    (2026-12-05); on a real table the walk of its every entry costs far more."""
    runs = [
        JobRun.objects.enqueue("tests.add", backend_job_id=str(n)) for n in range(300)
    ]
    with CaptureQueriesContext(connections["default"]) as captured:
        runs[150].mark_running()
    [update] = [
        q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")
    ]
    chosen = plan(update)
    conditions = [line.strip() for line in chosen.splitlines() if "Index Cond:" in line]
    # The key is the only index condition; the status is checked on the row found.
    assert conditions, chosen
    assert all(line.startswith("Index Cond: (id = ") for line in conditions), chosen
    assert "(status || ''::text)" in chosen or "((status)::text || ''::text)" in chosen


def test_a_django_task_s_queued_twin_recorded_while_it_ran_is_merged_when_it_ends(
    tasks_on: None,
) -> None:
    """The enqueueing's INSERT may land after the worker looked for a twin at the start."""
    jobstatus_tasks.disconnect()
    result = tasks.add.enqueue(1, 2)
    jobstatus_tasks.connect()
    jobstatus_tasks.on_started(sender=None, task_result=result)  # no queued run yet
    twin = JobRun.objects.enqueue(
        result.task.module_path, source="django_tasks", backend_job_id=str(result.id)
    )
    jobstatus_tasks.on_finished(
        sender=None, task_result=dataclasses.replace(result, status="SUCCESSFUL")
    )
    assert list(JobRun.objects.values_list("status", flat=True)) == [Status.SUCCEEDED]
    assert not JobRun.objects.filter(pk=twin.pk).exists()
