"""Celery integration: record every task as a run, and kill/retry runs through Celery.

Enable with ``JOBSTATUS = {"INTEGRATIONS": ["django_jobstatus.contrib.celery"]}``.

- ``before_task_publish`` (the sender): the run is ``queued`` (a retry's message, which
  Celery publishes while the attempt is still running, leaves it alone);
- ``task_prerun`` (the pool process): ``running``, ``worker`` = ``hostname:pid``,
  ``attempt`` = retries + 1, and ``current_job()`` returns its handle inside the task;
- ``task_success`` / ``task_failure`` / ``task_retry``: ``succeeded`` (with the result),
  ``failed`` (error, traceback), ``retrying`` (the attempt is kept in ``attempts``);
- ``task_failure`` from the worker's main process (WorkerLostError: ``lost``; hard time
  limit: ``failed``), ``task_revoked`` (``killed``), ``task_rejected``/``task_unknown``
  (``failed``).

Runs are keyed on ``(source="celery", backend_job_id=task id)``. Kill is
``app.control.revoke(id, terminate=True)``, which stops a running task only on the
prefork, eventlet and gevent pools; retry sends the task again as a new run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextvars import Token
from typing import Any

from celery import Celery, current_app, signals, states
from celery.exceptions import Retry, WorkerLostError
from django.db import DatabaseError, connections, transaction
from django.utils.translation import gettext as _

from django_jobstatus import contrib
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobRun, Status, default_worker, exception_text
from django_jobstatus.tracking import JobHandle, _reset_connection, tracking_database

logger = logging.getLogger(__name__)

SOURCE = "celery"


def find_run(task_id: str, using: str | None = None) -> JobRun | None:
    """The newest run recorded for the Celery task ``task_id``."""
    alias = using or tracking_database()
    return (
        JobRun.objects.using(alias)
        .filter(source=SOURCE, backend_job_id=task_id)
        .order_by("-created_at")
        .first()
    )


def _write(action: Any, what: str) -> None:
    """One best-effort write (outside the task's own execution): log a database error and go on."""
    alias = tracking_database()
    try:
        with transaction.atomic(
            using=alias, savepoint=connections[alias].in_atomic_block
        ):
            action(alias)
    except InvalidTransition as error:
        # Duplicate or late signals (task_revoked fires twice, a retry raced a new attempt).
        logger.debug("Celery %s not recorded: %s", what, error)
    except DatabaseError:
        logger.warning(
            "Could not record Celery %s; the task goes on.", what, exc_info=True
        )
        _reset_connection(alias)


# The sender.


@contrib.never_raises
def _published(
    sender: Any = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **extra: Any,
) -> None:
    headers = headers or {}
    task_id = headers.get("id")
    if not task_id:
        return  # task message protocol 1 (no headers): not recorded
    name = headers.get("task") or str(sender)
    args, kwargs = (
        (body[0], body[1])
        if isinstance(body, list | tuple) and len(body) >= 2
        else ((), {})
    )
    attempt = int(headers.get("retries") or 0) + 1

    def record(alias: str) -> None:
        run = find_run(task_id, alias)
        if run is None:
            JobRun.objects.db_manager(alias).enqueue(
                name,
                source=SOURCE,
                backend_job_id=task_id,
                queue=routing_key or "",
                params=contrib.params_of(args, kwargs),
                attempt=attempt,
            )
        elif run.status == Status.RETRYING:
            run.mark_queued(using=alias)
        # queued: published twice; running: Celery publishes a retry's message before
        # task_retry fires, and running → queued is no legal move; finished: leave it.

    _write(record, f"publish of task {task_id}")


# The pool process that executes the task.


class _Attempt:
    """One execution of a task in this process: its run (once recorded) and handle."""

    def __init__(self, task_id: str, task: Any, args: Any, kwargs: Any) -> None:
        request = task.request
        self.task_id = task_id
        self.name = task.name
        self.params = contrib.params_of(args, kwargs)
        self.queue = (getattr(request, "delivery_info", None) or {}).get(
            "routing_key"
        ) or ""
        self.worker = (
            f"{request.hostname}:{os.getpid()}"
            if getattr(request, "hostname", None)
            else default_worker()
        )
        self.number = int(getattr(request, "retries", 0) or 0) + 1
        self.handle: JobHandle | None = None
        self.token: Token[JobHandle | None] | None = None
        self.recorded = False
        self.ended = False

    def record_start(self) -> JobRun:
        """Upsert the run as running (queued/retrying → running; running → a restart)."""
        alias = tracking_database()
        with transaction.atomic(
            using=alias, savepoint=connections[alias].in_atomic_block
        ):
            run = find_run(self.task_id, alias)
            if run is None or run.is_finished:
                run = JobRun.objects.db_manager(alias).start(
                    self.name,
                    source=SOURCE,
                    backend_job_id=self.task_id,
                    queue=self.queue,
                    params=self.params,
                    worker=self.worker,
                    attempt=self.number,
                )
            else:
                run.mark_running(worker=self.worker, using=alias)
                if run.attempt < self.number:  # its earlier attempts were not recorded
                    JobRun.objects.using(alias).filter(pk=run.pk).update(
                        attempt=self.number
                    )
                    run.attempt = self.number
        self.recorded = True
        return run

    def start(self) -> None:
        try:
            run = self.record_start()
        except (DatabaseError, InvalidTransition):
            logger.warning(
                "Could not record the start of Celery task %s; trying again when it ends.",
                self.task_id,
                exc_info=True,
            )
            _reset_connection(tracking_database())
            # An unsaved run, so that current_job() works inside the task all the same.
            run = JobRun(
                job_name=self.name,
                status=Status.RUNNING,
                source=SOURCE,
                backend_job_id=self.task_id,
                worker=self.worker,
                attempt=self.number,
            )
        self.handle = JobHandle(run)
        self.token = self.handle.activate()

    def _ensure_recorded(self) -> JobHandle | None:
        handle = self.handle
        if handle is None:
            return None
        if not self.recorded:
            run = contrib.durably(
                self.record_start, f"the start of Celery task {self.task_id}"
            )
            if run is None:
                return None
            handle.run = run
            for entry in handle._logs:
                entry.run_id = run.pk
        return handle

    def end(self, exc: BaseException | None = None, result: Any = None) -> None:
        """Record the end: succeeded, failed (or killed on JobKilled); durable."""
        self.ended = True
        handle = self._ensure_recorded()
        if handle is None:
            return
        if exc is None and handle.result is None:
            handle.result = contrib.jsonable(result)
        handle.finish(exc)

    def retrying(self, reason: Any, einfo: Any = None) -> None:
        """Record that this attempt failed and another one is scheduled."""
        self.ended = True
        handle = self._ensure_recorded()
        if handle is None:
            return
        handle.flush()
        # task.retry(exc=...) raises Retry; the error is the exception it carries.
        cause = getattr(reason, "exc", None) if isinstance(reason, Retry) else reason
        exc = cause if isinstance(cause, BaseException) else None
        fields: dict[str, Any] = {}
        if exc is None:
            fields["error"] = str(reason or "")
        if getattr(einfo, "traceback", None):
            fields["traceback"] = einfo.traceback

        def mark() -> None:
            try:
                handle.run.mark_failed(
                    exc, retry=True, using=tracking_database(), **fields
                )
            except InvalidTransition as error:  # a newer attempt started already
                logger.debug("Celery retry of %s not recorded: %s", self.task_id, error)

        contrib.durably(mark, f"the retry of Celery task {self.task_id}")

    def close(self) -> None:
        if self.handle is not None and self.token is not None:
            with contextlib.suppress(ValueError):
                self.handle.deactivate(self.token)


_attempts: dict[str, _Attempt] = {}

_ENDED_OK = frozenset({states.SUCCESS, states.IGNORED})


@contrib.never_raises
def _prerun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **extra: Any,
) -> None:
    if not task_id or task is None:
        return
    attempt = _Attempt(task_id, task, args, kwargs)
    _attempts[task_id] = attempt
    attempt.start()


@contrib.never_raises
def _succeeded(sender: Any = None, result: Any = None, **extra: Any) -> None:
    task_id = getattr(getattr(sender, "request", None), "id", None)
    attempt = _attempts.get(task_id) if task_id else None
    if attempt is not None and not attempt.ended:
        attempt.end(result=result)


@contrib.never_raises
def _failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **extra: Any,
) -> None:
    if not task_id:
        return
    attempt = _attempts.get(task_id)
    if attempt is not None:
        if not attempt.ended:
            attempt.end(exception or RuntimeError(_("The task failed.")))
        return
    # Sent by the worker's main process: the pool process died, or a hard time limit.
    error = exception_text(exception) if exception is not None else ""

    def record(alias: str) -> None:
        run = find_run(task_id, alias)
        if run is None or not run.is_active:
            return
        if isinstance(exception, WorkerLostError):
            run.mark_lost(using=alias, error=error)
        elif run.status == Status.RUNNING:
            run.mark_failed(exception, using=alias)

    _write(record, f"failure of task {task_id}")


@contrib.never_raises
def _retried(
    sender: Any = None,
    request: Any = None,
    reason: Any = None,
    einfo: Any = None,
    **extra: Any,
) -> None:
    task_id = getattr(request, "id", None)
    attempt = _attempts.get(task_id) if task_id else None
    if attempt is not None and not attempt.ended:
        attempt.retrying(reason, einfo)


@contrib.never_raises
def _postrun(
    sender: Any = None,
    task_id: str | None = None,
    retval: Any = None,
    state: str | None = None,
    **extra: Any,
) -> None:
    attempt = _attempts.pop(task_id, None) if task_id else None
    if attempt is None:
        return
    try:
        if not attempt.ended:
            logger.debug(
                "Celery task %s ended in state %s without a success or failure signal.",
                task_id,
                state,
            )
            if state in _ENDED_OK:  # e.g. raise Ignore()
                attempt.end(result=retval)
            elif state == states.FAILURE:
                attempt.end(
                    retval
                    if isinstance(retval, BaseException)
                    else RuntimeError(str(state))
                )
            # Otherwise (a terminated or rejected task): the worker's main process reports it.
    finally:
        attempt.close()


# The worker's main process.


@contrib.never_raises
def _revoked(
    *,
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **extra: Any,
) -> None:
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    if expired:
        message = _("Expired before it ran.")
    elif terminated:
        message = _("Killed: revoked and terminated.")
    else:
        message = _("Revoked before it ran.")

    def record(alias: str) -> None:
        run = find_run(task_id, alias)
        if run is not None and run.is_active:
            run.mark_killed(using=alias, message=str(message))

    _write(record, f"revoke of task {task_id}")


def _refused(task_id: str | None, error: str, worker: str) -> None:
    if not task_id:
        return

    def record(alias: str) -> None:
        run = find_run(task_id, alias)
        if run is None or not run.is_active:
            return
        if run.status != Status.RUNNING:
            run.mark_running(worker=worker, using=alias)
        run.mark_failed(using=alias, error=error)

    _write(record, f"refusal of task {task_id}")


@contrib.never_raises
def _rejected(
    sender: Any = None,
    message: Any = None,
    exc: BaseException | None = None,
    **extra: Any,
) -> None:
    headers = getattr(message, "headers", None) or {}
    error = (
        exception_text(exc) if exc is not None else str(_("Rejected by the worker."))
    )
    _refused(
        headers.get("id"),
        error,
        str(getattr(sender, "hostname", "") or default_worker()),
    )


@contrib.never_raises
def _unknown(
    sender: Any = None,
    message: Any = None,
    exc: BaseException | None = None,
    name: str = "",
    id: str | None = None,
    **extra: Any,
) -> None:
    error = (
        exception_text(exc)
        if exc is not None
        else str(_("Unknown task %(name)s.") % {"name": name})
    )
    _refused(id, error, str(getattr(sender, "hostname", "") or default_worker()))


# Kill and retry.


class CeleryBackend:
    """Stops runs with ``revoke(terminate=True)`` and retries them with ``send_task``."""

    def __init__(self, app: Celery | None = None) -> None:
        self._app = app

    @property
    def app(self) -> Celery:
        return self._app or current_app

    def kill(self, run: JobRun) -> None:
        if run.backend_job_id:
            self.app.control.revoke(run.backend_job_id, terminate=True)

    def retry(self, run: JobRun) -> JobRun:
        params = run.params if isinstance(run.params, dict) else {}
        result = self.app.send_task(
            run.job_name,
            args=params.get("args", []),
            kwargs=params.get("kwargs", {}),
            queue=run.queue or None,
        )
        new = find_run(result.id)  # recorded by before_task_publish
        if new is None:
            new = JobRun.objects.enqueue(
                run.job_name,
                source=SOURCE,
                backend_job_id=result.id,
                queue=run.queue,
                params=run.params,
            )
        return new


_RECEIVERS: list[tuple[Any, Any]] = [
    (signals.before_task_publish, _published),
    (signals.task_prerun, _prerun),
    (signals.task_success, _succeeded),
    (signals.task_failure, _failed),
    (signals.task_retry, _retried),
    (signals.task_postrun, _postrun),
    (signals.task_revoked, _revoked),
    (signals.task_rejected, _rejected),
    (signals.task_unknown, _unknown),
]


def _uid(receiver: Any) -> str:
    return f"django_jobstatus.contrib.celery.{receiver.__name__}"


def connect(app: Celery | None = None) -> None:
    """Record Celery tasks; kill/retry through ``app`` (default: Celery's current app). Idempotent."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False, dispatch_uid=_uid(receiver))
    contrib.register(SOURCE, CeleryBackend(app))


def disconnect() -> None:
    """Stop recording Celery tasks. Idempotent."""
    for signal, receiver in _RECEIVERS:
        signal.disconnect(receiver, dispatch_uid=_uid(receiver))
    contrib.unregister(SOURCE)
