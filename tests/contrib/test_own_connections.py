"""Own connections (own_connections.py) in a worker process, on PostgreSQL.

A thread's own connection is closed when the thread ends, so that a task that runs
sub-jobs in threads of its own leaves no session behind; the worker's main thread keeps
its connection across tasks; a forked child never closes a connection of its parent's,
not even one of a thread that did not survive the fork.
"""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from django_jobstatus import own_connections, track
from django_jobstatus.models import JobRun
from django_jobstatus.tracking import tracking_database
from tests.contrib.workers import other_session
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TASKS = 5
SUB_JOBS = 4  # per task, on two threads of the task's own


def _sessions() -> int:
    """Sessions open on the test database, seen from a connection of the test's own."""
    with other_session() as other:
        row = other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _sub_job(index: int) -> None:
    with track("tests.sub", params={"i": index}):
        pass


def test_the_own_connections_of_ended_threads_are_closed() -> None:
    connection.ensure_connection()
    own_connections.track_through_own()  # what a worker's task_prerun does
    before = _sessions()
    for task in range(TASKS):  # each task with a pool of threads of its own
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(_sub_job, range(task * SUB_JOBS, (task + 1) * SUB_JOBS)))
    assert JobRun.objects.succeeded().count() == TASKS * SUB_JOBS
    wait_for(
        lambda: _sessions() <= before,
        timeout=10,
        what=f"the sessions of the tasks' ended threads to end ({before} open before)",
    )


def test_the_main_threads_own_connection_stays_open_across_tasks() -> None:
    own_connections.track_through_own()
    _sub_job(1)
    alias = tracking_database()
    assert alias != connection.alias
    opened = connections[alias].connection
    assert opened is not None
    _sub_job(2)
    assert tracking_database() == alias
    assert connections[alias].connection is opened
    assert JobRun.objects.succeeded().count() == 2


def test_a_forked_child_closes_no_connection_of_a_parents_thread() -> None:
    own_connections.track_through_own()
    made, forked, checked = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[int, int, bool]] = []

    def backend_pid() -> int:
        with connections[tracking_database()].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def thread() -> None:
        _sub_job(1)  # opens this thread's own connection
        before = backend_pid()
        made.set()
        forked.wait(10)
        _sub_job(2)
        usable = connections[tracking_database()].is_usable()
        seen.append((before, backend_pid(), usable))
        checked.set()

    worker = threading.Thread(target=thread)
    worker.start()
    try:
        assert made.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: the thread is gone, its connection must stay open
            gc.collect()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        forked.set()
        worker.join(10)
    assert checked.is_set()
    [(before, after, usable)] = seen
    assert usable
    assert after == before  # the same session: the child did not end it
    assert JobRun.objects.succeeded().count() == 2
