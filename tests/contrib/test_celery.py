"""The Celery integration, end to end: a real Redis broker and a real prefork worker."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from subprocess import Popen
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery import signals, states
from celery.exceptions import Retry, TimeLimitExceeded
from celery.worker import state as worker_state

from django_jobstatus import contrib, current_job, health
from django_jobstatus.contrib import celery as jobstatus_celery
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.models import JobRun, Status
from tests.contrib.celery_app import (
    BROKER_URL,
    add,
    app,
    charge,
    crash,
    fail,
    flaky,
    handed_over,
    ignores,
    lost_then_ok,
    marked,
    rejects,
    rejects_once,
    rejects_once_late,
    replaced,
    report,
    silent,
    silent_once,
    sleepy,
    slow_once_late,
    unpicklable,
)
from tests.contrib.celery_replace import QUEUE as REPLACE_QUEUE
from tests.contrib.celery_replace import add as replace_add
from tests.contrib.celery_replace import app as replace_app
from tests.contrib.celery_replace import replaced_by_chain, replaced_by_group
from tests.contrib.celery_routes import EXCHANGE as FEEDS_EXCHANGE
from tests.contrib.celery_routes import QUEUE as FEEDS_QUEUE
from tests.contrib.celery_routes import ROUTING_KEY as FEED_ROUTING_KEY
from tests.contrib.celery_routes import app as routed_app
from tests.contrib.celery_routes import import_feed
from tests.contrib.dbproxy import Proxy
from tests.contrib.workers import celery_worker as started_celery_worker
from tests.contrib.workers import (
    db_proxy,
    kept_until_due,
    kill_from_admin,
    refreshed,
)
from tests.waiting import wait_for

__all__ = ["db_proxy"]  # a fixture

QUEUE = "jobstatus-tests"


@pytest.fixture(scope="module")
def celery_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Popen[bytes]]:
    with started_celery_worker(
        db_proxy,
        tmp_path_factory,
        pool="prefork",
        queue=QUEUE,
        prefix="jobstatus-tests",
    ) as process:
        yield process


def recorded(task_id: str) -> JobRun:
    run = jobstatus_celery.find_run(task_id)
    assert run is not None, f"no run recorded for task {task_id}"
    return run


def finished(run: JobRun, worker: Popen[bytes], timeout: float = 60) -> JobRun:
    log: Path = worker.log  # type: ignore[attr-defined]
    wait_for(
        lambda: refreshed(run).is_finished,
        timeout=timeout,
        what=f"run {run.pk} to finish",
        process=worker,
        log=log,
    )
    return run


# Without a worker: the switch, and eager execution.


def test_connect_and_disconnect_are_idempotent() -> None:
    before = len(signals.task_prerun.receivers)
    jobstatus_celery.connect()
    jobstatus_celery.connect()
    assert len(signals.task_prerun.receivers) == before + 1
    assert contrib.can_retry(JobRun(source="celery"))
    jobstatus_celery.disconnect()
    jobstatus_celery.disconnect()
    assert len(signals.task_prerun.receivers) == before
    assert not contrib.can_retry(JobRun(source="celery"))


def test_a_pool_process_that_ends_sends_or_drops_its_alerts_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A prefork pool process ends with ``os._exit()`` (no atexit, which would): the
    ``worker_process_shutdown`` Celery sends in it just before runs ``health.finish()``,
    so an alert its monitor checks queued is sent, or its stamp cleared (tests/health/test_exit.py)."""
    finished: list[float | None] = []
    monkeypatch.setattr(health, "finish", lambda wait=None: finished.append(wait) or 0)
    jobstatus_celery.connect()
    try:
        signals.worker_process_shutdown.send(
            sender="celery@tests", pid=os.getpid(), exitcode=0
        )
    finally:
        jobstatus_celery.disconnect()
    signals.worker_process_shutdown.send(
        sender="celery@tests", pid=os.getpid(), exitcode=0
    )
    assert finished == [None]


@pytest.mark.django_db
def test_nothing_is_recorded_until_connected() -> None:
    result = add.apply(args=(1, 2))
    assert result.get() == 3
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_eager_task_is_recorded_with_its_progress(celery_on: None) -> None:
    result = report.apply(args=(3,))
    run = recorded(result.id)
    assert run.status == Status.SUCCEEDED
    assert (run.progress_current, run.progress_total, run.step) == (3, 3, "counting")
    assert run.result == {"counted": 3}
    assert list(run.logs.values_list("message", flat=True)) == ["counted 3 items"]


@pytest.mark.django_db(transaction=True)
def test_a_secret_beside_a_value_json_cannot_hold_is_still_masked(
    celery_on: None, settings: Any
) -> None:
    """``charge.delay(card={"token": …, "amount": Decimal("9.99")})``: the whole argument
    was stored as one ``repr()`` string, as was a result holding a datetime, and
    REDACT_KEYS (which masks keys) showed the token in clear on every surface. Only the
    values JSON cannot hold are ``repr()`` now, and the keys stay keys. A retry sent the
    ``repr()`` text as the argument (the job got a str): it is refused."""
    from decimal import Decimal

    from django_jobstatus.redaction import MASK, redact

    settings.JOBSTATUS = {"REDACT_KEYS": ["token"]}
    card = {"token": "tok_live_s3cret", "amount": Decimal("9.99")}
    run = recorded(charge.apply(kwargs={"card": card}).id)
    assert run.params == {
        "args": [],
        "kwargs": {"card": {"token": "tok_live_s3cret", "amount": "Decimal('9.99')"}},
        "repr": True,
    }
    assert redact(run.params)["kwargs"]["card"]["token"] == MASK
    assert run.result == {
        "token": "tok_live_s3cret",
        "expires": "datetime.datetime(2030, 1, 1, 0, 0)",
    }
    assert "tok_live" not in str(redact(run.result))
    # Retried, the job would get a str for its Decimal: refused, as for params cut.
    with pytest.raises(ValueError, match=r"kept as text \(their repr\(\)\)"):
        contrib.retry(run)
    assert JobRun.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_eager_task_that_rejects_its_message_fails(celery_on: None) -> None:
    """apply() has no worker's main process to report a Reject: the run stayed running."""
    result = rejects.apply()
    assert result.state == states.REJECTED
    run = recorded(result.id)
    assert run.status == Status.FAILED
    assert run.error.startswith("Reject: ")


@pytest.mark.django_db(transaction=True)
def test_an_eager_task_that_raises_ignore_is_killed_not_succeeded(
    celery_on: None,
) -> None:
    """Ignore tells Celery to record no outcome: the run ends without claiming one."""
    result = ignores.apply()
    assert result.state == states.IGNORED
    run = recorded(result.id)
    assert (run.status, run.result, run.error) == (Status.KILLED, None, "")
    assert "Ignore" in run.message


@pytest.mark.django_db(transaction=True)
def test_an_eager_replaced_task_s_run_ends_with_its_replacement_s_outcome(
    celery_on: None,
) -> None:
    """Run by apply(), replace() runs the replacement inside the task, with its id."""
    result = replaced.apply(args=("tests.add", 2, 3))
    assert result.get() == 5
    run = recorded(result.id)
    assert (run.job_name, run.status, run.result) == (
        "tests.replaced",
        Status.SUCCEEDED,
        5,
    )
    assert list(JobRun.objects.filter(backend_job_id=result.id)) == [run]
    assert current_job() is None  # the replaced task's handle went with it


@pytest.mark.django_db(transaction=True)
def test_a_receiver_error_never_reaches_the_task(
    celery_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("tracking is broken")

    monkeypatch.setattr(Execution, "start", broken)
    assert add.apply(args=(1, 2)).get() == 3


@pytest.mark.django_db(transaction=True)
def test_a_late_task_retry_keeps_the_attempt_s_error(celery_on: None) -> None:
    """Celery publishes a retry before it sends ``task_retry`` in the failing attempt, so
    another worker can start attempt 2 in between: attempt 1's retry then goes into its
    entry in ``attempts`` (it was dropped, leaving ``restarted`` with no error). Attempt 1
    runs here through the receivers, attempt 2 as the other worker's receiver runs it."""
    task_id = str(uuid.uuid4())
    flaky.push_request(id=task_id, retries=0, hostname="w1@h", is_eager=True)
    try:
        signals.task_prerun.send(
            sender=flaky, task_id=task_id, task=flaky, args=(2,), kwargs={}
        )
        other = Execution("celery", task_id, flaky.name, worker="w2@h:2", attempt=2)
        other.start()
        signals.task_retry.send(
            sender=flaky,
            request=flaky.request,
            reason=RuntimeError("attempt 1 failed"),
            einfo=None,
        )
        other.end(result=2)
        other.close()
        signals.task_postrun.send(
            sender=flaky,
            task_id=task_id,
            task=flaky,
            args=(2,),
            kwargs={},
            retval=None,
            state=states.RETRY,
        )
    finally:
        flaky.pop_request()
    run = recorded(task_id)
    assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, 2)
    assert [
        (entry["attempt"], entry["status"], entry["worker"], entry["error"])
        for entry in run.attempts
    ] == [(1, Status.RETRYING, f"w1@h:{os.getpid()}", "RuntimeError: attempt 1 failed")]


def handed_over_run(first: str, then: str) -> JobRun:
    """A run whose attempt 1, on the pool process ``first``, was restarted as attempt 2 on
    ``then``, which runs it and beats (its message was delivered again, e.g. an
    ``acks_late`` task's after the broker's visibility timeout)."""
    run = JobRun.objects.enqueue(
        add.name, source=jobstatus_celery.SOURCE, backend_job_id=str(uuid.uuid4())
    )
    run.mark_running(worker=first)
    run.mark_running(worker=then)
    run.heartbeat()
    return refreshed(run)


def failure_reported(task_id: str, exception: BaseException) -> None:
    """Send ``task_failure`` as a worker's main process does (without the task's request
    on its stack: Celery pushes it for a lost pool process, not for a hard time limit)."""
    signals.task_failure.send(
        sender=add,
        task_id=task_id,
        exception=exception,
        args=(),
        kwargs={},
        traceback=None,
        einfo=None,
    )


def left_running_line(run: JobRun) -> str:
    line = run.logs.get()
    assert line.level == 30
    return line.message


@pytest.mark.django_db(transaction=True)
def test_a_lost_pool_process_leaves_another_worker_s_live_attempt_running(
    celery_on: None,
) -> None:
    """The main process of worker A reports its pool process dead (WorkerLostError) for a
    task whose message worker B took meanwhile: it marked B's attempt, alive and beating,
    ``lost``, and B's real end was then refused."""
    run = handed_over_run("celery@a:101", "celery@b:202")
    lost = WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 0.")
    add.push_request(id=run.backend_job_id, hostname="celery@a")
    try:
        failure_reported(run.backend_job_id, lost)
    finally:
        add.pop_request()
    run = refreshed(run)
    assert (run.status, run.attempt, run.error) == (Status.RUNNING, 2, "")
    assert left_running_line(run) == (
        "Celery worker celery@a reported that an attempt of this task ended "
        "(WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL) Job: 0.), "
        "but the run's current attempt runs on celery@b:202: the run goes on."
    )


@pytest.mark.django_db(transaction=True)
def test_a_hard_time_limit_leaves_another_worker_s_live_attempt_running(
    celery_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard time limit's ``task_failure`` comes without the task's request: the main
    process knows its worker's name from ``worker_init`` (its receiver is called here:
    the signal would reach Celery's Django fixup too). It failed the run, which was
    worker B's live attempt by then."""
    monkeypatch.setattr(jobstatus_celery, "_node", None)
    jobstatus_celery._worker_starts(sender=SimpleNamespace(hostname="celery@a"))
    run = handed_over_run("celery@a:101", "celery@b:202")
    failure_reported(run.backend_job_id, TimeLimitExceeded(300.0))
    run = refreshed(run)
    assert (run.status, run.attempt, run.error) == (Status.RUNNING, 2, "")
    assert "Celery worker celery@a reported" in left_running_line(run)
    # Its own attempt's time limit still fails the run.
    run.mark_running(worker="celery@a:303")
    failure_reported(run.backend_job_id, TimeLimitExceeded(300.0))
    run = refreshed(run)
    assert (run.status, run.attempt) == (Status.FAILED, 3)
    assert run.error.startswith("TimeLimitExceeded: ")


@pytest.mark.django_db(transaction=True)
def test_a_lost_pool_process_leaves_its_worker_s_other_live_attempt_running(
    celery_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message was delivered again to the same worker, whose other pool process runs
    the task now: the report of the first one's death is not about that attempt. Once no
    pool process of the worker runs it, the loss is its current attempt's."""
    run = handed_over_run("celery@a:101", "celery@a:202")
    running = SimpleNamespace(id=run.backend_job_id, worker_pid=202)
    monkeypatch.setattr(worker_state, "active_requests", [running])
    lost = WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 0.")
    add.push_request(id=run.backend_job_id, hostname="celery@a")
    try:
        failure_reported(run.backend_job_id, lost)
        assert refreshed(run).status == Status.RUNNING
        monkeypatch.setattr(worker_state, "active_requests", [])
        failure_reported(run.backend_job_id, lost)
    finally:
        add.pop_request()
    run = refreshed(run)
    assert (run.status, run.attempt) == (Status.LOST, 2)


@pytest.mark.django_db(transaction=True)
def test_a_pool_process_lost_and_sent_again_leaves_another_worker_s_attempt_running(
    celery_on: None,
) -> None:
    """``retry_on_worker_lost``: the main process of worker A sends ``task_retry`` for
    the attempt its dead pool process ran, with the request's ``retries``. When worker B
    runs the run's attempt of that number (its message delivered there too), that
    attempt is alive: it was ended ``retrying``."""
    run = handed_over_run("celery@a:101", "celery@b:202")
    request = SimpleNamespace(id=run.backend_job_id, retries=1, hostname="celery@a")
    lost = WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 0.")
    signals.task_retry.send(
        sender=add, request=request, reason=Retry(exc=lost, when=1), einfo=None
    )
    run = refreshed(run)
    assert (run.status, run.attempt) == (Status.RUNNING, 2)
    assert "(WorkerLostError: Worker exited prematurely" in left_running_line(run)


@pytest.mark.django_db
def test_a_task_revoked_before_any_run_of_it_was_recorded_is_recorded_killed(
    celery_on: None,
) -> None:
    """A message the worker revokes (expired, or revoked before it ran) whose publish no
    integration saw (another service, ``celery call``): its run was to be recorded then,
    but the task's name was read from ``request.name``, which Celery's request context
    does not have (it is ``request.task``), so nothing was recorded."""
    from celery.app.task import Context

    task_id = str(uuid.uuid4())
    # What the worker sends (celery.worker.request.Request._announce_revoked).
    request = Context({"id": task_id, "task": add.name, "args": [1, 2], "kwargs": {}})
    signals.task_revoked.send(
        sender=add, request=request, terminated=False, signum=None, expired=True
    )
    run = jobstatus_celery.find_run(task_id)
    assert run is not None, "no run recorded for the revoked task"
    assert (run.job_name, run.status, run.message) == (
        add.name,
        Status.KILLED,
        "Expired before it ran.",
    )


def revoke_discarded(run: JobRun, hostname: str) -> None:
    """Send ``task_revoked`` as the main process of worker ``hostname`` does for a copy of
    the task's message it finds expired and discards, unrun
    (celery.worker.request.Request.revoked, _announce_revoked)."""
    from celery.app.task import Context

    request = Context(
        {
            "id": run.backend_job_id,
            "task": add.name,
            "args": [1, 2],
            "kwargs": {},
            "hostname": hostname,
        }
    )
    signals.task_revoked.send(
        sender=add, request=request, terminated=False, signum=None, expired=True
    )


@pytest.mark.django_db(transaction=True)
def test_an_expired_copy_of_a_message_leaves_another_worker_s_live_attempt_running(
    celery_on: None,
) -> None:
    """An ``acks_late`` task sent with ``expires`` runs on worker B longer than the
    broker's visibility timeout: its message is delivered again, to worker A, whose main
    process finds it expired and discards it, sending ``task_revoked(expired=True)``.
    That copy never ran; B's attempt is alive and beating. It was ended ``killed``
    ("Expired before it ran."), and B's real end was then refused."""
    run = JobRun.objects.enqueue(
        add.name, source=jobstatus_celery.SOURCE, backend_job_id=str(uuid.uuid4())
    )
    run.mark_running(worker="celery@b:202")
    run.heartbeat()
    revoke_discarded(run, "celery@a")
    run = refreshed(run)
    assert (run.status, run.attempt) == (Status.RUNNING, 1), (
        f"the live attempt on celery@b:202 was ended {run.status}: {run.message!r}"
    )
    assert left_running_line(run) == (
        "Celery worker celery@a reported that an attempt of this task ended "
        "(Expired before it ran.), but the run's current attempt runs on "
        "celery@b:202: the run goes on."
    )


@pytest.mark.django_db(transaction=True)
def test_an_expired_copy_of_a_message_kills_the_run_only_when_its_attempt_is_dead(
    celery_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy comes to the worker whose pool process 202 runs the task: that attempt
    goes on. When no pool process of the worker runs it any more (the worker restarted
    since, the run's attempt died with it), the task never runs again: the run is
    killed."""
    run = JobRun.objects.enqueue(
        add.name, source=jobstatus_celery.SOURCE, backend_job_id=str(uuid.uuid4())
    )
    run.mark_running(worker="celery@a:202")
    running = SimpleNamespace(id=run.backend_job_id, worker_pid=202)
    monkeypatch.setattr(worker_state, "active_requests", [running])
    revoke_discarded(run, "celery@a")
    assert refreshed(run).status == Status.RUNNING
    monkeypatch.setattr(worker_state, "active_requests", [])
    revoke_discarded(run, "celery@a")
    run = refreshed(run)
    assert (run.status, run.message) == (Status.KILLED, "Expired before it ran.")


@pytest.mark.django_db
def test_a_retry_to_an_exchange_the_app_does_not_route_to_is_refused(
    celery_on: None,
) -> None:
    """A run sent to an exchange none of the app's queues is bound to: nothing says where
    its routing key leads, so the retry is refused, with no run and no message left."""
    run = JobRun.objects.create(
        job_name="tests.add",
        source="celery",
        backend_job_id=str(uuid.uuid4()),
        status=Status.SUCCEEDED,
        queue="reports.daily",
        params={"args": [1, 2], "kwargs": {}, "exchange": "reports"},
    )
    with pytest.raises(ValueError, match="exchange 'reports'"):
        contrib.retry(run)
    assert list(JobRun.objects.all()) == [run]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_task_sent_with_a_countdown_is_recorded_due_then(celery_on: None) -> None:
    """An ETA or countdown: the queued timeout counted the wait from the publish, and
    ended (and revoked) a task due later as if its message had been lost."""
    from datetime import timedelta

    queue = f"jobstatus-tests-due-{uuid.uuid4().hex}"  # no worker takes it
    try:
        result = add.apply_async(args=(1, 2), countdown=3600, queue=queue)
        kept_until_due(recorded(result.id), timedelta(hours=1))
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_worker_that_takes_a_task_after_the_reaper_ended_it_stops_it_and_says_so(
    celery_on: None, db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """QUEUED_TIMEOUT ended the run killed and revoked the task while no worker of its
    queue was up; a worker started later (which never heard the revoke) takes it. The run
    stays killed, the task stops at its first progress call, and a line says a worker took
    it: the record never says killed over a task that ran to its end unsaid."""
    queue = f"jobstatus-tests-late-{uuid.uuid4().hex}"
    try:
        result = report.apply_async(args=(5,), queue=queue)
        run = recorded(result.id)
        JobRun.objects.filter(pk=run.pk).update(
            queued_at=run.created_at - timedelta(hours=2)
        )
        assert JobRun.objects.reap(300, queued_timeout=600).expired == 1
        with started_celery_worker(
            db_proxy,
            tmp_path_factory,
            pool="prefork",
            queue=queue,
            prefix="jobstatus-late",
            purge=False,
        ) as worker:
            line = wait_for(
                lambda: run.logs.filter(
                    message__contains="took this task after its run had ended killed"
                ).first(),
                timeout=60,
                what="the worker's line on the killed run",
                process=worker,
                log=worker.log,  # type: ignore[attr-defined]
            )
            log: Path = worker.log  # type: ignore[attr-defined]
            ended = wait_for(
                lambda: [
                    text
                    for text in log.read_text().splitlines()
                    if f"[{result.id}]" in text
                    and ("succeeded" in text or "raised" in text)
                ],
                timeout=60,
                what="the task to end",
                process=worker,
                log=log,
            )
        assert line.level == 30
        assert "succeeded" not in ended[0] and "JobKilled" in ended[0], ended
        run = refreshed(run)
        assert (run.status, run.progress_current, run.result) == (
            Status.KILLED,
            0,
            None,
        )
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)


def in_broker(task_id: str, queue: str) -> bool:
    """Whether the broker holds a message of ``task_id``: waiting in ``queue``, or delivered
    and not acknowledged."""
    broker = redis.Redis.from_url(BROKER_URL)
    messages = [*broker.lrange(queue, 0, -1), *broker.hvals("unacked")]
    return any(task_id.encode() in message for message in messages)


def cold_shutdown(started: Any, worker: Popen[bytes]) -> None:
    """Wait for ``started()``, then stop ``worker`` with SIGQUIT (an operator's Ctrl+C
    twice): Celery's cold shutdown cancels the tasks it runs."""
    wait_for(
        started,
        timeout=60,
        what="the task to start",
        process=worker,
        log=worker.log,  # type: ignore[attr-defined]
    )
    os.kill(worker.pid, signal.SIGQUIT)
    worker.wait(timeout=60)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_task_a_cold_shutdown_cancelled_is_lost_not_retrying(
    celery_on: None, db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A worker stopped with SIGQUIT (or Ctrl+C twice) cancels the task it runs and sends
    ``task_retry`` for it, but the task, acknowledged when it started, is never sent
    again. The run said ``retrying`` (attempt 2, no error) for ever, a retry nobody would
    run."""
    queue = f"jobstatus-tests-cold-{uuid.uuid4().hex}"
    try:
        with started_celery_worker(
            db_proxy,
            tmp_path_factory,
            pool="prefork",
            queue=queue,
            prefix="jobstatus-cold",
            purge=False,
        ) as worker:
            run = recorded(silent.apply_async(args=(60,), queue=queue).id)
            cold_shutdown(lambda: refreshed(run).status == Status.RUNNING, worker)
        assert not in_broker(run.backend_job_id, queue)
        run = refreshed(run)
        assert (run.status, run.attempt, run.attempts) == (Status.LOST, 1, [])
        assert run.message == (
            "Lost: the worker's cold shutdown cancelled it, and Celery does not run it again."
        )
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_an_acks_late_task_a_cold_shutdown_cancelled_runs_again(
    celery_on: None, db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An ``acks_late`` task's message is not acknowledged yet when a cold shutdown
    cancels it: Celery sends no ``task_retry``, the next worker runs it again, and the run
    ends with that run's outcome."""
    queue = f"jobstatus-tests-cold-{uuid.uuid4().hex}"
    key = f"jobstatus-tests:{uuid.uuid4()}"
    broker = redis.Redis.from_url(BROKER_URL)
    try:
        with started_celery_worker(
            db_proxy,
            tmp_path_factory,
            pool="prefork",
            queue=queue,
            prefix="jobstatus-cold",
            purge=False,
        ) as worker:
            run = recorded(silent_once.apply_async(args=(key,), queue=queue).id)
            cold_shutdown(lambda: broker.exists(key), worker)
        assert in_broker(run.backend_job_id, queue)
        assert refreshed(run).status == Status.RUNNING
        with started_celery_worker(
            db_proxy,
            tmp_path_factory,
            pool="prefork",
            queue=queue,
            prefix="jobstatus-warm",
            purge=False,
        ) as worker:
            finished(run, worker)
        assert (run.status, run.result, run.attempt) == (Status.SUCCEEDED, key, 2)
        assert [entry["status"] for entry in run.attempts] == ["restarted"]
    finally:
        broker.delete(queue, key)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_lost_pool_process_leaves_the_attempt_another_worker_runs_running(
    celery_on: None, db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An ``acks_late`` task's message is delivered again while a pool process of worker
    A runs it, and worker B runs it as the run's attempt 2; then A's pool process dies.
    A's main process marked B's live attempt ``lost``, and B's success was refused."""
    queue = f"jobstatus-tests-handover-{uuid.uuid4().hex}"
    key = f"jobstatus-tests:{uuid.uuid4()}"
    broker = redis.Redis.from_url(BROKER_URL)
    try:
        with (
            started_celery_worker(
                db_proxy,
                tmp_path_factory,
                pool="prefork",
                queue=queue,
                prefix="jobstatus-first",
                purge=False,
            ) as first,
            started_celery_worker(
                db_proxy,
                tmp_path_factory,
                pool="prefork",
                queue=queue,
                prefix="jobstatus-second",
                purge=False,
            ),
        ):
            run = recorded(handed_over.apply_async(args=(key,), queue=queue).id)
            wait_for(
                lambda: (
                    refreshed(run).attempt == 2
                    and (run.status != Status.RUNNING or run.logs.exists())
                ),
                timeout=60,
                what="the dead pool process's worker to report it",
                process=first,
                log=first.log,  # type: ignore[attr-defined]
            )
            broker.set(f"{key}:release", "1", ex=600)
            finished(run, first)
    finally:
        broker.delete(queue, key, f"{key}:again", f"{key}:release")
    assert (run.status, run.result, run.attempt) == (Status.SUCCEEDED, key, 2)
    assert [entry["status"] for entry in run.attempts] == ["restarted"]
    assert "WorkerLostError" in left_running_line(run)


# With a real worker.


@pytest.mark.usefixtures("celery_on")
class TestWorker:
    pytestmark = [
        pytest.mark.postgres,
        pytest.mark.redis,
        pytest.mark.django_db(transaction=True),
    ]

    def test_a_succeeding_task(self, celery_worker: Popen[bytes]) -> None:
        result = add.delay(2, 3)
        run = recorded(result.id)
        assert run.job_name == "tests.add"
        assert run.queued_at is not None
        assert run.params == {"args": [2, 3], "kwargs": {}}
        assert run.queue == QUEUE
        finished(run, celery_worker)
        assert run.status == Status.SUCCEEDED
        assert run.result == 5
        host, pid = run.worker.rsplit(":", 1)
        assert host.startswith(f"jobstatus-tests-{os.getpid()}@")
        assert int(pid) != celery_worker.pid  # the pool process, not the main one
        assert run.queued_at <= run.started_at <= run.finished_at
        assert run.attempt == 1

    def test_a_failing_task(self, celery_worker: Popen[bytes]) -> None:
        run = finished(recorded(fail.delay("boom").id), celery_worker)
        assert run.status == Status.FAILED
        assert run.error == "ValueError: boom"
        assert "raise ValueError(text)" in run.traceback
        assert run.started_at is not None

    def test_progress_and_logs_through_current_job(
        self, celery_worker: Popen[bytes]
    ) -> None:
        run = finished(recorded(report.delay(5).id), celery_worker)
        assert run.status == Status.SUCCEEDED
        assert (run.progress_current, run.progress_total, run.progress) == (5, 5, 1.0)
        assert run.step == "counting"
        assert run.result == {"counted": 5}
        assert list(run.logs.values_list("message", flat=True)) == ["counted 5 items"]

    def test_a_retrying_task_keeps_its_attempts(
        self, celery_worker: Popen[bytes]
    ) -> None:
        run = finished(recorded(flaky.delay(3).id), celery_worker)
        assert run.status == Status.SUCCEEDED
        assert run.result == 3
        assert run.attempt == 3
        assert [entry["status"] for entry in run.attempts] == ["retrying", "retrying"]
        assert [entry["error"] for entry in run.attempts] == [
            "RuntimeError: attempt 1 failed",
            "RuntimeError: attempt 2 failed",
        ]
        assert JobRun.objects.filter(backend_job_id=run.backend_job_id).count() == 1

    def test_a_task_that_raises_ignore_is_killed_not_succeeded(
        self, celery_worker: Popen[bytes]
    ) -> None:
        run = finished(recorded(ignores.delay().id), celery_worker)
        assert (run.status, run.result, run.error) == (Status.KILLED, None, "")
        assert "Ignore" in run.message
        assert run.started_at is not None

    @pytest.mark.parametrize(
        ("task", "args", "status", "result", "error"),
        [
            ("tests.add", (2, 3), Status.SUCCEEDED, 5, ""),
            ("tests.fail", ("boom",), Status.FAILED, None, "ValueError: boom"),
        ],
        ids=["succeeding", "failing"],
    )
    def test_a_replaced_task_s_run_ends_with_its_replacement_s_outcome(
        self,
        celery_worker: Popen[bytes],
        task: str,
        args: tuple[Any, ...],
        status: str,
        result: Any,
        error: str,
    ) -> None:
        """``self.replace(sig)`` hands the task's id over to ``sig``: one run, two attempts."""
        task_id = replaced.delay(task, *args).id
        run = finished(recorded(task_id), celery_worker)
        assert (run.job_name, run.status, run.result, run.error) == (
            "tests.replaced",
            status,
            result,
            error,
        )
        assert run.attempt == 2
        assert [(entry["attempt"], entry["status"]) for entry in run.attempts] == [
            (1, Status.RETRYING)
        ]
        assert task in run.attempts[0]["error"]
        assert list(JobRun.objects.filter(backend_job_id=task_id)) == [run]

    def test_a_long_task_killed_from_the_admin(
        self, celery_worker: Popen[bytes], admin_client: Any
    ) -> None:
        run = recorded(sleepy.delay(120).id)
        wait_for(
            lambda: (
                refreshed(run).status == Status.RUNNING and run.message == "sleeping"
            ),
            timeout=60,
            what="the task to run",
        )
        kill_from_admin(admin_client, run)
        finished(run, celery_worker)
        assert run.status == Status.KILLED
        assert run.kill_requested_at is not None
        assert run.finished_at is not None
        # The worker replaced its pool process and goes on.
        assert finished(recorded(add.delay(1, 1).id), celery_worker).result == 2

    def test_a_queued_task_killed_from_the_admin_is_revoked(
        self, celery_worker: Popen[bytes], admin_client: Any
    ) -> None:
        blocker = recorded(sleepy.delay(2).id)
        waiting = recorded(add.delay(1, 2).id)
        kill_from_admin(admin_client, waiting)
        finished(waiting, celery_worker)
        assert waiting.status == Status.KILLED
        assert waiting.started_at is None
        assert finished(blocker, celery_worker).status == Status.SUCCEEDED

    def test_a_lost_pool_process_marks_the_run_lost(
        self, celery_worker: Popen[bytes]
    ) -> None:
        run = finished(recorded(crash.delay().id), celery_worker)
        assert run.status == Status.LOST
        assert run.error.startswith("WorkerLostError: ")
        # Reported at once by the worker's main process: no heartbeat was missed.
        assert run.message == "Lost: the worker process running it died."
        assert finished(recorded(add.delay(2, 2).id), celery_worker).result == 4

    def test_a_pool_process_lost_then_sent_again_by_celery_records_the_loss(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """``retry_on_worker_lost``: the main process sends the task again and sends
        ``task_retry``, which only a pool process's retry was recorded from. The run
        said ``running`` on a dead process until the next attempt, whose entry for the
        first then read *restarted*, with no error."""
        run = finished(recorded(lost_then_ok.delay().id), celery_worker)
        assert (run.status, run.attempt, run.result) == (Status.SUCCEEDED, 2, 2)
        first = run.attempts[0]
        assert first["status"] == Status.RETRYING
        assert first["error"].startswith("WorkerLostError: ")

    def test_a_task_its_hard_time_limit_put_back_in_the_queue_stays_one_run(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """``acks_late=True, acks_on_timeout=False``: a hard time limit puts the message
        back in the queue (Celery's ``Request.on_timeout``, after its ``task_failure``),
        and the worker runs the task again, with the same id. The run said ``failed``
        (TimeLimitExceeded) for ever, and the next delivery made a second run of the task
        id, which succeeded."""
        key = f"jobstatus-tests:{uuid.uuid4()}"
        try:
            run = finished(recorded(slow_once_late.delay(key).id), celery_worker)
        finally:
            redis.Redis.from_url(BROKER_URL).delete(key)
        assert list(JobRun.objects.filter(backend_job_id=run.backend_job_id)) == [run]
        assert (run.status, run.result, run.error) == (Status.SUCCEEDED, key, "")
        assert [(entry["status"], entry["error"]) for entry in run.attempts] == [
            (Status.RETRYING, "TimeLimitExceeded: TimeLimitExceeded(1,)")
        ]

    def test_a_task_that_rejects_with_requeue_but_was_acknowledged_fails(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """``raise Reject(..., requeue=True)`` in a task without ``acks_late``: its
        message was acknowledged when it started, so nothing goes back to the queue and
        Celery never runs it again. The run said ``running`` on a worker that runs
        nothing, for ever (until the reaper called it lost)."""
        key = f"jobstatus-tests:{uuid.uuid4()}"
        try:
            run = finished(recorded(rejects_once.delay(key).id), celery_worker)
            # The worker has done with it: a task sent after it has run to its end.
            assert finished(recorded(add.delay(1, 2).id), celery_worker).result == 3
        finally:
            redis.Redis.from_url(BROKER_URL).delete(key)
        assert not in_broker(run.backend_job_id, QUEUE)  # Celery will not run it again
        assert list(JobRun.objects.filter(backend_job_id=run.backend_job_id)) == [
            refreshed(run)
        ]
        assert (run.status, run.attempts) == (Status.FAILED, [])
        assert run.error.startswith("Reject: ")

    def test_an_acks_late_task_that_rejects_with_requeue_stays_one_run(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """``raise Reject(..., requeue=True)`` in an ``acks_late`` task puts its message
        back: the run waits (retrying), and the next delivery goes on with it."""
        key = f"jobstatus-tests:{uuid.uuid4()}"
        try:
            run = finished(recorded(rejects_once_late.delay(key).id), celery_worker)
        finally:
            redis.Redis.from_url(BROKER_URL).delete(key)
        assert list(JobRun.objects.filter(backend_job_id=run.backend_job_id)) == [run]
        assert (run.status, run.result) == (Status.SUCCEEDED, key)
        assert [entry["status"] for entry in run.attempts] == [Status.RETRYING]
        assert run.attempts[0]["error"].startswith("Reject: ")

    def test_an_exception_celery_cannot_pickle_is_recorded_under_its_own_class(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """Celery hands ``task_failure`` its pickling wrapper: the run said
        ``UnpickleableExceptionWrapper``, a class the task never raised."""
        run = finished(recorded(unpicklable.delay().id), celery_worker)
        assert run.status == Status.FAILED
        assert run.error == "UnpicklableError: has a lock"

    def test_arguments_hidden_with_argsrepr_are_kept_as_that_text(
        self, celery_worker: Popen[bytes]
    ) -> None:
        """Celery's way to keep a secret out of its logs and monitors (``argsrepr``,
        ``kwargsrepr``) was ignored: the run's params showed the secret."""
        result = add.apply_async(
            args=(2, 3), kwargs={}, argsrepr="(2, '<hidden>')", kwargsrepr="{}"
        )
        run = finished(recorded(result.id), celery_worker)
        assert run.params == {"args": "(2, '<hidden>')", "kwargs": {}, "repr": True}
        assert run.result == 5
        with pytest.raises(ValueError, match="kept as text"):
            contrib.retry(run)
        # Started by a worker with no queued run to find (recorded there, not at the publish).
        JobRun.objects.all().delete()
        jobstatus_celery.disconnect()
        try:
            result = add.apply_async(args=(4, 5), argsrepr="(4, '<hidden>')")
        finally:
            jobstatus_celery.connect(app)
        wait_for(
            lambda: jobstatus_celery.find_run(result.id) is not None,
            timeout=60,
            what="the worker to record the run",
            process=celery_worker,
        )
        run = finished(recorded(result.id), celery_worker)
        assert run.params == {"args": "(4, '<hidden>')", "kwargs": {}, "repr": True}

    def test_an_unknown_task_fails(self, celery_worker: Popen[bytes]) -> None:
        run = finished(
            recorded(app.send_task("tests.no_such_task", args=[1]).id), celery_worker
        )
        assert run.status == Status.FAILED
        assert "tests.no_such_task" in run.error

    def test_retry_sends_the_task_again_as_a_new_run(
        self, celery_worker: Popen[bytes]
    ) -> None:
        first = finished(recorded(add.delay(20, 22).id), celery_worker)
        second = contrib.retry(first)
        assert second.pk != first.pk
        assert second.backend_job_id != first.backend_job_id
        assert (second.job_name, second.params, second.queue) == (
            first.job_name,
            first.params,
            first.queue,
        )
        assert finished(second, celery_worker).result == 42

    def test_the_task_runs_while_the_database_is_away(
        self, celery_worker: Popen[bytes], db_proxy: Proxy
    ) -> None:
        key = f"jobstatus-tests:{uuid.uuid4()}"
        broker = redis.Redis.from_url(BROKER_URL)
        # The worker's main process records unknown tasks: give it a connection to lose.
        before = finished(
            recorded(app.send_task("tests.no_such_task").id), celery_worker
        )
        assert before.status == Status.FAILED
        db_proxy.cut()
        try:
            run = recorded(
                marked.delay(key).id
            )  # this process reaches the database directly
            wait_for(
                lambda: broker.exists(key),
                timeout=60,
                what="the task to run without its database",
            )
            run.refresh_from_db()
            assert (
                run.status == Status.QUEUED
            )  # the worker could not record anything yet
        finally:
            db_proxy.restore()
        finished(run, celery_worker)
        assert run.status == Status.SUCCEEDED
        assert run.result == key
        assert run.worker
        # The main process replaces the connection the outage dropped.
        after = finished(
            recorded(app.send_task("tests.no_such_task").id), celery_worker
        )
        assert after.status == Status.FAILED


# Celery's "Routing Tasks": a topic exchange, where the routing key names no queue.


@pytest.fixture(scope="module")
def routed_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Popen[bytes]]:
    """A prefork worker on tests/contrib/celery_routes.py, consuming its queue."""
    with started_celery_worker(
        db_proxy,
        tmp_path_factory,
        pool="prefork",
        queue=FEEDS_QUEUE,
        prefix="jobstatus-tests-feeds",
        app_module="tests.contrib.celery_routes",
    ) as process:
        yield process


@pytest.fixture
def routed_celery_on() -> Iterator[None]:
    """The Celery integration on, killing and retrying through the routed app."""
    jobstatus_celery.connect(routed_app)
    yield
    jobstatus_celery.disconnect()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_retry_reaches_the_queue_the_task_was_routed_to(
    routed_worker: Popen[bytes], routed_celery_on: None
) -> None:
    """A queue bound to a topic exchange with a routing key that is not its name: the
    retry took the routing key for a queue's name, and its message went to a new list
    that no worker reads, while the retry answered a new queued run."""
    first = finished(recorded(import_feed.delay(21).id), routed_worker)
    assert (first.status, first.result) == (Status.SUCCEEDED, 42)
    try:
        second = contrib.retry(first)
        # Recorded queued before the push; the worker may have taken it by the time
        # retry() reads it back.
        assert second.pk != first.pk and second.queued_at is not None
        second = finished(second, routed_worker, timeout=45)
        assert (second.status, second.result) == (Status.SUCCEEDED, 42)
    finally:
        # Where the retry went instead: a list named after the routing key.
        redis.Redis.from_url(BROKER_URL).delete(FEED_ROUTING_KEY)
    # The routing key is the queue (routing key) users know; the exchange goes with it.
    assert first.queue == second.queue == FEED_ROUTING_KEY
    assert first.params == second.params
    assert first.params == {"args": [21], "kwargs": {}, "exchange": FEEDS_EXCHANGE}


# self.replace() with a chain or a group: the replaced task's id goes to its last task.


@pytest.fixture(scope="module")
def replace_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Popen[bytes]]:
    """A prefork worker on tests/contrib/celery_replace.py (a result backend: a group
    that replaces a task is a chord), consuming its queue."""
    with started_celery_worker(
        db_proxy,
        tmp_path_factory,
        pool="prefork",
        queue=REPLACE_QUEUE,
        prefix="jobstatus-tests-replace",
        app_module="tests.contrib.celery_replace",
    ) as process:
        yield process


@pytest.fixture
def replace_celery_on() -> Iterator[None]:
    """The Celery integration on, killing and retrying through the replacing app."""
    jobstatus_celery.connect(replace_app)
    yield
    jobstatus_celery.disconnect()


def replaced_run_after_failure(
    task_id: str, text: str, worker: Popen[bytes], status: str = Status.FAILED
) -> JobRun:
    """The run of ``task_id`` once its replacement's task failed with ``text`` (or ended
    ``status``: stopped, with ``tests.replace.stop``), and the worker (one process, one
    message at a time) is done with what was sent before."""
    log: Path = worker.log  # type: ignore[attr-defined]
    if status == Status.FAILED:
        ended = {"job_name": "tests.replace.fail", "error": f"ValueError: {text}"}
    else:
        ended = {"job_name": "tests.replace.stop"}
    first = wait_for(
        lambda: JobRun.objects.filter(status=status, **ended).first(),
        timeout=60,
        what=f"the replacement's first task to end {status}",
        process=worker,
        log=log,
    )
    assert first.backend_job_id != task_id
    assert finished(recorded(replace_add.delay(0, 0).id), worker).result == 0
    return refreshed(recorded(task_id))


@pytest.mark.usefixtures("replace_celery_on")
class TestReplacedByACanvas:
    pytestmark = [
        pytest.mark.postgres,
        pytest.mark.redis,
        pytest.mark.django_db(transaction=True),
    ]

    def test_a_task_replaced_by_a_chain_that_succeeds_is_one_run(
        self, replace_worker: Popen[bytes]
    ) -> None:
        """The chain's last task takes the task's id, and ends the run."""
        task_id = replaced_by_chain.delay(None).id
        run = finished(recorded(task_id), replace_worker)
        assert (run.status, run.result, run.attempt) == (Status.SUCCEEDED, 7, 2)
        assert run.job_name == "tests.replace.by_chain"
        assert [entry["status"] for entry in run.attempts] == [Status.RETRYING]
        assert run.attempts[0]["error"].startswith(
            "Replaced by a chain of 2 tasks that starts with tests.replace.add "
        )

    def test_a_task_replaced_by_a_chain_whose_first_task_fails_ends_failed(
        self, replace_worker: Popen[bytes]
    ) -> None:
        """The chain's first task has an id of its own: when it fails, Celery never
        sends the last one, which has the task's id. The run said retrying for ever,
        "Replaced by tests.replace.fail (...): the run goes on as that task.", untrue."""
        text = f"first task failed {uuid.uuid4()}"
        task_id = replaced_by_chain.delay(text).id
        run = replaced_run_after_failure(task_id, text, replace_worker)
        assert run.status != Status.RETRYING, (
            f"the replaced task's run says {run.status!r}, {run.error!r}, for ever"
        )
        assert (run.status, run.error) == (Status.FAILED, f"ValueError: {text}")
        assert "raise ValueError(text)" in run.traceback
        assert "tests.replace.fail" in run.message
        assert run.attempts[0]["error"].startswith("Replaced by a chain of 2 tasks ")

    def test_a_task_replaced_by_a_chain_whose_first_task_stops_ends_killed(
        self, replace_worker: Popen[bytes]
    ) -> None:
        """The chain's first task stopped on a kill request, in an asyncio.TaskGroup: its
        JobKilled came back in an exception group, and the replaced task's run ended
        failed (its replacement's own run, killed)."""
        text = f"asked to stop {uuid.uuid4()}"
        task_id = replaced_by_chain.delay(text, "stop").id
        run = replaced_run_after_failure(task_id, text, replace_worker, Status.KILLED)
        assert run.status == Status.KILLED, (run.status, run.error)
        assert "tests.replace.stop" in run.message

    def test_a_task_replaced_by_a_group_is_one_run(
        self, replace_worker: Popen[bytes]
    ) -> None:
        """The chord callback that collects the group's results takes the task's id."""
        task_id = replaced_by_group.delay(None).id
        run = finished(recorded(task_id), replace_worker)
        assert (run.status, run.result, run.attempt) == (Status.SUCCEEDED, [3, 7], 2)
        assert run.attempts[0]["error"].startswith("Replaced by a group of 2 tasks, ")

    def test_a_task_replaced_by_a_group_whose_task_fails_ends_failed(
        self, replace_worker: Popen[bytes]
    ) -> None:
        """A task of the group fails: Celery never sends the chord's callback."""
        text = f"a group task failed {uuid.uuid4()}"
        task_id = replaced_by_group.delay(text).id
        run = replaced_run_after_failure(task_id, text, replace_worker)
        assert (run.status, run.error) == (Status.FAILED, f"ValueError: {text}")
