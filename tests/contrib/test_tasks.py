"""django_jobstatus.contrib.tasks: the ImmediateBackend in this process, and django-tasks-db's real db_worker."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.db import OperationalError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from django_jobstatus import contrib, writebehind
from django_jobstatus.contrib import tasks as integration
from django_jobstatus.models import JobRun, Status
from tests.conftest import CI
from tests.contrib.tasks_app import tasks
from tests.waiting import wait_for

FRAMEWORK = tasks.FRAMEWORK
IMMEDIATE = {
    "default": {
        "BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend",
        "QUEUES": [],
    }
}
DATABASE = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
ROOT = Path(__file__).resolve().parents[2]
SUCCESSFUL, FAILED = "SUCCESSFUL", "FAILED"


@pytest.fixture
def integration_on(settings: Any) -> Iterator[None]:
    settings.JOBSTATUS = {**settings.JOBSTATUS, "PROGRESS_INTERVAL": 0.05}
    integration.connect()
    yield
    integration.disconnect()


@pytest.fixture
def immediate(settings: Any, integration_on: None) -> None:
    settings.TASKS = IMMEDIATE


def run_of(result: Any) -> JobRun:
    """The task's run, once there is exactly one (a worker's twin is merged within moments)."""
    runs = JobRun.objects.filter(source="django_tasks", backend_job_id=str(result.id))
    wait_for(
        lambda: runs.count() == 1,
        timeout=30,
        what=f"one run of task {result.id}",
        interval=0.05,
    )
    return runs.get()


# Switching on and off.


def test_connect_and_disconnect_are_idempotent() -> None:
    # Every importable signals module: Django's and the backport's, when both are installed.
    signals = [
        getattr(module, name)
        for module in integration.SIGNAL_MODULES
        for name in ("task_enqueued", "task_started", "task_finished")
    ]
    integration.disconnect()
    before = [len(signal.receivers) for signal in signals]
    integration.connect()
    integration.connect()
    try:
        assert [len(signal.receivers) for signal in signals] == [n + 1 for n in before]
        assert contrib._backends["django_tasks"] is integration.backend
    finally:
        integration.disconnect()
        integration.disconnect()
    assert [len(signal.receivers) for signal in signals] == before
    assert "django_tasks" not in contrib._backends
    if settings_enable_it():
        integration.connect()


def settings_enable_it() -> bool:
    from django_jobstatus.conf import settings

    return "django_jobstatus.contrib.tasks" in settings.INTEGRATIONS


def test_nothing_is_recorded_when_disconnected(db: None, settings: Any) -> None:
    settings.TASKS = IMMEDIATE
    was_on = contrib.can_retry(
        JobRun(source="django_tasks")
    )  # the settings may enable it
    integration.disconnect()
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        if was_on:
            integration.connect()
    assert result.status == SUCCESSFUL
    assert not JobRun.objects.exists()


# ImmediateBackend: the task runs inside enqueue().


def test_immediate_success(db: None, immediate: None) -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == SUCCESSFUL
    run = run_of(result)
    assert run.status == Status.SUCCEEDED
    assert run.job_name == "tests.contrib.tasks_app.tasks.add"
    assert run.params == {"args": [2, 3], "kwargs": {}}
    assert run.result == 5
    assert (run.queue, run.priority, run.attempt) == ("default", 0, 1)
    assert run.queued_at <= run.started_at <= run.finished_at
    assert run.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert (run.error, run.traceback) == ("", "")


def test_immediate_async_task(db: None, immediate: None) -> None:
    result = tasks.async_add.enqueue(20, 22)
    assert result.status == SUCCESSFUL
    run = run_of(result)
    assert (run.status, run.result, run.job_name) == (
        Status.SUCCEEDED,
        42,
        "tests.contrib.tasks_app.tasks.async_add",
    )


def test_immediate_failure(db: None, immediate: None) -> None:
    result = tasks.fail.enqueue(message="it broke")
    assert result.status == FAILED
    run = run_of(result)
    assert run.status == Status.FAILED
    assert run.params == {"args": [], "kwargs": {"message": "it broke"}}
    assert run.error == "tests.contrib.tasks_app.tasks.TaskError: it broke"
    assert "raise TaskError(message)" in run.traceback
    assert run.finished_at is not None
    assert run.result is None


def test_immediate_progress_and_logs_through_current_job(
    db: None, immediate: None
) -> None:
    result = tasks.count.enqueue(25)
    assert result.status == SUCCESSFUL, result.errors
    run = run_of(result)
    assert run.status == Status.SUCCEEDED
    assert (run.progress_current, run.progress_total, run.progress) == (25, 25, 1.0)
    assert (run.step, run.message) == ("counting", "counted")
    assert list(run.logs.values_list("message", flat=True)) == ["counted to 25"]


def test_immediate_kill_ends_the_run_killed(db: None, immediate: None) -> None:
    result = tasks.kill_myself.enqueue()
    assert result.status == FAILED
    assert (
        result.errors[-1].exception_class_path
        == "django_jobstatus.exceptions.JobKilled"
    )
    run = run_of(result)
    assert run.status == Status.KILLED
    assert run.kill_requested_at is not None
    assert run.finished_at is not None
    assert run.error == ""


def test_immediate_async_task_reports_through_current_job(
    transactional_db: None, immediate: None
) -> None:
    """An ``async def`` task's progress, log line and heartbeat are written while it runs
    (Django refuses queries on its event loop's thread: the handle writes through a thread
    of its own), and a check for a kill that reads the database lets it go on."""
    result = tasks.async_report.enqueue(3)
    assert result.status == SUCCESSFUL, result.errors
    assert result.return_value == {
        "progress": [3, 3],
        "step": "counting",
        "logs": ["counted to 3"],
        "beaten": True,
    }
    run = run_of(result)
    assert (run.status, run.error) == (Status.SUCCEEDED, "")
    assert (run.progress_current, run.progress_total) == (3, 3)
    assert list(run.logs.values_list("message", flat=True)) == ["counted to 3"]


def test_immediate_async_task_in_the_test_s_transaction(
    db: None, immediate: None
) -> None:
    """Inside a TestCase the run is in the test's transaction, which the handle's thread
    cannot see: its writes are refused, the task goes on, and the end writes it all."""
    result = tasks.async_report.enqueue(3)
    assert result.status == SUCCESSFUL, result.errors
    run = run_of(result)
    assert (run.status, run.error) == (Status.SUCCEEDED, "")
    assert (run.progress_current, run.progress_total) == (3, 3)
    assert list(run.logs.values_list("message", flat=True)) == ["counted to 3"]


def test_immediate_async_task_kill_ends_the_run_killed(
    transactional_db: None, immediate: None
) -> None:
    result = tasks.async_kill_myself.enqueue()
    assert result.status == FAILED
    assert (
        result.errors[-1].exception_class_path
        == "django_jobstatus.exceptions.JobKilled"
    )
    run = run_of(result)
    assert (run.status, run.error) == (Status.KILLED, "")
    assert run.kill_requested_at is not None


def runs_of(task: Any) -> Any:
    return JobRun.objects.filter(source="django_tasks", job_name=task.module_path)


def test_immediate_keyboard_interrupt_ends_the_run_failed(
    db: None, immediate: None
) -> None:
    # The ImmediateBackend lets KeyboardInterrupt through, with no task_finished.
    from django_jobstatus import current_job
    from django_jobstatus.heartbeats import heartbeats

    with pytest.raises(KeyboardInterrupt):
        tasks.interrupt.enqueue()
    run = runs_of(tasks.interrupt).get()
    assert run.status == Status.FAILED
    assert run.error == "KeyboardInterrupt"
    assert "raise KeyboardInterrupt" in run.traceback
    assert run.started_at <= run.finished_at
    assert current_job() is None
    assert run.pk not in [handle.run.pk for handle in heartbeats.handles()]


def test_immediate_system_exit_ends_the_run_failed(db: None, immediate: None) -> None:
    # SystemExit is a failure the backend reports (task_finished), as track() records it.
    result = tasks.leave.enqueue()
    assert result.status == FAILED
    run = run_of(result)
    assert (run.status, run.error) == (Status.FAILED, "SystemExit: 3")
    assert "raise SystemExit(3)" in run.traceback


def test_immediate_interrupt_caught_by_the_enclosing_task(
    db: None, immediate: None
) -> None:
    result = tasks.survive_an_interrupt.enqueue()
    assert (result.status, result.return_value) == (SUCCESSFUL, "survived")
    outer = run_of(result)
    inner = runs_of(tasks.interrupt).get()
    assert (outer.status, outer.result) == (Status.SUCCEEDED, "survived")
    assert (inner.status, inner.error) == (Status.FAILED, "KeyboardInterrupt")


@pytest.mark.parametrize("first", ["theirs", "ours"])
def test_immediate_a_receiver_raising_after_a_success(
    db: None, immediate: None, first: str
) -> None:
    """Another receiver of task_finished raises: enqueue() raises it, and the task
    system's result says SUCCESSFUL; the run ends succeeded, before or after that receiver."""
    integration.disconnect()
    tasks.task_finished.disconnect(
        dispatch_uid="tests.contrib.tasks_app.refuse_success"
    )
    receivers = [
        lambda: tasks.task_finished.connect(
            tasks.refuse_success,
            weak=False,
            dispatch_uid="tests.contrib.tasks_app.refuse_success",
        ),
        integration.connect,
    ]
    for connect in receivers if first == "theirs" else receivers[::-1]:
        connect()
    with pytest.raises(RuntimeError, match="the other receiver refused"):
        tasks.refused_after_success.enqueue()
    run = runs_of(tasks.refused_after_success).get()
    assert (run.status, run.result, run.error) == (Status.SUCCEEDED, "done", "")
    from django_jobstatus import current_job

    assert current_job() is None


def test_current_job_is_reset_after_the_task(db: None, immediate: None) -> None:
    from django_jobstatus import current_job

    tasks.count.enqueue(3)
    tasks.fail.enqueue("x")
    assert current_job() is None


def test_a_finish_whose_start_was_seen_elsewhere_ends_that_run(
    db: None, settings: Any, integration_on: None
) -> None:
    settings.TASKS = {
        "default": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend", "QUEUES": []}
    }
    result = tasks.add.enqueue(1, 2)  # the DummyBackend only stores it: a queued run
    run = run_of(result)
    assert run.status == Status.QUEUED
    run.mark_running(worker="elsewhere:1")  # started by another process
    integration.on_finished(
        sender=None, task_result=dataclasses.replace(result, status=SUCCESSFUL)
    )
    run.refresh_from_db()
    assert (run.status, run.attempt, run.worker, run.attempts) == (
        Status.SUCCEEDED,
        1,
        "elsewhere:1",
        [],
    )


def test_a_task_to_run_later_is_recorded_due_then(
    db: None, settings: Any, integration_on: None
) -> None:
    """``run_after``: the queued timeout counted its wait from the enqueue, and ended a
    task scheduled for tomorrow as lost before it was due."""
    from datetime import timedelta

    from django.utils import timezone

    settings.TASKS = {
        "default": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend", "QUEUES": []}
    }
    later = timezone.now() + timedelta(hours=2)
    run = run_of(tasks.add.using(run_after=later).enqueue(1, 2))
    assert run.due_at == later
    JobRun.objects.filter(pk=run.pk).update(queued_at=later - timedelta(days=1))
    assert JobRun.objects.reap(300, queued_timeout=600).expired == 0
    assert JobRun.objects.get(pk=run.pk).status == Status.QUEUED


def test_a_finish_with_no_start_seen_records_both(
    db: None, settings: Any, integration_on: None
) -> None:
    settings.TASKS = {
        "default": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend", "QUEUES": []}
    }
    result = tasks.fail.enqueue("x")
    failed = dataclasses.replace(result, status=FAILED, errors=[])
    integration.on_finished(sender=None, task_result=failed)
    run = run_of(result)
    assert run.status == Status.FAILED
    assert run.started_at is not None


def test_a_finish_for_a_run_that_ended_records_no_second_run(
    db: None, settings: Any, integration_on: None
) -> None:
    settings.TASKS = {
        "default": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend", "QUEUES": []}
    }
    result = tasks.add.enqueue(1, 2)
    run = run_of(result)
    run.mark_running(worker="elsewhere:1")
    run.mark_lost()  # its worker looked dead, yet the task system says it succeeded
    integration.on_finished(
        sender=None, task_result=dataclasses.replace(result, status=SUCCESSFUL)
    )
    run = JobRun.objects.get(source="django_tasks", backend_job_id=str(result.id))
    assert run.status == Status.LOST
    assert list(run.logs.values_list("message", "extra")) == [
        (
            "The task system recorded this task as SUCCESSFUL after its run had ended "
            "(Lost); the run keeps its state.",
            {"task_status": "SUCCESSFUL"},
        )
    ]


def test_the_finish_of_an_old_attempt_does_not_end_the_newer_one(
    db: None, settings: Any, integration_on: None
) -> None:
    """Attempt 1 ran on worker w1; the task system gave the task to worker w2
    (``worker_ids`` == [w1, w2]), whose start restarted the run as attempt 2, alive.
    Then attempt 1's ``task_finished`` came (``attempts`` == 1) in a context that did not
    see its start (django-tasks-rq's callbacks, another process): it ended attempt 2
    with attempt 1's outcome. The run goes on, and a line keeps attempt 1's word."""
    settings.TASKS = {
        "default": {"BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend", "QUEUES": []}
    }
    result = tasks.add.enqueue(1, 2)  # the DummyBackend only stores it: a queued run
    run = run_of(result)
    run.mark_running(worker="w1:1")
    run.mark_running(worker="w2:2")  # attempt 2, on another worker, running
    assert run.attempt == 2
    first = dataclasses.replace(result, status=SUCCESSFUL, worker_ids=["w1"])
    assert first.attempts == 1
    integration.on_finished(sender=None, task_result=first)
    run.refresh_from_db()
    assert (run.status, run.attempt, run.worker) == (Status.RUNNING, 2, "w2:2"), (
        f"attempt 2 (on w2:2) was ended {run.status} by attempt 1's finish"
    )
    assert list(run.logs.values_list("message", "extra")) == [
        (
            "The task system recorded attempt 1 of this task as SUCCESSFUL after "
            "attempt 2 had begun; the run goes on with attempt 2.",
            {"task_status": "SUCCESSFUL"},
        )
    ]
    # Attempt 2's own finish ends the run.
    second = dataclasses.replace(first, worker_ids=["w1", "w2"])
    integration.on_finished(sender=None, task_result=second)
    run.refresh_from_db()
    assert (run.status, run.attempt, run.worker) == (Status.SUCCEEDED, 2, "w2:2")


def test_queue_and_priority_are_recorded(db: None, immediate: None) -> None:
    result = tasks.add.using(queue_name="reports", priority=7).enqueue(1, 1)
    run = run_of(result)
    assert (run.queue, run.priority) == ("reports", 7)


def test_retry_enqueues_the_same_task_with_the_same_arguments(
    db: None, immediate: None
) -> None:
    first = run_of(tasks.add.using(priority=3).enqueue(4, b=5))
    assert contrib.can_retry(first)
    again = contrib.retry(first)
    assert again.pk != first.pk
    assert (again.job_name, again.params, again.priority) == (
        first.job_name,
        first.params,
        3,
    )
    assert again.status == Status.SUCCEEDED
    assert again.result == 9


def test_a_retry_goes_to_the_backend_the_task_ran_on(
    db: None, settings: Any, integration_on: None
) -> None:
    """``task.using(backend="inline")``: the retry went to the task's default backend
    (here one that never runs anything), and its run stayed queued for good."""
    settings.TASKS = {
        "default": {
            "BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend",
            "QUEUES": [],
        },
        "inline": {
            "BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend",
            "QUEUES": [],
        },
    }
    first = run_of(tasks.add.using(backend="inline").enqueue(2, 3))
    assert first.params == {"args": [2, 3], "kwargs": {}, "backend": "inline"}
    again = contrib.retry(first)
    again.refresh_from_db()
    assert (again.status, again.result, again.params) == (
        Status.SUCCEEDED,
        5,
        first.params,
    )


def test_a_retry_of_a_task_run_on_default_goes_to_default_not_its_declared_backend(
    db: None, settings: Any, integration_on: None
) -> None:
    """``@task(backend="reports")`` enqueued with ``.using(backend="default")`` ran on
    "default": its params name no backend, and the retry went to the declared one (here a
    backend that never runs anything), its run queued for good."""
    settings.TASKS = {
        "default": {
            "BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend",
            "QUEUES": [],
        },
        "reports": {
            "BACKEND": f"{FRAMEWORK}.backends.dummy.DummyBackend",
            "QUEUES": [],
        },
    }
    result = tasks.reports_add.using(backend="default").enqueue(2, 3)
    assert str(result.status) == SUCCESSFUL
    first = run_of(result)
    assert (first.job_name, first.status, first.params) == (
        "tests.contrib.tasks_app.tasks.reports_add",
        Status.SUCCEEDED,
        {"args": [2, 3], "kwargs": {}},
    )
    again = contrib.retry(first)
    again.refresh_from_db()
    assert (again.status, again.result) == (Status.SUCCEEDED, 5)


@pytest.mark.parametrize(
    ("task_name", "error"),
    [
        ("rows_failed", "ExceptionGroup: several rows failed (2 sub-exceptions)"),
        (
            "children_failed",
            "ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
        ),
    ],
)
def test_an_exception_group_is_recorded_by_its_own_line(
    db: None, immediate: None, task_name: str, error: str
) -> None:
    """A group's traceback is drawn in a box: the run's error was the box's last line,
    ``+------------------------------------``, the same for every group whatever failed."""
    run = run_of(getattr(tasks, task_name).enqueue())
    assert (run.status, run.error) == (Status.FAILED, error)


def test_a_retry_keeps_the_owner_of_the_run_it_retries(
    db: None, immediate: None, django_user_model: Any
) -> None:
    owner = django_user_model.objects.create_user("owner")
    first = run_of(tasks.add.enqueue(1, 2))
    JobRun.objects.filter(pk=first.pk).update(owner=owner)
    first.refresh_from_db()
    again = contrib.retry(first)
    assert again.owner_id == owner.pk
    assert JobRun.objects.get(pk=again.pk).owner_id == owner.pk
    assert contrib.retry(again).owner_id == owner.pk
    nobody = contrib.retry(run_of(tasks.add.enqueue(1, 1)))
    assert JobRun.objects.get(pk=nobody.pk).owner_id is None


def test_a_failing_receiver_never_breaks_the_task(
    db: None,
    immediate: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in the receiver")

    monkeypatch.setattr(integration, "_begin", broken)
    with caplog.at_level(logging.ERROR, logger="django_jobstatus"):
        result = tasks.add.enqueue(1, 1)
    assert result.status == SUCCESSFUL
    assert result.return_value == 2
    assert "Could not record the start of task" in caplog.text
    assert "Could not record the end of task" in caplog.text


def test_a_queued_twin_is_merged_into_the_run_a_worker_recorded(
    make_run: Any, django_user_model: Any
) -> None:
    # A worker can start a task before its enqueueing is recorded (outside a transaction).
    alice = django_user_model.objects.create_user("alice")
    parent = make_run("batch", status=Status.QUEUED, owner=alice)
    queued = make_run(
        "t",
        status=Status.QUEUED,
        source="django_tasks",
        backend_job_id="abc",
        parent=parent,
        owner=alice,  # its batch's owner's (JobRun.objects.enqueue())
    )
    JobRun.objects.filter(pk=queued.pk).request_kill()
    running = make_run("t", source="django_tasks", backend_job_id="abc")
    other = make_run(
        "t", status=Status.QUEUED, source="django_tasks", backend_job_id="xyz"
    )
    assert integration._merge_twins("abc", "default") is True
    running.refresh_from_db()
    assert (running.parent_id, running.kill_requested) == (parent.pk, True)
    assert running.owner_id == alice.pk
    assert set(
        JobRun.objects.filter(source="django_tasks").values_list("pk", flat=True)
    ) == {running.pk, other.pk}
    assert integration._merge_twins("abc", "default") is False
    assert integration._merge_twins("xyz", "default") is False


# The database is briefly unreachable: the task runs; its end is recorded when it is back.


@contextlib.contextmanager
def outage() -> Iterator[None]:
    """Every query on the app's tables fails while tasks.OUTAGE is set."""

    def refuse(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if tasks.OUTAGE.is_set() and "django_jobstatus_" in sql:
            raise OperationalError(
                "server closed the connection unexpectedly (simulated)"
            )
        return execute(sql, params, many, context)

    tasks.OUTAGE.set()
    try:
        with connection.execute_wrapper(refuse):
            yield
    finally:
        tasks.OUTAGE.clear()


def test_end_is_recorded_when_the_database_comes_back(
    transactional_db: None, immediate: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_jobstatus"), outage():
        result = (
            tasks.end_outage.enqueue()
        )  # the start cannot be recorded; the task ends the outage
    assert result.status == SUCCESSFUL
    assert f"Could not record the start of django_tasks job {result.id}" in caplog.text
    run = run_of(result)
    assert run.status == Status.SUCCEEDED
    assert run.result == "done"
    assert list(run.logs.values_list("message", flat=True)) == ["ran during the outage"]
    assert run.started_at is not None
    assert run.finished_at is not None


def test_end_is_logged_when_the_database_never_comes_back(
    transactional_db: None,
    immediate: None,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.JOBSTATUS = {**settings.JOBSTATUS, "FINISH_RETRY_TIMEOUT": 0.3}
    with caplog.at_level(logging.WARNING, logger="django_jobstatus"), outage():
        result = tasks.add.enqueue(20, 22)
    assert result.status == SUCCESSFUL
    assert result.return_value == 42
    assert (
        f"Could not record the start of django_tasks job {result.id} after"
        in caplog.text
    )
    assert not JobRun.objects.exists()


# django-tasks-db with its real db_worker process (PostgreSQL: both processes share the database).


def _need_tasks_db() -> None:
    if not apps.is_installed("django_tasks_db"):
        reason = 'needs "django_tasks_db" in INSTALLED_APPS (tests/settings.py, or --ds tests.contrib.tasks_app.settings)'
        if CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


class Worker:
    """A ``manage.py db_worker`` process on the test database."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="db_worker-", suffix=".log")  # noqa: SIM115 (closed in stop())
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.contrib.tasks_app.settings",
            "JOBSTATUS_WORKER_DB": connection.settings_dict["NAME"],
            "PYTHONPATH": str(ROOT),
        }
        command = [
            sys.executable,
            "-m",
            "django",
            "db_worker",
            "--no-reload",
            "--no-startup-delay",
            "--interval",
            "0.1",
            "-v",
            "2",
            *args,
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def ready(self, timeout: float = 120) -> None:
        """Wait until the worker polls for tasks (its start can be slow on a busy machine)."""
        wait_for(
            lambda: "Starting worker" in self.output(),
            timeout=timeout,
            what="db_worker to start",
            process=self.process,
            log=Path(self.log.name),
        )

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture
def worker(
    transactional_db: None, settings: Any, integration_on: None
) -> Iterator[Worker]:
    _need_tasks_db()
    settings.TASKS = DATABASE
    process = Worker("--queue-name", "default")
    process.ready()
    yield process
    process.stop()


def run_reaching(result: Any, worker: Worker, statuses: Any = None) -> JobRun:
    """The task's run once it is in one of ``statuses`` (default: finished)."""
    wanted = sorted(Status.TERMINAL if statuses is None else statuses)
    runs = JobRun.objects.filter(pk=run_of(result).pk, status__in=wanted)
    return wait_for(
        runs.first,
        timeout=90,
        what=f"the run of task {result.id} to be {' or '.join(wanted)}",
        log=Path(worker.log.name),
    )


@pytest.mark.postgres
def test_db_worker_success(worker: Worker) -> None:
    result = tasks.add.enqueue(2, 3)
    run = run_of(result)  # recorded at enqueue, in the caller's transaction
    assert run.queued_at is not None
    run = run_reaching(result, worker)
    assert run.status == Status.SUCCEEDED, run.error
    assert run.result == 5
    assert run.worker == worker.name
    assert run.queued_at <= run.started_at <= run.finished_at
    assert run.params == {"args": [2, 3], "kwargs": {}}
    result.refresh()
    assert result.status == SUCCESSFUL


@pytest.mark.postgres
def test_db_worker_a_receiver_raising_after_a_success(worker: Worker) -> None:
    """A task_finished receiver after ours raises on the success: db_worker then records
    the task FAILED and sends task_finished again. The run has ended succeeded (a terminal
    state holds): it stays the task's one run, with a warning that tells the last word."""
    result = tasks.refused_after_success.enqueue()
    after = tasks.add.using(priority=-1).enqueue(1, 1)  # picked up after it
    run_reaching(after, worker)  # the worker is done with the first task
    result.refresh()
    assert result.status == FAILED
    assert result.errors[-1].exception_class_path == "builtins.RuntimeError"
    runs = JobRun.objects.filter(source="django_tasks", backend_job_id=str(result.id))
    assert list(runs.values_list("status", "result", "error")) == [
        (Status.SUCCEEDED, "done", "")
    ]
    run = runs.get()
    assert not run.has_errors
    (line,) = run.logs.values_list("level", "message", "extra")
    assert line[0] == logging.WARNING
    assert line[1] == (
        "The task system recorded this task as FAILED after its run had ended "
        "(Succeeded); the run keeps its state.\nRuntimeError: the other receiver refused"
    )
    assert "the other receiver refused" in line[2]["traceback"]


@pytest.mark.postgres
def test_db_worker_beats_for_a_task_that_reports_nothing(worker: Worker) -> None:
    result = tasks.silent.enqueue()
    run = run_reaching(result, worker)
    assert (run.status, run.result) == (Status.SUCCEEDED, "beaten")
    assert run.heartbeat_at > run.started_at


@pytest.mark.postgres
def test_db_worker_failure(worker: Worker) -> None:
    result = tasks.fail.enqueue("broken in the worker")
    run = run_reaching(result, worker)
    assert run.status == Status.FAILED
    assert run.error == "tests.contrib.tasks_app.tasks.TaskError: broken in the worker"
    assert "raise TaskError(message)" in run.traceback
    assert run.worker == worker.name
    assert run.started_at <= run.finished_at


@pytest.mark.postgres
def test_db_worker_progress_logs_and_logging_handler(worker: Worker) -> None:
    counted = tasks.count.enqueue(40)
    talked = tasks.chatty.enqueue(30)
    run = run_reaching(counted, worker)
    assert run.status == Status.SUCCEEDED, run.error
    assert (run.progress_current, run.progress_total, run.step, run.message) == (
        40,
        40,
        "counting",
        "counted",
    )
    assert list(run.logs.values_list("message", flat=True)) == ["counted to 40"]
    chatty = run_reaching(talked, worker)
    assert chatty.status == Status.SUCCEEDED
    lines = list(chatty.logs.order_by("id").values_list("message", "level", "extra"))
    assert lines[0] == (
        "line 0",
        logging.INFO,
        {"logger": "tests.contrib.tasks_app.tasks"},
    )
    assert [message for message, _, _ in lines] == [f"line {i}" for i in range(30)]


def admin_action(client: Any, action: str, run: JobRun) -> None:
    changelist = reverse("admin:django_jobstatus_jobrun_changelist")
    response = client.post(
        changelist, {"action": action, "_selected_action": [str(run.pk)]}
    )
    assert response.status_code == 302, response.content[:2000]


@pytest.mark.postgres
def test_db_worker_kill_from_the_admin_action(
    worker: Worker, admin_client: Any
) -> None:
    result = tasks.wait_for_kill.enqueue(120)
    run = run_reaching(result, worker, [Status.RUNNING])
    assert run.worker == worker.name
    admin_action(admin_client, "request_kill", run)
    run = run_reaching(result, worker)
    assert run.status == Status.KILLED
    assert run.kill_requested_at is not None
    assert run.started_at <= run.kill_requested_at <= run.finished_at
    assert run.step == "waiting for a kill"
    result.refresh()
    assert result.status == FAILED
    assert (
        result.errors[-1].exception_class_path
        == "django_jobstatus.exceptions.JobKilled"
    )


@pytest.mark.postgres
def test_db_worker_kills_an_async_task(worker: Worker, admin_client: Any) -> None:
    result = tasks.async_wait_for_kill.enqueue(120)
    run = run_reaching(result, worker, [Status.RUNNING])
    admin_action(admin_client, "request_kill", run)
    run = run_reaching(result, worker)
    assert (run.status, run.error) == (Status.KILLED, "")
    assert run.step == "waiting for a kill"
    result.refresh()
    assert (
        result.errors[-1].exception_class_path
        == "django_jobstatus.exceptions.JobKilled"
    )


def run_on_the_held_queue(result: Any) -> JobRun:
    """The run of ``result`` (enqueued on the queue "held") once a worker of that queue ran it."""
    held = Worker("--queue-name", "held", "--batch")
    try:
        assert held.wait() == 0, held.output()
        return run_reaching(result, held)
    finally:
        held.stop()


@pytest.mark.postgres
def test_db_worker_refuses_a_task_killed_while_it_waited(worker: Worker) -> None:
    result = tasks.wait_for_kill.using(queue_name="held").enqueue(120)
    run = run_of(result)
    assert run.status == Status.QUEUED
    assert contrib.request_kill(JobRun.objects.filter(pk=run.pk)) == 1
    run = run_on_the_held_queue(result)
    assert run.status == Status.KILLED
    assert run.step == ""  # the task's code never ran


@pytest.mark.postgres
def test_db_worker_refuses_a_task_the_reaper_ended_while_it_waited(
    worker: Worker,
) -> None:
    """QUEUED_TIMEOUT: the reaper ends a run queued too long killed and tells its task
    system to drop it, which Django's tasks cannot: the worker refuses it when it picks
    it up. That refusal read the kill request, which the reaper did not record: the
    task's code ran to success while its run said killed."""
    result = tasks.add.using(queue_name="held").enqueue(2, 3)
    run = run_of(result)
    JobRun.objects.filter(pk=run.pk).update(
        queued_at=timezone.now() - timedelta(hours=2)
    )
    assert JobRun.objects.reap(300, queued_timeout=3600).expired == 1
    run = run_on_the_held_queue(result)
    result.refresh()
    assert (run.status, result.status) == (Status.KILLED, FAILED)
    assert run.kill_requested_at is not None
    assert result.errors[-1].exception_class_path == integration.KILLED_PATH


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("path", "error"),
    [
        (
            "tests.contrib.tasks_app.tasks.renamed_since",
            'ImportError: Module "tests.contrib.tasks_app.tasks" does not define a '
            '"renamed_since" attribute/class',
        ),
        (
            "tests.contrib.tasks_app.tasks.undecorated",
            "django.core.exceptions.SuspiciousOperation: Task {id} does not point "
            "to a Task "
            "(tests.contrib.tasks_app.tasks.undecorated)",
        ),
    ],
    ids=["renamed", "not-a-task"],
)
def test_db_worker_fails_a_task_it_cannot_load(
    worker: Worker, path: str, error: str
) -> None:
    """A deploy renamed a task's function, or took its ``@task()`` off, while it waited:
    db_worker records the task FAILED and sends no ``task_started`` or ``task_finished``
    (it cannot build the task they carry). The run stayed ``queued`` for ever, a job
    waiting for a worker that had disposed of it (and with QUEUED_TIMEOUT the reaper
    ended it ``killed``, "its message was probably lost"): it ends ``failed``, as the
    backend recorded it."""
    from django_tasks_db.models import DBTaskResult

    result = tasks.add.using(queue_name="held").enqueue(1, 1)
    assert run_of(result).status == Status.QUEUED
    DBTaskResult.objects.filter(id=result.id).update(task_path=path)
    run = run_on_the_held_queue(result)
    assert DBTaskResult.objects.get(id=result.id).status == FAILED
    assert (run.status, run.error) == (Status.FAILED, error.format(id=result.id))
    assert error.split(":")[0] in run.traceback
    assert run.started_at <= run.finished_at
    assert not run.logs.exists()


def test_a_result_failed_before_its_start_ends_only_a_queued_run(
    db: None, settings: Any, integration_on: None
) -> None:
    """django-tasks-db records a task FAILED that its worker could not load, with no
    signal: its queued run ends failed. A run whose start was seen is left to
    ``task_finished`` (which ends it once)."""
    _need_tasks_db()
    from django_tasks_db.models import DBTaskResult

    settings.TASKS = DATABASE
    waiting, started = tasks.add.enqueue(1, 1), tasks.add.enqueue(2, 2)
    run_of(started).mark_running()
    for result in (waiting, started):
        DBTaskResult.objects.get(id=result.id).set_failed(ImportError("gone"))
    failed = run_of(waiting)
    assert (failed.status, failed.error) == (Status.FAILED, "ImportError: gone")
    assert failed.traceback == "ImportError: gone\n"
    assert run_of(started).status == Status.RUNNING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_with_the_runs_database_apart_an_enqueue_is_recorded_when_it_commits(
    settings: Any, integration_on: None
) -> None:
    """JOBSTATUS["DATABASE"] apart from django-tasks-db's ("replica" stands for the jobs
    database, as in tests/test_batches.py): the caller's transaction cannot hold the run,
    which is recorded when the task's row commits; a rollback leaves no queued run of a
    task that does not exist."""
    _need_tasks_db()
    from django_tasks_db.models import DBTaskResult

    settings.TASKS = DATABASE
    settings.JOBSTATUS = {**settings.JOBSTATUS, "DATABASE": "replica"}
    runs = JobRun.objects.using("replica").filter(source="django_tasks")
    with contextlib.suppress(RuntimeError), transaction.atomic():
        rolled_back = tasks.add.enqueue(1, 2)
        raise RuntimeError("the request failed after the enqueue")
    with transaction.atomic():
        committed = tasks.add.enqueue(3, 4)
        assert not runs.filter(backend_job_id=str(committed.id)).exists()
    writebehind.flush()
    assert not DBTaskResult.objects.filter(id=rolled_back.id).exists()
    assert not runs.filter(backend_job_id=str(rolled_back.id)).exists()
    assert list(
        runs.filter(backend_job_id=str(committed.id)).values_list("status", flat=True)
    ) == [Status.QUEUED]


@pytest.fixture
def runs_apart(settings: Any, integration_on: None) -> None:
    """django-tasks-db's rows on "default", the runs on "replica" (standing for the jobs
    database), routed there by JobStatusRouter as docs/scaling.md sets it up."""
    _need_tasks_db()
    settings.TASKS = DATABASE
    settings.JOBSTATUS = {**settings.JOBSTATUS, "DATABASE": "replica"}
    settings.DATABASE_ROUTERS = ["django_jobstatus.routers.JobStatusRouter"]


def _finished_run_apart(**fields: Any) -> JobRun:
    run = JobRun.objects.db_manager("replica").enqueue(
        "tests.contrib.tasks_app.tasks.add",
        source="django_tasks",
        backend_job_id="00000000-0000-0000-0000-000000000001",
        params={"args": [1, 2], "kwargs": {}},
        **fields,
    )
    run.mark_running(worker="w", using="replica")
    run.mark_succeeded(3, using="replica")
    return run


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_with_the_runs_database_apart_a_retry_in_a_request_records_one_run(
    runs_apart: None, django_user_model: Any
) -> None:
    """ATOMIC_REQUESTS on both databases (the admin's or the API's retry): the
    integration waited for default's commit to record the queued run, retry() found none
    and recorded one itself, and the commit recorded a second. retry() records it alone,
    at the commit: the run it answered, with the owner of the run it retried."""
    owner = django_user_model.objects.db_manager("replica").create_user("owner")
    first = _finished_run_apart(owner=owner)
    with transaction.atomic(using="replica"), transaction.atomic(using="default"):
        new = contrib.retry(first)
    writebehind.flush()
    runs = JobRun.objects.using("replica").filter(
        source="django_tasks", backend_job_id=new.backend_job_id
    )
    assert list(runs.values_list("pk", "status", "owner_id")) == [
        (new.pk, Status.QUEUED, owner.pk)
    ]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_with_the_runs_database_apart_a_retry_rolled_back_leaves_no_queued_run(
    runs_apart: None,
) -> None:
    """The request's transaction on "default" rolled back after the retry, taking the
    task's row: retry() had written its queued run on the runs' database at once."""
    from django_tasks_db.models import DBTaskResult

    first = _finished_run_apart()
    with contextlib.suppress(RuntimeError), transaction.atomic(using="default"):
        new = contrib.retry(first)
        raise RuntimeError("the request failed after the retry")
    writebehind.flush()
    assert not DBTaskResult.objects.filter(id=new.backend_job_id).exists()
    queued = JobRun.objects.using("replica").filter(
        source="django_tasks", backend_job_id=new.backend_job_id, status=Status.QUEUED
    )
    assert not queued.exists()


@pytest.mark.postgres
def test_db_worker_retry_from_the_admin_action(
    worker: Worker, admin_client: Any
) -> None:
    first = run_reaching(tasks.fail.enqueue("fails every time"), worker)
    admin_action(admin_client, "retry", first)
    again = JobRun.objects.for_job(first.job_name).exclude(pk=first.pk).get()
    assert again.backend_job_id != first.backend_job_id
    again = again.wait(timeout=60)
    assert (again.status, again.params, again.error) == (
        Status.FAILED,
        first.params,
        first.error,
    )
    assert again.worker == worker.name


def test_worker_settings_enable_the_integration() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.contrib.tasks_app.settings",
        "PYTHONPATH": str(ROOT),
    }
    code = "import django; django.setup(); from django_jobstatus import contrib; print(contrib.can_retry(type('R', (), {'source': 'django_tasks'})()))"
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert output.stdout.strip() == "True", output.stderr


@pytest.mark.postgres
def test_db_worker_batch_parent_follows_its_children(worker: Worker) -> None:
    from django_jobstatus.batches import batch

    with batch("sums") as parent:
        results = [tasks.add.enqueue(i, i) for i in range(3)]
        failing = tasks.fail.enqueue("one child fails")
    for result in [*results, failing]:
        run_reaching(result, worker)
    parent = parent.wait(timeout=60)  # the worker refreshes it as each child finishes
    # The last refresh may follow the failure.
    parent = wait_for(
        JobRun.objects.filter(pk=parent.pk, progress_current__gte=4).first,
        timeout=60,
        what="the batch's parent to count its four children",
        log=Path(worker.log.name),
    )
    assert parent.status == Status.FAILED
    assert (parent.progress_current, parent.progress_total) == (4, 4)
    assert parent.error == "1 of 4 child runs failed."
    assert sorted(parent.children.succeeded().values_list("result", flat=True)) == [
        0,
        2,
        4,
    ]


def test_a_sub_task_of_an_inline_child_is_no_child_of_the_batch(
    transactional_db: None, immediate: None
) -> None:
    """The block enqueued one task, which succeeded (it handled the failure of a sub-task
    of its own). The sub-task, enqueued while the child ran inline, was counted as the
    batch's child, and the batch ended failed, "1 of 2 child runs failed."; with a worker
    it is no child of the batch."""
    from django_jobstatus.batches import batch

    with batch("nightly") as parent:
        result = tasks.tolerant.enqueue()
    assert str(result.status) == SUCCESSFUL
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (Status.SUCCEEDED, "")
    children = list(parent.children.values_list("job_name", "status"))
    assert children == [("tests.contrib.tasks_app.tasks.tolerant", Status.SUCCEEDED)]
    assert (parent.progress_current, parent.progress_total) == (1, 1)
    sub = JobRun.objects.get(job_name="tests.contrib.tasks_app.tasks.fail")
    assert (sub.status, sub.parent_id) == (Status.FAILED, None)


def test_the_batch_is_back_after_an_inline_child_ends_however_it_ends(
    transactional_db: None, immediate: None
) -> None:
    """Hidden while an inline child runs, the batch is back once it succeeded, failed,
    or was left by a KeyboardInterrupt (no task_finished)."""
    from django_jobstatus.batches import batch, current_parent

    with batch("nightly") as parent:
        tasks.add.enqueue(1, 2)
        assert current_parent() is parent
        tasks.fail.enqueue("a child fails")
        assert current_parent() is parent
        with pytest.raises(KeyboardInterrupt):
            tasks.interrupt.enqueue()
        assert current_parent() is parent
    assert current_parent() is None
    parent.refresh_from_db()
    assert sorted(parent.children.values_list("job_name", "status")) == [
        ("tests.contrib.tasks_app.tasks.add", Status.SUCCEEDED),
        ("tests.contrib.tasks_app.tasks.fail", Status.FAILED),
        ("tests.contrib.tasks_app.tasks.interrupt", Status.FAILED),
    ]
    assert (parent.status, parent.error) == (
        Status.FAILED,
        "2 of 3 child runs failed.",
    )


def test_a_worker_writes_through_one_connection_kept_open(
    transactional_db: None, settings: Any, integration_on: None
) -> None:
    """db_worker closes its connections after every task (CONN_MAX_AGE = 0): the runs are
    written through a connection of the integration's, kept open across tasks (issue 12)."""
    _need_tasks_db()
    from django.db import connections
    from django_tasks_db import DatabaseBackend

    from django_jobstatus.tracking import tracking_database

    settings.TASKS = DATABASE
    sessions = set()
    for n in range(3):
        result = tasks.add.enqueue(n, 1)
        integration.on_started(sender=DatabaseBackend, task_result=result)
        alias = tracking_database()
        assert alias != "default"
        sessions.add(id(connections[alias].connection))
        integration.on_finished(
            sender=DatabaseBackend,
            task_result=dataclasses.replace(result, status=SUCCESSFUL),
        )
        connection.close()  # as db_worker does after each task
    assert len(sessions) == 1
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}


def test_a_django_task_s_run_a_worker_records_first_never_starts_before_its_enqueue(
    db: None, settings: Any
) -> None:
    """The worker records the task's run before the enqueue's (the twin race), with the
    task's enqueued_at, stamped by a web server 3 s ahead: its start was stamped before
    it (``JobRun.objects.start()``; found by a review)."""
    from tests.contrib.tasks_app import tasks

    settings.TASKS = {
        "default": {
            "BACKEND": f"{tasks.FRAMEWORK}.backends.dummy.DummyBackend",
            "QUEUES": [],
        }
    }
    integration.disconnect()  # the enqueue's queued run not recorded (yet)
    result = tasks.add.enqueue(1, 2)
    integration.connect()
    try:
        # The web server that enqueued it has a clock 3 s ahead of the worker's.
        ahead = dataclasses.replace(
            result, enqueued_at=timezone.now() + timedelta(seconds=3)
        )
        integration.on_started(sender=None, task_result=ahead)
        integration.on_finished(
            sender=None, task_result=dataclasses.replace(ahead, status="SUCCESSFUL")
        )
    finally:
        integration.disconnect()
    run = JobRun.objects.get(source="django_tasks", backend_job_id=str(result.id))
    assert run.queued_at == ahead.enqueued_at
    assert run.started_at >= run.queued_at, (run.queued_at, run.started_at)
    assert run.waiting >= timedelta(0)
