"""One heartbeat for every active run of a process: track(), Celery, RQ and Django tasks alike.

A task that reports nothing for longer than HEARTBEAT_TIMEOUT must not be reaped as lost
while its worker lives, and must still be reaped once its worker is gone. The end-to-end
tests run a real prefork Celery worker and a real forking rqworker whose settings give
HEARTBEAT_TIMEOUT = 2 s, and run ``reap_jobstatus --timeout 2`` while a task is silent;
also with the worker's clock ten timeouts behind the database's (and this process's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from subprocess import Popen
from typing import Any

import django_rq
import pytest
import rq
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from django.utils.connection import ConnectionDoesNotExist

from django_jobstatus import own_connections, track
from django_jobstatus.contrib import celery as jobstatus_celery
from django_jobstatus.contrib import rq as jobstatus_rq
from django_jobstatus.heartbeats import Heartbeats, heartbeats
from django_jobstatus.models import JobRun, Status
from django_jobstatus.tracking import JobHandle
from tests.contrib import rq_jobs
from tests.contrib.celery_app import app, silent
from tests.contrib.dbproxy import Proxy
from tests.contrib.workers import (
    db_proxy,
    refreshed,
    worker_env,
    worker_process,
)
from tests.contrib.workers import rq_worker as started_rq_worker
from tests.waiting import wait_for

__all__ = ["db_proxy"]  # a fixture

TIMEOUT = (
    2  # HEARTBEAT_TIMEOUT in the workers' settings, and the reaper's --timeout, in s
)
BEHIND = {"JOBSTATUS_WORKER_CLOCK_OFFSET": str(-10 * TIMEOUT)}  # a worker's clock, in s
CELERY_QUEUE = f"jobstatus-heartbeats-{os.getpid()}"


def like_the_workers() -> Any:
    """This process configured as the workers are: the reaper refuses a timeout shorter
    than two heartbeat intervals of its own HEARTBEAT_TIMEOUT."""
    return override_settings(
        JOBSTATUS={**django_settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": TIMEOUT}
    )


def reap(timeout: float = TIMEOUT) -> str:
    out = StringIO()
    with like_the_workers():
        call_command("reap_jobstatus", f"--timeout={timeout}", stdout=out)
    return out.getvalue()


def silent_for(run: JobRun, seconds: float) -> None:
    """Wait until ``run`` has been running for ``seconds``."""
    assert run.started_at is not None
    wait_for(
        lambda: timezone.now() - run.started_at > timedelta(seconds=seconds),
        timeout=seconds + 30,
        what=f"run {run.pk} to have run for {seconds} s",
    )


def started(run: JobRun, worker: Popen[bytes], log: Path) -> None:
    wait_for(
        lambda: refreshed(run).status == Status.RUNNING,
        timeout=60,
        what="the task to start",
        process=worker,
        log=log,
    )


def survives_the_reaper(run: JobRun, worker: Popen[bytes], log: Path) -> None:
    """While the task says nothing for 3× the timeout, the reaper leaves its run alone; it then succeeds.

    The silence is timed by this process (the worker's clock may be off)."""
    started(run, worker, log)
    begun = time.monotonic()
    for elapsed in (0, 1.5 * TIMEOUT, 2.5 * TIMEOUT):
        wait_for(
            lambda: time.monotonic() - begun >= elapsed,  # noqa: B023 (called at once)
            timeout=elapsed + 30,
            what=f"{elapsed} s of silence",
        )
        assert "Marked 0 runs lost" in reap(), f"reaped after {elapsed} s of silence"
        assert refreshed(run).status == Status.RUNNING
    wait_for(
        lambda: refreshed(run).is_finished,
        timeout=60,
        what="the task to finish",
        process=worker,
        log=log,
    )
    assert run.status == Status.SUCCEEDED
    assert run.result == "woke up"


def reaped_once_killed(
    run: JobRun,
    worker: Popen[bytes],
    log: Path,
    outside: Callable[[], int] | None = None,
) -> None:
    """A worker killed with SIGKILL (its whole process group, and the process
    ``outside()`` names, which left the group) stops beating: its run is reaped as lost."""
    started(run, worker, log)
    silent_for(run, 1.5 * TIMEOUT)
    assert "Marked 0 runs lost" in reap()  # alive: still beaten for
    os.killpg(worker.pid, signal.SIGKILL)
    if outside is not None:
        os.kill(outside(), signal.SIGKILL)
    worker.wait(timeout=30)
    with like_the_workers():
        wait_for(
            lambda: JobRun.objects.stale(TIMEOUT).filter(pk=run.pk).exists(),
            timeout=TIMEOUT + 30,
            what="the dead worker's last heartbeat to get older than the timeout",
        )
    assert "Marked 1 run lost" in reap()
    assert refreshed(run).status == Status.LOST


# In this process: the mechanism itself.


@pytest.mark.django_db(transaction=True)
def test_one_statement_beats_for_every_active_run_of_the_process(
    make_run: Callable[..., JobRun],
) -> None:
    old = timezone.now() - timedelta(hours=1)
    runs = [make_run(heartbeat_at=old, started_at=old) for _ in range(3)]
    ended = make_run(status=Status.SUCCEEDED, heartbeat_at=old, started_at=old)
    restarted = make_run(heartbeat_at=old, started_at=old)
    handles = [JobHandle(run) for run in [*runs, ended, restarted]]
    # Another worker started the next attempt of this one (and may die): not ours to beat for.
    JobRun.objects.get(pk=restarted.pk).mark_running(worker="elsewhere:1")
    JobRun.objects.filter(pk=restarted.pk).update(heartbeat_at=old)
    tokens = [handle.activate() for handle in handles]
    try:
        with CaptureQueriesContext(connections[heartbeats.connection()]) as captured:
            assert heartbeats.beat() == 3
        # One UPDATE (on PostgreSQL in a transaction, for its FOR UPDATE SKIP LOCKED).
        statements = [
            query["sql"]
            for query in captured
            if query["sql"] not in ("BEGIN", "COMMIT")
        ]
        assert len(statements) == 1, statements
        assert statements[0].startswith("UPDATE")
    finally:
        for handle, token in reversed(list(zip(handles, tokens, strict=True))):
            handle.deactivate(token)
        own_connections.close()  # made in this thread by the calls above
    for run in runs:
        assert refreshed(run).heartbeat_at > old
    assert refreshed(ended).heartbeat_at == old  # a finished run is not beaten for
    assert refreshed(restarted).heartbeat_at == old
    assert heartbeats.beat() == 0  # deactivated: none left


@pytest.mark.django_db  # an own connection left open by an earlier test is checked before use
def test_a_forked_child_beats_for_none_of_its_parents_runs() -> None:
    handle = JobHandle(JobRun(job_name="tests.job", status=Status.RUNNING))
    token = handle.activate()
    alias = heartbeats.connection()  # the parent's own connection (not opened yet)
    try:
        assert handle in heartbeats.handles()
        pid = os.fork()
        if pid == 0:  # the child: no runs, no thread, the parent's connection forgotten
            try:
                connections[alias]
            except ConnectionDoesNotExist:
                os._exit(0 if not heartbeats.handles() else 1)
            os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert handle in heartbeats.handles()  # the parent goes on beating
        assert connections[alias] is not None
    finally:
        handle.deactivate(token)
        own_connections.close()
    assert handle not in heartbeats.handles()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_silent_tracked_job_is_not_reaped(settings: Any) -> None:
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": TIMEOUT}
    with track("tests.silent") as job:
        for elapsed in (1.5 * TIMEOUT, 3 * TIMEOUT):
            silent_for(job.run, elapsed)
            assert "Marked 0 runs lost" in reap()
    assert refreshed(job.run).status == Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_beat_that_failed_is_tried_again_within_a_second(
    settings: Any, monkeypatch: pytest.MonkeyPatch, make_run: Callable[..., JobRun]
) -> None:
    """After a database outage longer than HEARTBEAT_TIMEOUT, the next beat came a whole
    interval (a third of the timeout, 100 s by default) after the failed one: a reaper
    that ran meanwhile marked the runs of this live process lost."""
    from django.db import OperationalError

    from django_jobstatus.heartbeats import Heartbeats

    real = Heartbeats.connection
    attempts: list[float] = []

    def away(self: Heartbeats) -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise OperationalError("the server closed the connection unexpectedly")
        return real(self)

    monkeypatch.setattr(Heartbeats, "connection", away)
    old = timezone.now() - timedelta(hours=1)
    run = make_run("tests.silent", heartbeat_at=old, started_at=old)
    handle = JobHandle(run)
    beats = Heartbeats()  # a thread of its own, started now
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": 3}
    beats.add(handle)  # its first beat is due in a second, and fails;
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": 300}
    try:  # the one after must not wait an interval of 100 s
        wait_for(
            lambda: refreshed(run).heartbeat_at > old,
            timeout=10,
            what="a beat after the failed one",
        )
    finally:
        beats.discard(handle)
    assert len(attempts) >= 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_run_whose_row_is_locked_holds_up_no_other_run_s_beat(settings: Any) -> None:
    """Two jobs in threads of one process; one updates its own run's row inside its
    transaction and keeps it open. The one UPDATE that beats for every run of the process
    waited on that row lock (up to its 10 s lock timeout), failed, and did so at every
    beat: the other job, silent and alive, was reaped as lost."""
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": TIMEOUT}
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with track("tests.holder") as job, transaction.atomic():
                JobRun.objects.filter(pk=job.run.pk).update(message="mine")
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    old = timezone.now() - timedelta(hours=1)
    with track("tests.silent") as job:
        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert locked.wait(10)
            JobRun.objects.filter(pk=job.run.pk).update(heartbeat_at=old)
            wait_for(
                lambda: refreshed(job.run).heartbeat_at > old,
                timeout=5,  # less than the lock timeout the UPDATE waited
                what="a beat for the run whose row is not locked",
            )
        finally:
            release.set()
            thread.join(30)
    assert refreshed(job.run).status == Status.SUCCEEDED


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_an_end_the_thread_is_trying_at_the_commit_is_written_before_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job updates its own run in the caller's transaction: its end is held, and the
    thread tries it each second. The commit came while the thread was in such a try (its
    probe found the row still locked; the answer is slow to come back): the commit's
    write was left to the thread, and a pool process exiting then
    (``write_ends_before_exit()``, as Celery's and RQ's integrations call it) found no
    end held and returned. The process exited, the end never written, the run reaped lost."""
    from django_jobstatus import tracking

    side = connections["default__jobstatus"]  # with the lock timeout the app sets
    side.close()
    monkeypatch.setattr(side, "settings_dict", own_connections.side_settings("default"))
    real = tracking._row_free
    probed, answer = threading.Event(), threading.Event()

    def slow_row_free(alias: str, run: JobRun) -> bool | None:
        free = real(alias, run)
        if threading.current_thread().name == "jobstatus-heartbeats" and not free:
            probed.set()
            answer.wait(5)
        return free

    monkeypatch.setattr(tracking, "_row_free", slow_row_free)
    try:
        with transaction.atomic():
            with track("tests.held_end") as job:
                JobRun.objects.filter(pk=job.run.pk).update(data={"claimed": True})
            assert probed.wait(10), "the heartbeat thread never tried the end"
        heartbeats.write_ends_before_exit()  # committed; the process exits
        status = JobRun.objects.get(pk=job.run.pk).status  # not job.run: the thread's
    finally:
        answer.set()
    wait_for(  # the thread, let go, writes it: nothing left for the next test
        lambda: JobRun.objects.filter(pk=job.run.pk).succeeded().exists(),
        timeout=10,
        what="the end written",
    )
    assert status == Status.SUCCEEDED, f"the run was {status} at the exit"


def test_an_end_a_commit_s_try_puts_back_is_tried_again_a_second_later(
    settings: Any,
) -> None:
    """The commit's ``write_end()`` takes the end and its try fails (the row held a moment
    by another transaction: a kill request, the reaper, a purge batch). Meanwhile the
    thread woke for it, found no end held, and set its next wake an interval away (100 s
    here): the end put back waited that long, not a second."""
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": 300}
    beats = Heartbeats()
    tries: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def end(alias: str) -> bool:
        tries.append(threading.current_thread().name)
        if len(tries) == 1:  # the commit's try: the row is held by someone else
            holding.set()
            release.wait(10)
            return False
        return True

    beats.end_later(end)  # the thread is due in a second
    commit = threading.Thread(target=beats.write_end, args=(end, "default"))
    commit.start()
    assert holding.wait(5)
    wait_for(
        lambda: beats._due > time.monotonic() + 10,
        timeout=5,
        what="the heartbeat thread to look at the ends during the commit's try",
    )
    release.set()
    commit.join(5)
    wait_for(
        lambda: len(tries) >= 2,
        timeout=5,
        what="the heartbeat thread to try the end again about a second later",
    )
    assert tries[1] == "jobstatus-heartbeats"
    assert beats._ends == []


# A real prefork Celery worker.


@contextlib.contextmanager
def celery_worker(
    proxy: Proxy, log: Path, env: dict[str, str] | None = None
) -> Iterator[Popen[bytes]]:
    argv = [
        *("-m", "celery", "-A", "tests.contrib.celery_app", "worker"),
        *("--pool=prefork", "--concurrency=1", "--loglevel=INFO", "-Q", CELERY_QUEUE),
        *("-n", f"jobstatus-heartbeats-{uuid.uuid4().hex[:8]}@%h"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    environment = worker_env(proxy, "django_jobstatus.contrib.celery") | (env or {})
    environment["JOBSTATUS_WORKER_HEARTBEAT_TIMEOUT"] = str(TIMEOUT)
    with worker_process(argv, environment, log) as process:
        wait_for(
            lambda: app.control.ping(timeout=0.5),
            timeout=90,
            what="the Celery worker to answer a ping",
            process=process,
            log=log,
        )
        yield process
    with contextlib.suppress(Exception):
        app.control.purge()


def celery_run(seconds: float) -> JobRun:
    result = silent.apply_async(args=(seconds,), queue=CELERY_QUEUE)
    run = jobstatus_celery.find_run(result.id)
    assert run is not None
    return run


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_on")
class TestCelery:
    def test_a_silent_task_is_not_reaped(self, db_proxy: Proxy, tmp_path: Path) -> None:
        log = tmp_path / "celery.log"
        with celery_worker(db_proxy, log) as worker:
            survives_the_reaper(celery_run(3 * TIMEOUT + 1), worker, log)

    def test_a_silent_task_on_a_worker_whose_clock_is_behind_is_not_reaped(
        self, db_proxy: Proxy, tmp_path: Path
    ) -> None:
        log = tmp_path / "celery.log"
        with celery_worker(db_proxy, log, BEHIND) as worker:
            survives_the_reaper(celery_run(3 * TIMEOUT + 1), worker, log)

    def test_a_killed_workers_run_is_reaped(
        self, db_proxy: Proxy, tmp_path: Path
    ) -> None:
        log = tmp_path / "celery.log"
        with celery_worker(db_proxy, log) as worker:
            reaped_once_killed(celery_run(60), worker, log)


# A real forking rqworker.


@pytest.fixture
def rq_queue(rq_on: None) -> Iterator[rq.Queue]:
    queue = django_rq.get_queue(rq_jobs.HEARTBEAT_QUEUE)
    queue.empty()
    yield queue
    queue.empty()


def rq_worker(
    proxy: Proxy, log: Path, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[Popen[bytes]]:
    return started_rq_worker(
        proxy,
        log,
        queue=rq_jobs.HEARTBEAT_QUEUE,
        prefix="jobstatus-heartbeats",
        env={"JOBSTATUS_WORKER_HEARTBEAT_TIMEOUT": str(TIMEOUT)} | (env or {}),
    )


def rq_run(queue: rq.Queue, seconds: float, key: str | None = None) -> JobRun:
    """The run of a silent job; with ``key``, the job's pid (its work horse's) goes there."""
    if key is None:
        job = queue.enqueue(rq_jobs.silent, seconds)
    else:
        job = queue.enqueue(rq_jobs.silent_and_seen, seconds, key)
    run = jobstatus_rq.find_run(job.id)
    assert run is not None
    return run


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
class TestRQ:
    def test_a_silent_job_is_not_reaped(
        self, db_proxy: Proxy, tmp_path: Path, rq_queue: rq.Queue
    ) -> None:
        log = tmp_path / "rq.log"
        with rq_worker(db_proxy, log) as worker:
            survives_the_reaper(rq_run(rq_queue, 3 * TIMEOUT + 1), worker, log)

    def test_a_silent_job_on_a_worker_whose_clock_is_behind_is_not_reaped(
        self, db_proxy: Proxy, tmp_path: Path, rq_queue: rq.Queue
    ) -> None:
        log = tmp_path / "rq.log"
        with rq_worker(db_proxy, log, BEHIND) as worker:
            survives_the_reaper(rq_run(rq_queue, 3 * TIMEOUT + 1), worker, log)

    def test_a_killed_workers_run_is_reaped(
        self, db_proxy: Proxy, tmp_path: Path, rq_queue: rq.Queue
    ) -> None:
        """The worker and its work horse (in a process group of its own, which RQ made
        so that it outlives its worker) are both killed: a horse alone beats for its run."""
        log = tmp_path / "rq.log"
        key = f"jobstatus-heartbeats:{uuid.uuid4()}"
        with rq_worker(db_proxy, log) as worker:
            reaped_once_killed(
                rq_run(rq_queue, 60, key),
                worker,
                log,
                outside=lambda: int(rq_queue.connection.get(key)),
            )

    def test_a_run_whose_worker_was_killed_is_not_lost_while_its_horse_runs(
        self, db_proxy: Proxy, tmp_path: Path, rq_queue: rq.Queue
    ) -> None:
        """kill -9 of the rqworker's main process (a supervisor's, or the OOM killer's)
        leaves its work horse, a process group of its own, running the job; only the main
        process beat for the run. The reaper marked the live job lost after the timeout,
        and the horse's success was then refused (lost is an end): RQ said finished."""
        log = tmp_path / "rq.log"
        key = f"jobstatus-heartbeats:{uuid.uuid4()}"
        with rq_worker(db_proxy, log) as worker:
            run = rq_run(rq_queue, 5 * TIMEOUT, key)
            started(run, worker, log)
            horse = wait_for(
                lambda: rq_queue.connection.get(key),
                timeout=30,
                what="the job to start in its work horse",
            )
            os.kill(worker.pid, signal.SIGKILL)  # the main process only
            worker.wait(timeout=10)
            begun = time.monotonic()
            wait_for(
                lambda: time.monotonic() - begun >= 2.5 * TIMEOUT,
                timeout=2.5 * TIMEOUT + 30,
                what="a silence longer than the timeout",
            )
            os.kill(int(horse), 0)  # the horse lives, and runs the job still
            assert not rq_queue.connection.exists(f"{key}:done")
            assert "Marked 0 runs lost" in reap()
            wait_for(
                lambda: refreshed(run).is_finished,
                timeout=60,
                what="the horse to record the end",
            )
        assert (run.status, run.result) == (Status.SUCCEEDED, "woke up")
