"""Queued runs written behind the enqueue (writebehind.py, issue 12), on PostgreSQL outside a transaction.

The enqueue does not wait for the database; nothing is recorded twice when a worker
starts the task first; this process reads its own writes; a refused publish writes
nothing; a forked child never writes its parent's runs; nothing handed over is lost at
exit. The writer is held back by holding a task's advisory lock from another connection.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus import statements, writebehind
from django_jobstatus.contrib import celery
from django_jobstatus.contrib._execution import Execution, record_queued
from django_jobstatus.models import JobRun, Status, uuid7
from tests.contrib.workers import other_session, recorded_by_a_worker
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def held(*task_ids: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold the advisory locks of Celery tasks ``task_ids`` from another connection: their queued runs wait."""
    with other_session() as other:
        for task_id in task_ids:
            other.execute(
                "SELECT pg_advisory_lock(%s, %s)",
                [statements.LOCK_CLASS, statements._job_key("celery", task_id)],
            )
        yield other


def publish(task_id: str | None = None) -> str:
    """What Celery's before_task_publish and after_task_publish do for a new task."""
    task_id = task_id or str(uuid.uuid4())
    celery._published(
        sender="tests.add",
        body=((1, 2), {}, {}),
        headers={"id": task_id, "task": "tests.add", "retries": 0},
        routing_key="celery",
    )
    celery._confirmed(headers={"id": task_id})
    return task_id


def stored(task_id: str) -> list[tuple[Any, ...]]:
    """The runs of the task as another connection sees them (no wait for this process's writer)."""
    with other_session() as other:
        return other.execute(
            "SELECT status, queued_at IS NOT NULL, parent_id FROM django_jobstatus_jobrun "
            "WHERE source = 'celery' AND backend_job_id = %s",
            [task_id],
        ).fetchall()


def test_an_enqueue_does_not_wait_for_its_insert() -> None:
    task_id = str(uuid.uuid4())
    with held(task_id):
        publish(task_id)  # returns while the INSERT waits for the lock
        assert stored(task_id) == []
        assert not writebehind.writer.idle
    assert writebehind.flush()
    assert stored(task_id) == [(Status.QUEUED, True, None)]


def test_this_process_reads_its_own_queued_runs() -> None:
    task_id = str(uuid.uuid4())
    with held(task_id) as other:
        publish(task_id)
        # The lock goes once the query below waits for the writer.
        threading.Timer(
            0.2, lambda: other.execute("SELECT pg_advisory_unlock_all()")
        ).start()
        run = celery.find_run(task_id)
    assert run is not None
    assert run.status == Status.QUEUED


def test_a_worker_that_starts_first_keeps_the_one_run_and_the_queued_time() -> None:
    parent = JobRun.objects.start("tests.batch")
    task_id = str(uuid.uuid4())
    values = JobRun.objects.queued_values(
        "tests.add", source="celery", backend_job_id=task_id, parent=parent
    )
    values["id"] = uuid7()
    execution = Execution("celery", task_id, "tests.add", worker="w@host:1")
    execution.start()  # no queued run yet: the worker records the run itself
    execution.close()
    assert execution.created
    writebehind._insert("default", [values])  # the enqueue's INSERT comes later
    run = JobRun.objects.get(backend_job_id=task_id)
    assert run.pk == execution.handle.run.pk
    assert run.status == Status.RUNNING
    assert run.queued_at == values["queued_at"]
    assert run.parent_id == parent.pk


def test_a_worker_starting_while_the_queued_run_is_written_finds_it() -> None:
    task_id = str(uuid.uuid4())
    executions: list[Execution] = []

    def work() -> None:
        execution = Execution("celery", task_id, "tests.add", worker="w@host:1")
        execution.start()
        execution.close()
        executions.append(execution)
        connection.close()

    with mock.patch.object(writebehind, "catch_up", lambda: None):
        # The worker as another process: it never waits for this process's writer.
        with held(task_id) as other:
            publish(task_id)  # its INSERT waits for the lock
            worker = threading.Thread(target=work)
            worker.start()
            # The worker found no queued run and waits for the task's lock too.
            wait_for(
                lambda: (
                    other.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()[0]
                    == 2
                ),
                timeout=10,
                what="the writer and the worker waiting for the task's lock",
            )
        worker.join(10)
        assert not worker.is_alive()
    assert writebehind.flush()
    assert executions and executions[0].handle is not None
    assert [status for status, *_ in stored(task_id)] == [Status.RUNNING]


def test_a_task_sent_again_under_its_id_is_recorded_queued_again() -> None:
    """``apply_async(task_id=...)`` with an id used before (a fixed id, a task sent anew
    once its run ended) gets a new queued run, as when it is written in the caller: the
    task's earlier run is not this enqueue's."""
    task_id = publish()
    assert writebehind.flush()
    first = celery.find_run(task_id)
    assert first is not None and first.status == Status.QUEUED
    first.mark_running(worker="w@host:1")
    first.mark_succeeded()

    publish(task_id)  # sent again under the same id
    assert writebehind.flush()
    statuses = list(
        JobRun.objects.using("default")
        .filter(source="celery", backend_job_id=task_id)
        .order_by("created_at")
        .values_list("status", flat=True)
    )
    assert statuses == [Status.SUCCEEDED, Status.QUEUED], statuses
    newest = celery.find_run(task_id)
    assert newest is not None and newest.status == Status.QUEUED


def test_a_task_sent_again_that_a_worker_ran_before_its_queued_run_has_one_run_more() -> (
    None
):
    """The worker started and finished the second enqueue's run before its row was
    written: that run gets the queued time, and no queued run follows it."""
    task_id = publish()
    assert writebehind.flush()
    first = celery.find_run(task_id)
    assert first is not None
    first.mark_running(worker="w@host:1")
    first.mark_succeeded()
    values = JobRun.objects.queued_values(
        "tests.add", source="celery", backend_job_id=task_id
    )
    values["id"] = uuid7()
    execution = Execution("celery", task_id, "tests.add", worker="w@host:1")
    execution.start()  # its newest run has ended: the worker records a new one
    execution.end(result=3)
    execution.close()
    assert execution.created
    writebehind._insert("default", [values])  # the enqueue's INSERT comes later
    runs = list(
        JobRun.objects.filter(backend_job_id=task_id)
        .order_by("created_at")
        .values_list("pk", "status", "queued_at")
    )
    assert runs == [
        (first.pk, Status.SUCCEEDED, first.queued_at),
        (execution.handle.run.pk, Status.SUCCEEDED, values["queued_at"]),
    ]


def test_an_earlier_run_with_no_queued_time_is_not_taken_for_a_new_enqueue_s() -> None:
    """A run of the task that a worker recorded without its enqueue (one never recorded),
    created longer than SKEW before the task is sent again, is an earlier run."""
    task_id = str(uuid.uuid4())
    earlier = JobRun.objects.start(
        "tests.add",
        source="celery",
        backend_job_id=task_id,
        created_at=timezone.now() - statements.SKEW * 2,
    )
    earlier.mark_succeeded()
    publish(task_id)
    assert writebehind.flush()
    assert sorted(stored(task_id)) == [
        (Status.QUEUED, True, None),
        (Status.SUCCEEDED, False, None),
    ]


def _publish_only(task_id: str) -> None:
    celery._published(
        sender="tests.add",
        body=((1, 2), {}, {}),
        headers={"id": task_id, "task": "tests.add", "retries": 0},
        routing_key="celery",
    )


def test_a_refused_publish_of_a_waiting_run_writes_nothing() -> None:
    first, refused = str(uuid.uuid4()), str(uuid.uuid4())
    with held(first):
        publish(first)  # the writer takes it, and waits for the lock
        wait_for(
            lambda: writebehind.writer._busy,
            timeout=10,
            what="the writer to take the first run",
        )
        _publish_only(refused)  # waits behind it
        celery._not_published(refused)  # the broker refused the message
    assert writebehind.flush()
    assert len(stored(first)) == 1
    assert stored(refused) == []


def test_a_refused_publish_of_a_run_being_written_deletes_it() -> None:
    task_id = str(uuid.uuid4())
    _publish_only(task_id)
    celery._not_published(task_id)  # waits for the writer, then deletes the run
    assert writebehind.flush()
    assert stored(task_id) == []


def test_one_bad_run_does_not_lose_the_others() -> None:
    rows = []
    for owner_id in (None, 2**31 - 1, None):  # no such user: a foreign key violation
        values = JobRun.objects.queued_values(
            "tests.add", source="celery", backend_job_id=str(uuid.uuid4())
        )
        values["id"] = uuid7()
        values["owner_id"] = owner_id
        rows.append(values)
    writebehind.writer._write([("default", row) for row in rows])
    written = set(JobRun.objects.values_list("pk", flat=True))
    assert written == {rows[0]["id"], rows[2]["id"]}


def test_the_writer_tries_again_while_the_database_is_away() -> None:
    insert = writebehind._insert
    calls: list[int] = []

    def away_once(alias: str, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        insert(alias, rows)

    with mock.patch.object(writebehind, "_insert", away_once):
        task_id = publish()
        assert writebehind.flush()
    assert len(calls) == 2
    assert [status for status, *_ in stored(task_id)] == [Status.QUEUED]


def test_the_writer_gives_up_after_a_while_and_queries_stop_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    release = threading.Event()

    def away(alias: str, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        release.wait(5)
        raise OperationalError("server closed the connection unexpectedly")

    with (
        mock.patch.object(writebehind, "_insert", away),
        mock.patch.object(writebehind, "FLUSH_TIMEOUT", 0.2),
        mock.patch.object(writebehind, "RETRY_FOR", 0.0),
    ):
        task_id = publish()
        assert JobRun.objects.count() == 0  # waited 0.2 s, then went on
        assert writebehind.writer.stalled
        with mock.patch.object(writebehind.writer, "flush") as waited:
            JobRun.objects.count()  # no second wait while it is stalled
        waited.assert_not_called()
        release.set()
        assert writebehind.flush(10)
    assert "Gave up recording 1 queued runs" in caplog.text
    assert stored(task_id) == []
    publish()  # a new run goes through: no longer stalled once written
    assert JobRun.objects.count() == 1
    assert not writebehind.writer.stalled


def test_a_forked_child_never_writes_its_parents_runs() -> None:
    task_id = str(uuid.uuid4())
    with held(task_id):
        publish(task_id)
        pid = os.fork()
        if pid == 0:  # the child: nothing of the parent's to write
            os._exit(0 if writebehind.writer.idle and writebehind.flush(1) else 1)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert writebehind.flush()
    assert len(stored(task_id)) == 1


def test_the_runs_handed_over_are_written_before_the_process_exits() -> None:
    script = (
        "import django, uuid; django.setup()\n"
        "from django_jobstatus.contrib import celery\n"
        "ids = [str(uuid.uuid4()) for _ in range(50)]\n"
        "for task_id in ids:\n"
        "    celery._published(sender='tests.add', body=((), {}, {}),"
        " headers={'id': task_id, 'task': 'tests.add', 'retries': 0})\n"
        "print(' '.join(ids))\n"  # and exit at once
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.contrib.worker_settings",
        "JOBSTATUS_WORKER_DB": connection.settings_dict["NAME"],
        "JOBSTATUS_WORKER_INTEGRATIONS": "",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = done.stdout.split()
    assert len(ids) == 50
    assert (
        JobRun.objects.filter(backend_job_id__in=ids, status=Status.QUEUED).count()
        == 50
    )


def test_a_run_enqueued_in_a_transaction_outlives_its_rollback() -> None:
    """As before: the message went to the broker, so the run is recorded outside the transaction."""
    from django.db import transaction

    with contextlib.suppress(RuntimeError), transaction.atomic():
        task_id = publish()
        raise RuntimeError("rolled back")
    assert writebehind.flush()
    assert [status for status, *_ in stored(task_id)] == [Status.QUEUED]


def test_a_retry_writes_its_run_before_the_push() -> None:
    """contrib.retry() (the admin's and the API's Retry) enqueues inside writebehind.inline()."""
    task_id = str(uuid.uuid4())
    with held(task_id), writebehind.inline():
        publish(task_id)  # not handed to the writer: the lock is no writer's concern
        assert writebehind.writer.idle
        assert [status for status, *_ in stored(task_id)] == [Status.QUEUED]


def test_the_queued_time_is_the_enqueue_s() -> None:
    before = timezone.now()
    task_id = publish()
    after = timezone.now()
    run = celery.find_run(task_id)
    assert run is not None
    assert before <= run.queued_at <= after
    assert before <= run.created_at <= after


def test_a_batch_looks_its_tasks_up_in_the_index_not_the_whole_table() -> None:
    """PostgreSQL took any batch for 100 rows and read the whole run table twice a batch
    (a hash join: 2 to 4 ms on 8,000 runs, growing with the table) to find a few tasks."""
    now = timezone.now()
    JobRun.objects.bulk_create(
        JobRun(
            job_name=f"tests.job{i % 50}",
            status=Status.SUCCEEDED,
            source="celery",
            backend_job_id=str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
        )
        for i in range(5000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_jobstatus_jobrun")
    values = JobRun.objects.queued_values(
        "tests.add", source="celery", backend_job_id=str(uuid.uuid4())
    )
    values["id"] = uuid7()
    with CaptureQueriesContext(connection) as captured:
        statements.write_queued("default", [values])
    _locks, write = captured.captured_queries[-1]["sql"].split("; ")
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {write}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on django_jobstatus_jobrun" not in plan, plan
    assert JobRun.objects.filter(pk=values["id"], status=Status.QUEUED).exists()


def test_a_busy_enqueuer_s_runs_go_in_one_statement_and_a_flush_does_not_wait(
    monkeypatch,
) -> None:
    """The writer waits while runs keep coming (each within LINGER of the last), up to
    MAX_LINGER: one statement for a stream of enqueues, not one per LINGER. A flush (or a
    query catching up) ends the wait at once."""
    monkeypatch.setattr(writebehind, "LINGER", 0.1)
    monkeypatch.setattr(writebehind, "MAX_LINGER", 30.0)
    batches: list[int] = []
    insert = writebehind._insert

    def counted(alias: str, rows: list[dict[str, Any]]) -> None:
        batches.append(len(rows))
        insert(alias, rows)

    monkeypatch.setattr(writebehind, "_insert", counted)
    stream = threading.Event()
    for _ in range(50):  # 50 enqueues 10 ms apart: 0.5 s, 5 LINGERs
        publish()
        stream.wait(0.01)
    # Still waiting for more (the last came within LINGER); the flush writes them now.
    began = timezone.now()
    assert writebehind.flush(timeout=10)
    assert (timezone.now() - began).total_seconds() < 5
    assert sum(batches) == 50
    assert len(batches) <= 2, batches  # one, or two if the machine stalled past LINGER
    assert JobRun.objects.filter(status=Status.QUEUED).count() == 50


def test_a_retried_write_of_a_queued_run_merged_into_a_worker_s_run_adds_no_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker (its clock 3 s behind the enqueuer's) recorded the run first, and the
    writer's first try committed but lost its answer: the second try must find the
    enqueue's run by its queued time, not add a second, queued run (a merge that clamped
    the queued time to the worker's start did; found by a review)."""
    real = writebehind._insert
    tries: list[str] = []

    def worker_first_then_answer_lost(alias: str, rows: list[dict[str, Any]]) -> None:
        if not tries:  # its clock 3 s behind the enqueuer's
            recorded_by_a_worker(
                alias, rows, started_at=rows[0]["queued_at"] - timedelta(seconds=3)
            )
        real(alias, rows)  # committed
        tries.append("written")
        if len(tries) == 1:
            # The connection dropped before the COMMIT's answer came back: the writer
            # cannot tell that it applied, and tries the batch again.
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(writebehind, "_insert", worker_first_then_answer_lost)
    record_queued("celery", "task-rt-1", "tests.add", fresh=True)
    assert writebehind.writer.flush(timeout=30)
    assert tries == ["written", "written"]  # tried again after the lost answer

    runs = JobRun.objects.filter(source="celery", backend_job_id="task-rt-1")
    assert list(runs.values_list("status", flat=True)) == ["running"]
