"""Celery integration: record every task as a run, and kill/retry runs through Celery.

Enable with ``JOBSTATUS = {"INTEGRATIONS": ["django_jobstatus.contrib.celery"]}``.

- ``before_task_publish`` (the sender): the run is ``queued`` (a retry's message, which
  Celery publishes while the attempt is still running, leaves it alone);
- ``task_prerun`` (the pool process): ``running``, ``worker`` = ``hostname:pid``,
  ``attempt`` = retries + 1, and ``current_job()`` returns its handle inside the task;
- ``task_success`` / ``task_failure`` / ``task_retry``: ``succeeded`` (with the result),
  ``failed`` (error, traceback), ``retrying`` (the attempt is kept in ``attempts``);
- ``task_postrun`` of a task that raised ``Ignore``, which tells Celery to record no
  state: ``killed``, with a message saying so (no success is known); of a task that
  called ``self.replace(sig)``: ``retrying``, the attempt's error naming the replacement,
  which takes over the task id and so goes on as the same run (a chain's last task, a
  group's callback: an earlier task of it that does not succeed ends the run, see
  ``_end_replaced``); of a task that raised
  ``Reject``: ``retrying`` when its message goes back to the queue (``requeue=True`` on
  an ``acks_late`` task), the next delivery going on with the run, else ``failed``;
- ``task_failure`` from the worker's main process (WorkerLostError: ``lost``; hard time
  limit: ``failed``, or ``retrying`` when Celery puts the message back, see
  ``_requeued_on_timeout``), ``task_retry`` from it (``retrying``; ``lost`` for a task
  without ``acks_late`` that a cold shutdown cancelled): each only for the run's current
  attempt when the worker's pool process runs it (``_reported_attempt``: a message
  delivered again may be another pool process's live attempt by then, which goes on, a
  WARNING line on the run saying what the worker reported); ``task_revoked``
  (``killed``; a message discarded before it ran leaves another delivery's running
  attempt alone, ``_revoked``), ``task_rejected``/``task_unknown`` (``failed``).

Runs are keyed on ``(source="celery", backend_job_id=task id)``. Kill is
``app.control.revoke(id, terminate=True)``, which stops a running task only on the
prefork, eventlet and gevent pools; a forced kill asks the worker running the task to
confirm, and says so when it does not (solo and threads pools). Retry sends the task
again as a new run, to where the first was sent: ``queue`` is the routing key, and a task
sent to another exchange than the default one has its name in ``params``
(``"exchange"``). A publish that raises deletes the queued run it recorded (the app's
``amqp.send_task_message`` is wrapped for that: Celery has no signal for it).
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app, current_task, signals, states
from celery.exceptions import Reject, Retry, TimeLimitExceeded, WorkerLostError
from celery.utils.saferepr import saferepr
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker import state as worker_state
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus import contrib, health, own_connections, writebehind
from django_jobstatus.contrib import _execution
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.exceptions import JobKilled, RetryRefused
from django_jobstatus.heartbeats import heartbeats
from django_jobstatus.models import JobRun, Status, default_worker, exception_text
from django_jobstatus.tracking import kills_in

logger = logging.getLogger(__name__)

SOURCE = "celery"

# Seconds a forced kill waits for the worker running a task to confirm it terminated it.
TERMINATE_REPLY_TIMEOUT = 2.0


def find_run(task_id: str, using: str | None = None) -> JobRun | None:
    """The newest run recorded for the Celery task ``task_id``."""
    return _execution.find_run(SOURCE, task_id, using)


# The sender.

# Runs recorded by before_task_publish whose message is not on the broker yet: task id → run id.
_unconfirmed: dict[Any, Any] = {}


@contrib.never_raises
def _published(
    sender: Any = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    exchange: Any = None,
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
    # Set by self.replace(sig) on sig (and on the tasks of a chain it replaces with).
    replacing = bool(headers.get("replaced_task_nesting"))
    if replacing:
        _note_replacement(task_id, name, body)
    created = _execution.record_queued(
        SOURCE,
        task_id,
        name,
        # A first publish carries a new task id: no run can have it yet. A replacement
        # carries the id of the task it replaces: its run goes on.
        fresh=attempt == 1 and not replacing,
        queue=routing_key or "",
        params=_params(args, kwargs, headers, exchange),
        attempt=attempt,
        due_at=_due(headers.get("eta")),
    )
    if created is not None:
        _unconfirmed[task_id] = created


def _note_replacement(task_id: str, name: str, body: Any) -> None:
    """Note what the task executing in this process hands its run over to, when this
    message (task ``task_id``, ``name``) is the one its ``self.replace()`` sends.

    Its id goes to a single task, to a chain's last task (the message of the first one
    carries the rest of the chain) or to the callback of a group (each task of the group
    carries it as its chord). Tasks sent later by a chain's tasks carry the header too,
    and hand nothing over for the task running here.
    """
    replaced = getattr(getattr(current_task, "request", None), "id", None)
    if replaced not in _executions:
        return
    if task_id == replaced:
        _replacements[replaced] = ("task", name, 1)
        return
    embed = body[2] if isinstance(body, list | tuple) and len(body) >= 3 else {}
    embed = embed if isinstance(embed, dict) else {}
    # The chain is kept last task first: this task's id is that of the replacement's last.
    following = _task_ids(embed.get("chain"))[::-1]
    if replaced in following:
        _replacements[replaced] = ("chain", name, following.index(replaced) + 2)
    elif replaced in _task_ids([embed.get("chord")]):
        _kind, first, count = _replacements.get(replaced, ("group", name, 0))
        _replacements[replaced] = ("group", first, count + 1)


def _task_ids(signatures: Any) -> list[str]:
    """The task ids given to ``signatures`` (a message's chain, or its chord in a list)."""
    return [
        task_id
        for signature in signatures or ()
        if isinstance(signature, dict)
        and (task_id := (signature.get("options") or {}).get("task_id"))
    ]


@contrib.never_raises
def _confirmed(
    sender: Any = None, headers: dict[str, Any] | None = None, **extra: Any
) -> None:
    _unconfirmed.pop((headers or {}).get("id"), None)


@contrib.never_raises
def _not_published(task_id: Any) -> None:
    """The publish of a task raised: its run, if this process recorded it, goes."""
    created = _unconfirmed.pop(task_id, None)
    if created is not None:
        _execution.forget_queued(created, SOURCE, str(task_id))


def _guard(app: Celery) -> None:
    """Make ``app``'s publishing forget the run of a task whose message the broker refused.

    Celery sends ``before_task_publish`` before the message goes out and no signal when
    it fails, so the app's ``amqp.send_task_message`` is wrapped, once per app.
    """
    amqp = app.amqp
    send = amqp.send_task_message
    if getattr(send, "_jobstatus_guard", False):
        return

    @functools.wraps(send)
    def guarded(
        producer: Any, name: str, message: Any, *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return send(producer, name, message, *args, **kwargs)
        except BaseException:
            headers = getattr(message, "headers", None)
            if isinstance(headers, dict):
                _not_published(headers.get("id"))
            raise

    guarded._jobstatus_guard = True  # type: ignore[attr-defined]
    amqp.send_task_message = guarded


# The pool process that executes the task.


def _execution_of(task_id: str, task: Any, args: Any, kwargs: Any) -> Execution:
    request = task.request
    hostname = getattr(request, "hostname", None)
    delivery_info = getattr(request, "delivery_info", None) or {}
    return Execution(
        SOURCE,
        task_id,
        task.name,
        worker=f"{hostname}:{os.getpid()}" if hostname else default_worker(),
        attempt=int(getattr(request, "retries", 0) or 0) + 1,
        queue=delivery_info.get("routing_key") or "",
        params=_params(args, kwargs, vars(request), delivery_info.get("exchange")),
    )


def _due(eta: Any) -> datetime | None:
    """A message's ``eta`` header (ISO 8601; a countdown becomes one) as an aware datetime."""
    if not isinstance(eta, str) or not eta:
        return None
    try:
        moment = datetime.fromisoformat(eta)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# The key of params that names the exchange a task was sent to, when not the default one.
EXCHANGE = "exchange"


def _params(
    args: Any, kwargs: Any, given: dict[str, Any], exchange: Any
) -> dict[str, Any]:
    """The task's arguments as ``params``; a part the caller hid from Celery's logs and
    monitors with ``argsrepr`` or ``kwargsrepr`` is kept as that text (``"repr": true``),
    never as the values it hides.

    A task sent to another exchange than the default one (Celery's "Routing Tasks": a
    topic exchange whose queue is bound with ``feed.#``) has its name as ``"exchange"``:
    its routing key, the run's ``queue``, names no queue, and a retry sends it there
    again. On the default exchange the routing key is the queue's name: nothing is added.
    """
    params = contrib.params_of(args, kwargs)
    for name, values in (("args", args or ()), ("kwargs", kwargs or {})):
        text = given.get(f"{name}repr")
        if isinstance(text, str) and not _celery_repr(values, text, name):
            params[name], params[contrib.REPR] = text, True
    exchange = getattr(exchange, "name", exchange)  # a kombu Exchange, or its name
    if exchange:
        params[EXCHANGE] = str(exchange)
    return params


def _celery_repr(values: Any, text: str, name: str) -> bool:
    """Whether ``text`` is Celery's own ``argsrepr``/``kwargsrepr`` of ``values`` (the
    default, made when the caller gave none): ``repr()`` first, its ``saferepr()`` (cut
    and depth-bounded) only when they differ."""
    forms = [values] if isinstance(values, dict) else [tuple(values), list(values)]
    if any(repr(form) == text for form in forms):
        return True
    maxsize = getattr(current_app.amqp, f"{name}repr_maxsize", 1024)
    maxlevels = current_app.conf.task_repr_maxlevels
    return any(saferepr(form, maxsize, maxlevels=maxlevels) == text for form in forms)


def _retry_cause(reason: Any) -> tuple[BaseException | None, dict[str, Any]]:
    """A retry's exception (``task.retry(exc=...)`` raises Retry carrying it), or else its
    reason as the ``error`` field."""
    cause = getattr(reason, "exc", None) if isinstance(reason, Retry) else reason
    if isinstance(cause, BaseException):
        return cause, {}
    return None, {"error": str(reason or "")}


def _retrying(execution: Execution, reason: Any, einfo: Any) -> None:
    exc, fields = _retry_cause(reason)
    if getattr(einfo, "traceback", None):
        fields["traceback"] = einfo.traceback
    execution.retrying(exc, **fields)


_executions: dict[str, Execution] = {}
# Tasks executing here that called self.replace(): task id → what replaced it ("task",
# "chain" or "group"), the name of its (first) task, and its number of tasks.
_replacements: dict[str, tuple[str, str, int]] = {}
# Executions of a task whose replacement runs inside them (eager: replace() calls apply()).
_outer: dict[str, Execution] = {}


def _ignored(execution: Execution, replacement: tuple[str, str, int] | None) -> None:
    """The task raised ``Ignore``: Celery records no state for it, so no success is known.

    ``self.replace(sig)`` raises it too, once ``sig``, which takes over the task id, is
    sent: the run waits for it (retrying) and ends with its outcome.
    """
    if replacement is not None:
        execution.retrying(None, error=_replaced_by(*replacement))
    else:
        message = _("Ignored: the task raised Celery's Ignore, so no outcome is known.")
        execution.end(JobKilled(execution.backend_job_id), message=str(message))


def _replaced_by(kind: str, name: str, count: int) -> str:
    """The error of a replaced task's attempt: what took its task id over."""
    values = {"name": name, "count": count}
    if kind == "chain":
        return (
            ngettext(
                "Replaced by a chain of %(count)d task that starts with %(name)s (Celery's "
                "replace()): the run goes on as its last task, or ends with the first of "
                "them that does not succeed.",
                "Replaced by a chain of %(count)d tasks that starts with %(name)s (Celery's "
                "replace()): the run goes on as its last task, or ends with the first of "
                "them that does not succeed.",
                count,
            )
            % values
        )
    if kind == "group":
        return (
            ngettext(
                "Replaced by a group of %(count)d task, %(name)s first (Celery's "
                "replace()): the run goes on as the callback that collects their results, "
                "or ends with the first of them that does not succeed.",
                "Replaced by a group of %(count)d tasks, %(name)s first (Celery's "
                "replace()): the run goes on as the callback that collects their results, "
                "or ends with the first of them that does not succeed.",
                count,
            )
            % values
        )
    return (
        _("Replaced by %(name)s (Celery's replace()): the run goes on as that task.")
        % values
    )


def _end_replaced(
    request: Any,
    name: str,
    status: str,
    *,
    worker: str | None = None,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Task ``name`` ended ``status`` (failed, killed or lost) for good: when it is a task
    of a chain or group that replaced a task, the run of that task ends so too.

    ``self.replace(chain(a, b))`` gives the replaced task's id to ``b``, and ``a`` an id
    of its own; ``self.replace(group(...))`` gives it to the callback that collects the
    group's results. When ``a``, or a task of the group, does not succeed, Celery never
    sends the task that has that id (its result backend marks the rest of the chain
    failed, ``_fail_chain``): the run, retrying since the replacement, would wait for ever.

    ``request``: the task's request, with the chain and the chord its message carries
    (in the worker's main process too: Celery gives its signals the request's context).
    Only tasks sent for a replacement carry ``replaced_task_nesting``: for any other
    task nothing is looked up.
    """
    if not getattr(request, "replaced_task_nesting", 0):
        return
    waiting = _task_ids(
        [*(getattr(request, "chain", None) or ()), getattr(request, "chord", None)]
    )
    if not waiting:
        return
    message = str(
        _(
            "Ended with its replacement: %(name)s, a task of the chain or group that "
            "replaced it (Celery's replace()), did not succeed, and Celery never sends "
            "the task that took over this task id."
        )
        % {"name": name}
    )

    def record(alias: str) -> None:
        replaced = JobRun.objects.using(alias).filter(
            source=SOURCE, backend_job_id__in=waiting
        )
        # Retrying; or running still, when its postrun comes after the end of the task
        # it sent (another pool process was quicker).
        for run in replaced.active():
            if run.status == Status.QUEUED:
                continue  # its task was sent after all: it ends the run
            if status == Status.KILLED:
                run.mark_killed(using=alias, message=message)
                continue
            if run.status != Status.RUNNING:
                run.mark_running(worker=worker, using=alias)
            if status == Status.LOST:
                run.mark_lost(using=alias, message=message, **fields)
            else:
                run.mark_failed(exc, using=alias, message=message, **fields)

    _execution.best_effort(record, f"the end of the Celery tasks {name} replaced")


def _stopped(exc: BaseException | None) -> str:
    """The status a task that raised ``exc`` ends: killed (``JobKilled``, or a group of
    them: ``kills_in()``) or failed."""
    return Status.KILLED if kills_in(exc) else Status.FAILED


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
    if not getattr(task.request, "is_eager", False):
        # In a worker: a connection kept open across tasks, which Celery's Django fixup,
        # closing every connection it knows of around each task, does not close.
        own_connections.track_through_own()
    execution = _execution_of(task_id, task, args, kwargs)
    # An eager replacement runs inside the task it replaces, with its id.
    outer = _executions.get(task_id)
    if outer is not None:
        _outer[task_id] = outer
    _executions[task_id] = execution
    execution.start()


@contrib.never_raises
def _succeeded(sender: Any = None, result: Any = None, **extra: Any) -> None:
    task_id = getattr(getattr(sender, "request", None), "id", None)
    execution = _executions.get(task_id) if task_id else None
    if execution is not None and not execution.ended:
        execution.end(result=result)


@contrib.never_raises
def _failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **extra: Any,
) -> None:
    if not task_id:
        return
    # An exception Celery could not pickle comes wrapped: its own class and text are named.
    named: dict[str, Any] = (
        {"error": exception_text(exception.restore())}
        if isinstance(exception, UnpickleableExceptionWrapper)
        else {}
    )
    execution = _executions.get(task_id)
    request = getattr(sender, "request", None)
    name = str(getattr(sender, "name", "") or "")
    if execution is not None:
        if not execution.ended:
            exc = exception or RuntimeError(_("The task failed."))
            execution.end(exc, **named)
            _end_replaced(
                request, name, _stopped(exc), worker=execution.worker, exc=exc, **named
            )
        return
    # Sent by the worker's main process: the pool process died, or a hard time limit.
    error = exception_text(exception) if exception is not None else ""
    requeued = isinstance(exception, TimeLimitExceeded) and _requeued_on_timeout(sender)
    # The task's request is on its stack for a lost pool process (Celery pushes it for
    # task_failure's receivers), not for a hard time limit.
    node = getattr(request, "hostname", None) or _node
    ours = True

    def record(alias: str) -> None:
        nonlocal ours
        run = find_run(task_id, alias)
        if run is None or run.status != Status.RUNNING:
            return
        ours = _reported_attempt(run, node)
        if not ours:
            _left_running(run, alias, node, error)
        elif isinstance(exception, WorkerLostError):
            run.mark_lost(using=alias, error=error)
        else:
            # A requeued task runs again under its id: the next delivery goes on with the run.
            run.mark_failed(exception, retry=requeued, using=alias, **named)

    _execution.best_effort(record, f"the failure of Celery task {task_id}")
    if ours and not requeued:
        lost = isinstance(exception, WorkerLostError)
        _end_replaced(
            request,
            name,
            Status.LOST if lost else Status.FAILED,
            worker=getattr(request, "hostname", None),
            exc=None if lost else exception,
            **({"error": error} if lost else named),
        )


def _requeued_on_timeout(task: Any) -> bool:
    """Whether the hard time limit of ``task``, which sent ``task_failure``, puts its
    message back in the queue, so that a worker runs it again with the same id.

    Celery 5.7's ``Request`` rejects it with ``requeue=True`` when the task is
    ``acks_late`` and not ``acks_on_timeout`` (binding the task resolves that from
    ``acks_on_failure_or_timeout`` and the app's ``task_acks_on_timeout`` /
    ``task_acks_on_failure_or_timeout``). Celery before 5.7 has no ``acks_on_timeout``,
    and sends ``task_failure`` for a hard time limit only when it does not put it back.
    """
    return bool(getattr(task, "acks_late", False)) and not getattr(
        task, "acks_on_timeout", True
    )


def _rejected_in_task(execution: Execution, reject: Any, task: Any) -> None:
    """The task raised ``Reject``: its message goes back to the queue only with
    ``requeue=True`` on an ``acks_late`` task (``Request.reject()`` does nothing to a message
    acknowledged when the task started), run by a worker (``apply()`` has no message).

    Put back, the run waits for the next delivery (retrying), which goes on with it;
    otherwise Celery never runs the task again, and the run fails with the Reject (and
    so does the run of a task it replaced, ``_end_replaced``).
    """
    request = getattr(task, "request", None)
    eager = getattr(request, "is_eager", False)
    exc = reject if isinstance(reject, BaseException) else RuntimeError(states.REJECTED)
    if isinstance(reject, Reject) and reject.requeue and task.acks_late and not eager:
        execution.retrying(exc)
        return
    execution.end(exc)
    _end_replaced(
        request, execution.name, Status.FAILED, worker=execution.worker, exc=exc
    )


@contrib.never_raises
def _retried(
    sender: Any = None,
    request: Any = None,
    reason: Any = None,
    einfo: Any = None,
    **extra: Any,
) -> None:
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    execution = _executions.get(task_id)
    if execution is not None:
        if not execution.ended:
            _retrying(execution, reason, einfo)
        return
    # Sent by the worker's main process: task_retry_on_worker_lost (the pool process died
    # and the task is sent again, with a reason), or Request.cancel() with no reason. A
    # cancel on a lost broker connection leaves an acks_late task's message unacked, so it
    # is delivered again; a cold shutdown cancels a task acknowledged when it started, and
    # nothing runs it again.
    dropped = reason is None and not getattr(sender, "acks_late", False)
    exc, fields = _retry_cause(reason)
    # The task is sent again first: its next attempt may be running already, elsewhere.
    attempt = int(getattr(request, "retries", 0) or 0) + 1
    node = getattr(request, "hostname", None) or _node
    report = (
        exception_text(exc)
        if exc is not None
        else fields["error"] or str(_("cancelled by Celery"))
    )
    ours = True

    def record(alias: str) -> None:
        nonlocal ours
        run = find_run(task_id, alias)
        if run is None or (run.status, run.attempt) != (Status.RUNNING, attempt):
            return
        ours = _reported_attempt(run, node)
        if not ours:
            _left_running(run, alias, node, report)
        elif dropped:
            message = _(
                "Lost: the worker's cold shutdown cancelled it, and Celery does not run it again."
            )
            run.mark_lost(using=alias, message=str(message))
        else:
            run.mark_failed(exc, retry=True, using=alias, **fields)

    _execution.best_effort(record, f"the retry of Celery task {task_id}")
    if ours and dropped:
        _end_replaced(
            request,
            str(getattr(sender, "name", "") or ""),
            Status.LOST,
            worker=getattr(request, "hostname", None),
        )


@contrib.never_raises
def _postrun(
    sender: Any = None,
    task_id: str | None = None,
    retval: Any = None,
    state: str | None = None,
    **extra: Any,
) -> None:
    execution = _executions.pop(task_id, None) if task_id else None
    replacement = _replacements.pop(task_id, None) if task_id else None
    if execution is None:
        return
    try:
        if not execution.ended:
            logger.debug(
                "Celery task %s ended in state %s without a success or failure signal.",
                task_id,
                state,
            )
            if state == states.SUCCESS:
                execution.end(result=retval)
            elif state == states.IGNORED:
                _ignored(execution, replacement)
                if replacement is None:
                    _end_replaced(
                        getattr(sender, "request", None),
                        execution.name,
                        Status.KILLED,
                    )
            elif state == states.REJECTED:
                _rejected_in_task(execution, retval, sender)
            elif state == states.FAILURE:
                exc = (
                    retval
                    if isinstance(retval, BaseException)
                    else RuntimeError(str(state))
                )
                execution.end(exc)
                _end_replaced(
                    getattr(sender, "request", None),
                    execution.name,
                    _stopped(exc),
                    worker=execution.worker,
                    exc=exc,
                )
            # Otherwise (a terminated task): the worker's main process reports it.
    finally:
        execution.close()
        if task_id and task_id in _outer:
            _executions[task_id] = _outer.pop(task_id)  # its own signals come next
        # Runs this task enqueued, written before a pool process may exit without atexit.
        writebehind.flush()


# The worker's main process.

# The name of the worker whose main process this is (``worker_init``): the task_failure
# of a hard time limit comes without the task's request, which names it otherwise.
_node: str | None = None


@contrib.never_raises
def _worker_starts(sender: Any = None, **extra: Any) -> None:
    """Note the name of the worker (``sender``, its WorkController) this process runs."""
    global _node
    _node = str(getattr(sender, "hostname", "") or "") or None


def _reported_attempt(run: JobRun, node: str | None) -> bool:
    """Whether ``run``'s current attempt is the one the main process of worker ``node``
    reports ended (its pool process died, was killed on a hard time limit, or cancelled).

    An ``acks_late`` task's message is delivered again while a pool process still runs
    it (a broker's visibility timeout, a lost connection): another pool process, of
    another worker or of this one, then runs it as the run's next attempt, alive and
    beating, which the report is not about. Each attempt records the ``hostname:pid`` of
    its pool process as ``worker``; this worker's pool process that still runs the task
    is one of its active requests (Celery drops the reported one before it reports).
    Without the worker's name nothing tells: the run is left to its own end, or to the
    reaper. (A message the worker discards, ``_revoked``, never ran: the run's attempt is
    the one reported only when it ran here and is dead, the worker restarted since.)
    """
    host, _sep, pid = run.worker.rpartition(":")
    if not node or host != node:
        return False
    return not any(
        request.id == run.backend_job_id and str(request.worker_pid) == pid
        for request in list(worker_state.active_requests)
    )


def _left_running(run: JobRun, alias: str, node: str | None, report: str) -> None:
    """Say on ``run`` that worker ``node`` reported an end (``report``, its error) of an
    attempt that is not the run's current one, which goes on."""
    text = _(
        "Celery worker %(node)s reported that an attempt of this task ended "
        "(%(report)s), but the run's current attempt runs on %(worker)s: the run goes on."
    ) % {"node": node or "?", "report": report, "worker": run.worker}
    run.log(logging.WARNING, str(text), using=alias)


@contrib.never_raises
def _revoked(
    *,
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **extra: Any,
) -> None:
    """End killed the run of a task the worker's main process revoked.

    ``terminated``: the worker stopped the pool process that ran the task (a revoke with
    ``terminate=True``, as ``CeleryBackend.kill()`` sends). Otherwise the worker
    discarded a message before it ran (expired, or its id revoked): that delivery never
    started. A running run is then another delivery's attempt, as when the message of an
    ``acks_late`` task sent with ``expires`` comes again (a broker's visibility timeout)
    while a pool process runs it: that attempt goes on to its own end, a WARNING line on
    the run saying what the worker reported. Only when that attempt ran on this worker and no pool
    process of it runs the task any more (``_reported_attempt``: the worker restarted
    since) is nothing left to end the run, and it is killed.
    """
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    if expired:
        message = _("Expired before it ran.")
    elif terminated:
        message = _("Killed: revoked and terminated.")
    else:
        message = _("Revoked before it ran.")

    # The request is the message's context, which names its task ``task``.
    name = getattr(request, "task", None) or getattr(sender, "name", None)
    node = getattr(request, "hostname", None) or _node
    ours = True

    def record(alias: str) -> None:
        nonlocal ours
        run = _execution.find_or_enqueue(SOURCE, task_id, name, alias)
        if run is None or not run.is_active:
            return
        ours = (
            terminated or run.status != Status.RUNNING or _reported_attempt(run, node)
        )
        if ours:
            run.mark_killed(using=alias, message=str(message))
        else:
            _left_running(run, alias, node, str(message))

    _execution.best_effort(record, f"the revoke of Celery task {task_id}")
    if ours:
        _end_replaced(request, str(getattr(sender, "name", "") or ""), Status.KILLED)


def _refused(task_id: str | None, name: str | None, error: str, worker: str) -> None:
    if not task_id:
        return

    def record(alias: str) -> None:
        run = _execution.find_or_enqueue(SOURCE, task_id, name, alias)
        if run is None or not run.is_active:
            return
        if run.status != Status.RUNNING:
            run.mark_running(worker=worker, using=alias)
        run.mark_failed(using=alias, error=error)

    _execution.best_effort(record, f"the refusal of Celery task {task_id}")


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
        headers.get("task"),
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
    _refused(id, name, error, str(getattr(sender, "hostname", "") or default_worker()))


# Kill and retry.


class CeleryBackend:
    """Stops runs with ``revoke(terminate=True)`` and retries them with ``send_task``."""

    def __init__(self, app: Celery | None = None) -> None:
        self._app = app

    @property
    def app(self) -> Celery:
        return self._app or current_app

    def kill(self, run: JobRun, *, force: bool = False) -> str | None:
        task_id = run.backend_job_id
        if not task_id:
            return None
        control = self.app.control
        node = run.worker.rsplit(":", 1)[0] if run.worker else ""
        if not (force and run.started_at is not None and node):
            # Running: terminated on the prefork, eventlet and gevent pools; waiting: skipped.
            control.revoke(task_id, terminate=True)
            return None
        # Forced, and running: every worker skips it from now on, and the one running it
        # is asked to terminate it and to say whether it did.
        control.revoke(task_id)
        replies = control.revoke(
            task_id,
            terminate=True,
            destination=[node],
            reply=True,
            timeout=TERMINATE_REPLY_TIMEOUT,
            limit=1,
        )
        answers = [answer for reply in replies or () for answer in reply.values()]
        if not answers:
            return str(
                _(
                    "Celery worker %(node)s did not answer the terminate request within %(timeout)g s: "
                    "its pool cannot terminate a task (solo or threads), or it is busy or gone. "
                    "The task stops at its next progress call, or runs to its end."
                )
                % {"node": node, "timeout": TERMINATE_REPLY_TIMEOUT}
            )
        answer = answers[0]
        if isinstance(answer, dict) and "error" in answer:
            return str(
                _("Celery worker %(node)s could not terminate it: %(error)s")
                % {"node": node, "error": answer["error"]}
            )
        return None

    def _destination(self, run: JobRun) -> dict[str, Any]:
        """``send_task()``'s options that send ``run``'s task again where it was sent.

        On the default exchange, the queue its routing key names. On another one, that
        exchange and routing key, and one of the app's queues bound to it, which Celery
        declares first: the exchange is then declared with its type, by which the Redis
        transport routes. ValueError when the app has no such queue (nothing says where
        the exchange routes to, and the task would wait where no worker reads).
        """
        params = run.params if isinstance(run.params, dict) else {}
        exchange = params.get(EXCHANGE)
        if not exchange:
            return {"queue": run.queue or None}
        bound = [
            queue
            for queue in self.app.amqp.queues.values()
            if queue.exchange is not None and queue.exchange.name == exchange
        ]
        if not bound:
            raise RetryRefused(
                _(
                    "This run cannot be retried: its task was sent to the Celery exchange "
                    "%(exchange)r, to which none of the app's task_queues is bound."
                )
                % {"exchange": exchange}
            )
        return {
            "queue": bound[0],
            "exchange": exchange,
            "routing_key": run.queue or None,
        }

    def retry(self, run: JobRun) -> JobRun:
        params = run.params if isinstance(run.params, dict) else {}
        destination = self._destination(run)
        task_id = str(uuid.uuid4())
        try:
            result = self.app.send_task(
                run.job_name,
                args=params.get("args", []),
                kwargs=params.get("kwargs", {}),
                task_id=task_id,
                **destination,
            )
        except Exception:
            # before_task_publish recorded a queued run, but the broker never took the
            # task: that run would wait forever.
            JobRun.objects.filter(
                source=SOURCE, backend_job_id=task_id
            ).queued().delete()
            raise
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


@contrib.never_raises
def _process_ends(**kwargs: Any) -> None:
    """A pool process ends without atexit: the ends of runs still to write (their job's
    transaction held their row) and the monitor checks and alerts it queued go out first,
    or are dropped (``health.finish()``)."""
    heartbeats.write_ends_before_exit()
    health.finish()


_RECEIVERS: list[tuple[Any, Any]] = [
    (signals.before_task_publish, _published),
    (signals.after_task_publish, _confirmed),
    (signals.task_prerun, _prerun),
    (signals.task_success, _succeeded),
    (signals.task_failure, _failed),
    (signals.task_retry, _retried),
    (signals.task_postrun, _postrun),
    (signals.task_revoked, _revoked),
    (signals.task_rejected, _rejected),
    (signals.task_unknown, _unknown),
    (signals.worker_process_shutdown, _process_ends),
    (signals.worker_init, _worker_starts),
]


def _uid(receiver: Any) -> str:
    return f"django_jobstatus.contrib.celery.{receiver.__name__}"


def connect(app: Celery | None = None) -> None:
    """Record Celery tasks; kill/retry through ``app`` (default: Celery's current app). Idempotent.

    Tasks ``app`` fails to publish leave no run behind (see ``_guard``).
    """
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False, dispatch_uid=_uid(receiver))
    _guard(app or current_app._get_current_object())
    contrib.register(SOURCE, CeleryBackend(app))


def disconnect() -> None:
    """Stop recording Celery tasks. Idempotent."""
    for signal, receiver in _RECEIVERS:
        signal.disconnect(receiver, dispatch_uid=_uid(receiver))
    contrib.unregister(SOURCE)
