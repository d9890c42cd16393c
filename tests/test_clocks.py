"""Heartbeats on the database's clock: a machine whose clock is off marks no live run lost.

A worker stamps ``heartbeat_at`` and the reaper compares it with now minus the timeout.
Here one process plays both machines: ``clocks()`` shifts ``timezone.now()`` for every
thread (the job's, the heartbeat thread) but the reaper's, or for the reaper's alone.
Before the stamps and the cutoff were the database server's, a worker 20 s behind (ten
timeouts) had its run reaped while it ran, and a dead worker 20 s ahead kept its run
``running`` 20 s too long.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models.signals import pre_save
from django.utils import timezone

from django_jobstatus import track
from django_jobstatus.admin.workers import workers
from django_jobstatus.clock import database_now
from django_jobstatus.models import JobRun, Status
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TIMEOUT = 2  # HEARTBEAT_TIMEOUT, and the reaper's --timeout, in s
OFF = timedelta(seconds=10 * TIMEOUT)


@pytest.fixture(autouse=True)
def short_timeout(settings: Any) -> None:
    settings.JOBSTATUS = {**settings.JOBSTATUS, "HEARTBEAT_TIMEOUT": TIMEOUT}


@contextlib.contextmanager
def clocks(
    *, worker: timedelta = timedelta(0), reaper: timedelta = timedelta(0)
) -> Iterator[Callable[[], str]]:
    """``timezone.now()`` off by ``worker`` in every thread but the reaper's, by ``reaper`` in
    the reaper's; yields ``reap()``, which runs ``reap_jobstatus --timeout`` as the reaper."""
    real = timezone.now
    reaping = threading.local()

    def now() -> Any:
        return real() + (reaper if getattr(reaping, "on", False) else worker)

    def reap() -> str:
        out = StringIO()
        reaping.on = True
        try:
            call_command("reap_jobstatus", f"--timeout={TIMEOUT}", stdout=out)
        finally:
            reaping.on = False
        return out.getvalue()

    timezone.now = now  # type: ignore[assignment]
    try:
        yield reap
    finally:
        timezone.now = real  # type: ignore[assignment]


def status(run: JobRun) -> str:
    return JobRun.objects.values_list("status", flat=True).get(pk=run.pk)


def beaten(run: JobRun) -> Callable[[], bool]:
    """Whether the heartbeat thread has stamped ``run`` since now (its row's stamp moved)."""
    before = JobRun.objects.values_list("heartbeat_at", flat=True).get(pk=run.pk)
    return lambda: (
        JobRun.objects.values_list("heartbeat_at", flat=True).get(pk=run.pk) != before
    )


def test_a_tracked_job_on_a_machine_whose_clock_is_behind_is_not_reaped() -> None:
    with clocks(worker=-OFF) as reap, track("tests.clock") as job:
        assert "Marked 0 runs lost" in reap()  # as it started
        job.progress(1, 10)
        job.flush()
        assert "Marked 0 runs lost" in reap()  # after a progress write
        wait_for(beaten(job.run), timeout=30, what="the heartbeat thread to beat")
        assert "Marked 0 runs lost" in reap()  # after the thread's beat
    assert status(job.run) == Status.SUCCEEDED


def test_a_run_started_and_moved_by_a_machine_whose_clock_is_behind_is_not_reaped() -> (
    None
):
    with clocks(worker=-OFF) as reap:
        run = JobRun.objects.enqueue("tests.clock")
        run.mark_running()
        assert "Marked 0 runs lost" in reap()
        run.set_progress(1, 10)
        assert "Marked 0 runs lost" in reap()
        run.heartbeat()
        assert "Marked 0 runs lost" in reap()
        run.mark_running()  # a restart
        assert "Marked 0 runs lost" in reap()
    assert status(run) == Status.RUNNING


def test_a_live_run_is_not_reaped_by_a_reaper_whose_clock_is_ahead() -> None:
    with clocks(reaper=OFF) as reap, track("tests.clock") as job:
        assert "Marked 0 runs lost" in reap()
    assert status(job.run) == Status.SUCCEEDED


def test_a_dead_run_of_a_machine_whose_clock_was_ahead_is_reaped_after_the_timeout() -> (
    None
):
    with clocks(worker=OFF) as reap:
        run = JobRun.objects.start("tests.clock")  # and no process beats for it
        assert "Marked 0 runs lost" in reap()
        wait_for(
            lambda: "Marked 1 run lost" in reap(),
            timeout=5 * TIMEOUT,
            what="the reaper to find the run silent",
        )
    assert status(run) == Status.LOST


def test_a_run_saved_through_the_orm_by_a_machine_whose_clock_is_behind_is_not_reaped() -> (
    None
):
    def listening(**kwargs: Any) -> None:  # a receiver: runs are saved through the ORM
        pass

    pre_save.connect(listening, sender=JobRun)
    try:
        with clocks(worker=-OFF) as reap:
            run = JobRun.objects.start("tests.clock")
            assert "Marked 0 runs lost" in reap()
    finally:
        pre_save.disconnect(listening, sender=JobRun)
    assert status(run) == Status.RUNNING


def test_a_heartbeats_time_in_a_filter_is_the_time_it_holds() -> None:
    """Only a write reads the database's clock: a filter compares with the value itself."""
    run = JobRun.objects.start("tests.clock")
    an_hour_ago = database_now(timezone.now() - timedelta(hours=1))
    assert not JobRun.objects.filter(pk=run.pk, heartbeat_at__lt=an_hour_ago).exists()
    assert JobRun.objects.filter(pk=run.pk, heartbeat_at__gt=an_hour_ago).exists()


def test_a_live_worker_is_not_flagged_silent_by_a_web_server_whose_clock_is_ahead() -> (
    None
):
    with track("tests.clock") as job:
        with clocks(worker=OFF):  # the page's process, here
            (row,) = workers(timezone.now())
        assert (row["worker"], row["running"], row["silent"]) == (
            job.run.worker,
            1,
            False,
        )
