"""What a run records when the database goes away in the middle of a write and comes back.

Every connection of this process (the app's, the second connection, the heartbeat
thread's own) goes through a LosingProxy, which can also lose a COMMIT's answer: the
server has committed, and the job hears an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections

from django_jobstatus import tracking
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.exceptions import JobKilled
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.signals import job_status_changed
from django_jobstatus.tracking import track
from tests.contrib.dbproxy import LosingProxy

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def losing_proxy(django_db_setup: None) -> Iterator[LosingProxy]:
    """Every connection of this process to the test database, through a LosingProxy."""
    default = connections["default"]
    if default.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    target = (
        default.settings_dict.get("HOST") or "127.0.0.1",
        int(default.settings_dict.get("PORT") or 5432),
    )
    proxy = LosingProxy(target)
    saved: dict[str, tuple[Any, Any]] = {}
    for alias in connections.settings:
        settings_dict = connections.settings[alias]
        saved[alias] = (settings_dict.get("HOST"), settings_dict.get("PORT"))
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", proxy.port
    for connection in connections.all(initialized_only=True):
        connection.settings_dict["HOST"] = "127.0.0.1"
        connection.settings_dict["PORT"] = proxy.port
        connection.close()
    yield proxy
    if proxy._listener is None:
        proxy.restore()
    for alias, (host, port) in saved.items():
        connections.settings[alias]["HOST"] = host
        connections.settings[alias]["PORT"] = port
    for connection in connections.all(initialized_only=True):
        connection.settings_dict["HOST"], connection.settings_dict["PORT"] = saved.get(
            connection.alias,
            (connection.settings_dict["HOST"], connection.settings_dict["PORT"]),
        )
        connection.close()
    proxy.cut()


@pytest.fixture
def proxied(losing_proxy: LosingProxy) -> Iterator[LosingProxy]:
    """The proxy, accepting again after the test (one that failed may have left it cut)."""
    yield losing_proxy
    losing_proxy.armed.clear()
    if losing_proxy._listener is None:
        losing_proxy.restore()


def _messages(run: JobRun) -> list[str]:
    return list(
        JobLog.objects.filter(run_id=run.pk)
        .order_by("id")
        .values_list("message", flat=True)
    )


def _back_after_first_failure(
    monkeypatch: pytest.MonkeyPatch, proxied: LosingProxy
) -> list[str]:
    """The proxy accepting again as soon as a write failed once (while_database_away()
    drops the connection, then tries again): an outage of exactly one try."""
    failures: list[str] = []
    original = tracking._reset_connection

    def reset_then_restore(alias: str, error: BaseException | None = None) -> None:
        original(alias, error)
        if not failures:
            failures.append(alias)
            proxied.restore()

    monkeypatch.setattr(tracking, "_reset_connection", reset_then_restore)
    return failures


def test_a_flush_whose_commit_answer_was_lost_writes_its_lines_once(
    proxied: LosingProxy,
) -> None:
    """The throttled write commits its lines and progress, and the connection drops
    before the COMMIT's answer reaches the job: the lines it puts back are found written
    at the next write, and are not written twice."""
    with track("dbaway.flush", interval=3600) as job:
        job.info("copied batch 1")
        job.progress(1, total=10)
        proxied.lose_next_commit_answer()
        job.flush()  # commits, but hears an error
        assert proxied.lost.is_set()
        job.progress(2)
        job.flush()  # the database answers again
    assert JobRun.objects.get(pk=job.run.pk).status == Status.SUCCEEDED
    assert _messages(job.run) == ["copied batch 1"]


def test_a_handle_whose_flush_lost_its_commit_answer_hands_nothing_over(
    proxied: LosingProxy,
) -> None:
    """What a handle hands to another process (``unwritten()``: an RQ work horse to its
    worker) is written there as new lines: after a write whose COMMIT answer was lost,
    its lines may be in the database already, and only this handle can tell (their ids).
    It handed them over, and the taker wrote them a second time."""
    with track("dbaway.handover", interval=3600) as job:
        job.info("copied batch 1")
        proxied.lose_next_commit_answer()
        job.flush()  # commits, but hears an error
        assert proxied.lost.is_set()
        handover = job.unwritten()
        taker = tracking.JobHandle(JobRun.objects.get(pk=job.run.pk))
        if handover is not None:
            taker.take(handover)
        taker.flush()
    assert _messages(job.run) == ["copied batch 1"]


def test_a_run_killed_by_force_keeps_its_job_s_last_lines_after_an_outage(
    proxied: LosingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed by force, whose job logs what it cleaned up and ends killed while the
    database is away for the end's first try: the second try is refused (the run ended
    elsewhere), and is not taken for the first having committed (the same outcome, but
    not its ``finished_at``): the job's last lines are written."""
    failures = _back_after_first_failure(monkeypatch, proxied)
    with track("dbaway.killed", interval=3600) as job:
        JobRun.objects.get(pk=job.run.pk).mark_killed()  # the admin's forced kill
        try:
            job._due = 0.0
            job.advance()  # the refused write: JobKilled
        except JobKilled:
            job.warning("released the lock on table orders")
            connections["default"].close()
            proxied.cut()  # the database goes away as the job ends
            raise
    assert failures  # the end's first try met the outage
    assert JobRun.objects.get(pk=job.run.pk).status == Status.KILLED
    assert _messages(job.run) == ["released the lock on table orders"]


def test_a_run_killed_by_force_is_announced_once_after_an_outage(
    proxied: LosingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same forced kill: job_status_changed is sent once for it, by the kill; the
    job's end, refused after a try the outage failed, does not announce it again."""
    failures = _back_after_first_failure(monkeypatch, proxied)
    ends: list[tuple[str, str]] = []

    def receiver(
        sender: Any, run: JobRun, previous: str, status: str, **kwargs: Any
    ) -> None:
        if status in Status.TERMINAL:
            ends.append((previous, status))

    job_status_changed.connect(receiver, dispatch_uid="test_database_away.announce")
    try:
        with track("dbaway.announced", interval=3600) as job:
            JobRun.objects.get(pk=job.run.pk).mark_killed()
            try:
                job._due = 0.0
                job.advance()
            except JobKilled:
                connections["default"].close()
                proxied.cut()
                raise
    finally:
        job_status_changed.disconnect(dispatch_uid="test_database_away.announce")
    assert failures
    assert JobRun.objects.get(pk=job.run.pk).status == Status.KILLED
    assert ends == [(Status.RUNNING, Status.KILLED)]


def test_a_retry_recorded_after_an_outage_keeps_the_attempt_s_lines(
    proxied: LosingProxy,
    monkeypatch: pytest.MonkeyPatch,
    make_run: Callable[..., JobRun],
) -> None:
    """A Celery or RQ task logs why its attempt failed, then asks for a retry
    (``Execution.retrying()``) while the database is away: the flush before it fails,
    and the lines it put back (with ``has_errors``) are written with the retry, which is
    tried again until the database answers."""
    queued = make_run(
        status=Status.QUEUED, source="celery", backend_job_id="away-retry-1"
    )
    task = Execution(
        queued.source, queued.backend_job_id, queued.job_name, worker="w:1"
    )
    handle = task.start()
    assert handle.run.pk == queued.pk
    handle._interval = 3600.0  # the lines wait for the next write, as between writes
    handle.error("the payment gateway answered 503")
    failures = _back_after_first_failure(monkeypatch, proxied)
    connections["default"].close()
    proxied.cut()
    task.retrying(RuntimeError("503"))
    task.close()
    assert failures  # the outage was met
    run = JobRun.objects.get(pk=queued.pk)
    assert run.status == Status.RETRYING
    assert _messages(run) == ["the payment gateway answered 503"]
    assert run.has_errors
