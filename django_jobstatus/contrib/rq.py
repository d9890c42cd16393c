"""RQ integration (with django-rq): record every job as a run, and kill/retry runs through RQ.

Enable with::

    JOBSTATUS = {"INTEGRATIONS": ["django_jobstatus.contrib.rq"]}
    RQ = {
        "WORKER_CLASS": "django_jobstatus.contrib.rq.Worker",
        "JOB_CLASS": "django_jobstatus.contrib.rq.Job",
        "QUEUE_CLASS": "django_jobstatus.contrib.rq.Queue",  # optional: records "queued"
    }

- ``Queue`` (where jobs are enqueued, also with ``enqueue_many()``): the run is ``queued``
  (a new run for a job enqueued under an explicit id whose newest run ended, unless killed);
- ``Worker.execute_job`` (the worker's main process, around the fork): ``running`` with
  ``worker`` = ``host:pid`` before the work horse starts; after the horse is gone, the
  job's RQ status decides what is not recorded yet: ``failed`` (also when the horse
  crashed or was killed by the OOM killer), ``retrying`` (RQ's ``Retry``), ``killed``
  (stopped or canceled) or ``succeeded``;
- ``Job.perform`` (the work horse): ``current_job()`` works inside the job, its progress
  and logs are flushed when it ends, and a success is recorded with the result once RQ
  has finished the job (a returned ``Retry``, or a success callback that raises, is no
  success: the main process records what RQ decided; a job that reported nothing leaves
  its success to the main process, which reads the result from RQ: the horse then needs
  no database connection);
- a worker that died is noticed by RQ's cleanup of abandoned jobs (``lost``; a run
  that still beats is left to its work horse), or by ``reap_jobstatus``; one whose cold
  shutdown killed its work horse ends its run ``failed`` (``retrying`` with retries
  left) on its way out;
- a job that RQ enqueues again after a success (``rq.Repeat``), or that it is asked to
  requeue after it ended (``Job.requeue()``), is a new run for each execution;
  ``Job.cancel()`` ends the run killed, and so do ``Job.delete()`` and ``Queue.empty()``
  for the jobs they delete before they ran; the runs of the jobs that wait for a job
  that failed, was stopped, canceled or deleted (RQ keeps them deferred) end killed;
- a work horse whose worker's main process died (SIGKILL) beats for its run itself.

Kill sends RQ's stop-job command (forking workers only: ``SimpleWorker`` cannot stop a
job) or cancels a job that has not started; retry enqueues the function again with the
same arguments (and the queue's defaults), as a new run. The same classes work with rq
2.x and 3.x: they override ``execute_job`` and ``perform``, whose signatures did not
change, and ``perform_job``, ``handle_job_success`` and ``handle_job_failure``, passing
on what follows the job and its queue (rq 3 added the execution).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import django_rq
import rq
import rq.registry
from django.db import connections
from django.utils.translation import gettext as _
from django_rq.queues import DjangoRQ
from redis import Redis
from rq.command import send_stop_job_command
from rq.exceptions import (
    AbandonedJobError,
    DeserializationError,
    InvalidJobOperation,
    NoSuchJobError,
)
from rq.job import JobStatus
from rq.results import Result
from rq.utils import as_text, import_attribute

from django_jobstatus import contrib, health, own_connections, writebehind
from django_jobstatus.contrib import _execution
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.exceptions import InvalidTransition, JobKilled, RetryRefused
from django_jobstatus.fingerprints import last_line
from django_jobstatus.heartbeats import heartbeats
from django_jobstatus.models import JobRun, Status, default_worker
from django_jobstatus.tracking import JobHandle, kills_in, tracking_database

logger = logging.getLogger(__name__)

SOURCE = "rq"

_connected = False
# The execution of each job this process runs; a forked work horse inherits it.
_executions: dict[str, Execution] = {}
# The process that recorded the start of the executions above (a work horse's parent).
_recorder = 0
# In a job's meta: its work horse recorded the success (the main process need not look).
RECORDED = "django_jobstatus_recorded"
# In a job's meta: what it reported that its work horse did not write (for the main process).
UNWRITTEN = "django_jobstatus_unwritten"
# On a job in the worker's main process: the error it failed the job with (a dead work horse).
_FAILURE = "_jobstatus_failure"
# On a job in the worker's main process: its work horse was killed by the worker's cold shutdown.
_COLD_SHUTDOWN = "_jobstatus_cold_shutdown"


def find_run(job_id: str, using: str | None = None) -> JobRun | None:
    """The newest run recorded for the RQ job ``job_id``."""
    return _execution.find_run(SOURCE, job_id, using)


def _name(job: rq.job.Job) -> str:
    """The job's function as a dotted path (what RQ can enqueue again).

    RQ names a bound method by its name alone (its instance goes with the job): the run
    gets ``module.Class.method``, the path of a classmethod that RQ can enqueue again, and
    of an instance method that it cannot (``RQBackend.retry()`` refuses it).
    """
    name = job.func_name
    instance = job.instance if name else None
    if instance is not None:
        owner = instance if inspect.isclass(instance) else type(instance)
        return f"{owner.__module__}.{owner.__qualname__}.{name}"
    return name or job.description or job.id


def _fields(job: rq.job.Job) -> dict[str, Any]:
    return {
        "queue": job.origin or "",
        # RQ pickles the arguments: the job gets a tuple, an int key as they were.
        "params": contrib.params_of(job.args, job.kwargs, exact=True),
    }


# The statuses of a job's newest run after which an enqueue of that job again (RQ's
# retry or repetition, a dependent, ``enqueue_job()`` of a job made earlier) is a new run:
# a job whose run was killed stays killed (a worker refuses it), as RQ may still retry it
# or enqueue it as a dependent. A requeue (``again``), and a new job the caller makes
# under an id that ran before (``_NAMED``: a fixed id of a recurring job), follow a
# killed run too: those were asked for.
_ENQUEUED_AFTER = Status.TERMINAL - {Status.KILLED}


@contrib.never_raises
def _record_queued(job: rq.job.Job, *, again: bool = False, **fields: Any) -> Any:
    """Record ``job``'s run as queued (with ``fields`` too); the id of the run created, or None.

    A job enqueued again under its id is a new run once its newest one has finished,
    unless that one was killed (``_ENQUEUED_AFTER``); after any end when ``again`` (RQ
    puts the job back in its queue: a requeue) or when the caller made a new job under
    an id that ran before (``job_id="nightly-…"``).
    """
    if not _connected:
        return None
    anew = again or getattr(job, _NAMED, False)
    return _execution.record_queued(
        SOURCE,
        job.id,
        _name(job),
        fresh=getattr(job, _FRESH, False),
        again=Status.TERMINAL if anew else _ENQUEUED_AFTER,
        **_fields(job),
        **fields,
    )


# Set on a job made by Queue.create_job() with a new id: no run can have that id yet.
_FRESH = "_jobstatus_fresh"
# Set on a job made by Queue.create_job() under the caller's id: a new job, whatever
# ended under that id before.
_NAMED = "_jobstatus_named"
# Inside Queue.enqueue_many(): each job it makes, with the id of the run recorded for it.
_many: ContextVar[list[tuple[rq.job.Job, Any]] | None] = ContextVar(
    "jobstatus_rq_many", default=None
)
# In a job's meta: the worker running it cannot stop it (a SimpleWorker).
CANNOT_STOP = "jobstatus_cannot_stop"


def _execution_of(job: rq.job.Job) -> Execution:
    try:
        name, fields = _name(job), _fields(job)
    except DeserializationError:
        # Its function or arguments cannot be unpickled here (e.g. a class that a deploy
        # renamed while it waited): the run, named by what RQ keeps of the job, starts,
        # and RQ fails the job in its work horse. Raised here, it stopped the worker.
        # The function's path: RQ's description also quotes the arguments (secrets too).
        path = (job.description or "").split("(", 1)[0]
        name, fields = path or job.id, {"queue": job.origin or ""}
    return Execution(SOURCE, job.id, name, worker=default_worker(), **fields)


# Where jobs are enqueued.


class Queue(DjangoRQ):
    """django-rq's queue that also records each enqueued or scheduled job as a queued run
    (also those of ``enqueue_many()``).

    The run is recorded before RQ has the job (on PostgreSQL written behind the enqueue:
    a worker that starts the job first waits for it or records the run itself, see
    ``writebehind``); when the push to Redis fails, the run goes again (or is never
    written) and the error is raised. (A push in a pipeline the caller executes later cannot be seen failing:
    such a run stays queued until ``reap_jobstatus --queued-timeout`` ends it.)
    """

    def create_job(self, *args: Any, **kwargs: Any) -> rq.job.Job:
        job = super().create_job(*args, **kwargs)
        setattr(job, _FRESH if kwargs.get("job_id") is None else _NAMED, True)
        many = _many.get()
        if many is not None:
            # enqueue_many() pushes the job without enqueue_job(): recorded here, before.
            many.append((job, _record_queued(job)))
            _made(job)
        return job

    def empty(self) -> Any:
        """RQ's empty(), which also ends killed the runs of the jobs it deletes (django-rq's
        admin *Empty queue*), and of the deferred jobs that waited for them: RQ deletes
        the lists of those with the jobs, and keeps them deferred for good.

        RQ's script returns a count, not the ids: they are read before it runs (a job
        enqueued between the two is deleted, and its run left queued).
        """
        ids = self.get_job_ids() if _connected else []
        stranded = _deferred_for_good(self.connection, self.serializer, ids, gone=ids)
        emptied = super().empty()  # type: ignore[no-untyped-call]
        _record_deleted(ids)
        _end_waiting(stranded, None)
        return emptied

    def enqueue_many(
        self, job_datas: Iterable[Any], pipeline: Any = None, *args: Any, **kwargs: Any
    ) -> list[rq.job.Job]:
        """RQ's enqueue_many(), each job recorded queued as ``enqueue_job()`` records it."""
        many: list[tuple[rq.job.Job, Any]] = []
        token = _many.set(many)
        try:
            jobs: list[rq.job.Job] = super().enqueue_many(
                job_datas, pipeline, *args, **kwargs
            )
        except BaseException:
            if pipeline is None:
                # RQ pushes the jobs without dependencies first: those that got there stay.
                for job, created in many:
                    if created is not None and not _pushed(job):
                        _execution.forget_queued(created, SOURCE, job.id)
            raise
        finally:
            _many.reset(token)
        return jobs

    def enqueue_job(
        self, job: rq.job.Job, pipeline: Any = None, *args: Any, **kwargs: Any
    ) -> rq.job.Job:
        created = _record_queued(job)
        with _forgotten_if_refused(job, created, pipeline):
            return super().enqueue_job(job, pipeline, *args, **kwargs)

    def _enqueue_job(
        self, job: rq.job.Job, pipeline: Any = None, *args: Any, **kwargs: Any
    ) -> rq.job.Job:
        """RQ's enqueue of a job as it is (no dependencies looked at), which also records
        a new queued run for a job that ended (django-rq's *Requeue* action on selected
        jobs, ``django_rq.utils.requeue_job()``): its run ended, and a worker runs it
        again. (RQ's own retries and repetitions enqueue a job that has not ended yet.)"""
        if not (_connected and job.get_status(refresh=False) in _REQUEUED):
            return super()._enqueue_job(job, pipeline, *args, **kwargs)
        created = _record_queued(job, again=True)
        with _forgotten_if_refused(job, created, pipeline):
            return super()._enqueue_job(job, pipeline, *args, **kwargs)

    def schedule_job(
        self,
        job: rq.job.Job,
        datetime: Any,
        pipeline: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> rq.job.Job:
        # Due then: the queued timeout counts its wait from that time, not from now.
        created = _record_queued(job, due_at=datetime)
        with _forgotten_if_refused(job, created, pipeline):
            return super().schedule_job(job, datetime, pipeline, *args, **kwargs)


# RQ statuses of a job that RQ puts back in its queue only when asked to (a requeue).
_REQUEUED = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def _pushed(job: rq.job.Job) -> bool:
    """Whether Redis has ``job`` (False when it cannot tell)."""
    try:
        return bool(job.connection.exists(job.key))
    except Exception:
        return False


@contextlib.contextmanager
def _forgotten_if_refused(
    job: rq.job.Job, created: Any, pipeline: Any
) -> Iterator[None]:
    """Delete the run ``created`` for ``job`` when the push to Redis in the block raises."""
    try:
        yield
    except BaseException:
        if created is not None and pipeline is None:
            _execution.forget_queued(created, SOURCE, job.id)
        raise
    finally:
        _made(job)


def _made(job: rq.job.Job) -> None:
    """Forget that ``job`` is new (``_FRESH``, ``_NAMED``): it was enqueued once, and a
    later enqueue of it (a retry, a dependent) is no new job."""
    for mark in (_FRESH, _NAMED):
        if hasattr(job, mark):
            delattr(job, mark)


# The work horse.


# Seconds between two looks of a work horse at its parent, the worker's main process.
PARENT_POLL = 1.0


def _beat_once_orphaned(execution: Execution) -> threading.Event | None:
    """In a work horse: beat for the job's run once the worker's main process, which beats
    for it, is gone (killed with SIGKILL, say: the horse, in a process group of its own,
    runs on and records the end); until then nothing changes. The event stops the watch;
    None when this is no work horse of ours."""
    handle = execution.handle
    if handle is None or _recorder in (0, os.getpid()):
        return None
    done = threading.Event()

    def watch() -> None:
        while not done.wait(PARENT_POLL):
            if os.getppid() != _recorder:
                # Else the reaper takes the live run for dead: its beats died with the parent.
                heartbeats.add(handle, now=True)
                return

    threading.Thread(target=watch, name="jobstatus-rq-parent", daemon=True).start()
    return done


class Job(rq.job.Job):
    """RQ's job whose ``perform()`` makes ``current_job()`` work and records a success."""

    # What the function returned, while the work horse waits for RQ to decide the outcome.
    _jobstatus_returned: tuple[Any] | None = None

    def perform(self) -> Any:
        if not _connected:
            return super().perform()
        execution = _executions.get(self.id)
        # Started by our Worker (in this process, or inherited through the fork), or here.
        own = execution is None or execution.handle is None
        if own:
            execution = _execution_of(self)
            _start(execution)
        assert execution is not None  # noqa: S101 (for the type checker)
        orphaned = None if own else _beat_once_orphaned(execution)
        try:
            handle = execution.handle
            if execution.killed_before_start or (
                handle is not None and handle.run.kill_requested
            ):
                # Asked to stop (or killed) while it waited, e.g. for an RQ Retry: the
                # job's code does not run again.
                raise JobKilled(self.id)
            result = super().perform()
        except BaseException as exc:
            # Here the exception and its traceback are known. RQ retries the job when it
            # has retries left (rq 2 and 3 decide alike), unless it is being stopped:
            # then the horse is killed and never gets here. A job that stopped itself on
            # a kill request (JobKilled, or a group of them: ``kills_in()``) is not
            # retried: its retries are used up here.
            if kills_in(exc):
                self.retries_left = 0
            _end_here(
                execution, exc, retry=bool(self.retries_left and self.retries_left > 0)
            )
            raise
        else:
            if own:
                _finish(execution, result)
            elif not _left_to_parent(self, execution):
                # Recorded once RQ has decided (``_Recording.perform_job``): it may retry
                # (a returned ``Retry``) or fail (a raising success callback) the job.
                self._jobstatus_returned = (result,)
                _tell_parent(self)
            return result
        finally:
            if orphaned is not None:
                orphaned.set()
            if own:
                execution.close()
            # Runs this job enqueued, written before the work horse exits without atexit.
            writebehind.flush()

    def delete(self, *args: Any, **kwargs: Any) -> None:
        """RQ's delete, which also ends the job's run killed when the job still waited for a
        worker (RQ also deletes a job that ran, when it keeps no result: its run ended);
        and the runs of the jobs that waited for it, deleted with it (``delete_dependents``)
        or kept deferred for good, and of those that waited for these, and so on.

        (django-rq's admin *Delete* fetches RQ's own ``Job``: a delete there is not seen.)
        """
        waiting = _connected and self.get_status(refresh=False) in _WAITING
        # Deleted with it, through RQ's own Job (not those that wait for them): read
        # before they go, with the jobs that wait for the deleted ones.
        dependents = (
            list(self.dependent_ids)
            if _connected and _argument(args, kwargs, 2, "delete_dependents")
            else []
        )
        # Not those of a job that ran: RQ deletes a finished job in the transaction that
        # enqueues its dependents (no result kept), after this read.
        stranded = _deferred_for_good(
            self.connection,
            self.serializer,
            [self.id, *dependents] if waiting else dependents,
            gone=[self.id, *dependents],
        )
        super().delete(*args, **kwargs)
        _record_deleted([self.id, *dependents] if waiting else dependents)
        _end_waiting(stranded, None)

    def requeue(self, *args: Any, **kwargs: Any) -> Any:
        """RQ's requeue (of a failed or stopped job, under its id), which also records the
        new attempt as a queued run: the run of the job, which ended, says so until a
        worker starts it (and for good if none does).

        (``rq.requeue_job()``, and so django-rq's admin *Requeue* and *Requeue all*, fetch
        RQ's own ``Job``: a requeue there is recorded when a worker starts the job.)
        """
        created = _record_queued(self, again=True)
        with _forgotten_if_refused(self, created, None):
            return super().requeue(*args, **kwargs)

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        """RQ's cancel, which also ends the job's run killed when no worker runs it.

        (``rq.cancel_job()`` fetches RQ's own ``Job``: a cancel through it is not seen.)
        """
        outcome = super().cancel(*args, **kwargs)
        if _connected:
            _record_canceled(
                self, dependents=not _argument(args, kwargs, 1, "enqueue_dependents")
            )
        return outcome


def _argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str
) -> Any:
    """The argument ``name`` (at ``index`` when positional) of a call, or None."""
    return (
        kwargs[name] if name in kwargs else args[index] if len(args) > index else None
    )


@contrib.never_raises
def _record_canceled(job: rq.job.Job, *, dependents: bool) -> None:
    """End the run of ``job``, canceled through RQ, killed (unless a worker runs it); and
    the runs of the jobs that waited for it, when RQ keeps them deferred (``dependents``)."""

    def record(alias: str) -> None:
        run = find_run(job.id, alias)
        if run is not None:
            _canceled(run, alias)

    _execution.best_effort(record, f"the cancel of RQ job {job.id}")
    if dependents:
        _end_dependents(job, JobStatus.CANCELED)


# Runs, at most, that one transaction of ``_record_deleted()`` ends.
DELETED_CHUNK = 500


@contrib.never_raises
def _record_deleted(job_ids: list[str]) -> None:
    """End killed the runs of the jobs ``job_ids``, deleted from Redis while they waited
    for a worker (one that a worker runs already is left to it): one query finds them."""
    message = str(_("Deleted through RQ before it ran."))
    for start in range(0, len(job_ids), DELETED_CHUNK):
        part = job_ids[start : start + DELETED_CHUNK]

        def record(alias: str, part: list[str] = part) -> None:
            runs = JobRun.objects.using(alias).filter(
                source=SOURCE, backend_job_id__in=part
            )
            for run in runs.active():
                if run.status == Status.RUNNING:
                    continue
                try:
                    run.mark_killed(using=alias, message=message)
                except InvalidTransition:  # it moved meanwhile: read it again
                    _canceled(run, alias, message=message)

        _execution.best_effort(record, f"the deletion of {len(part)} RQ jobs")


@contrib.never_raises
def _tell_parent(job: rq.job.Job) -> None:
    """Let the worker's main process know that this work horse records the success (if RQ finishes the job)."""
    job.meta[RECORDED] = True
    job.save_meta()  # type: ignore[no-untyped-call]


@contrib.never_raises
def _decided(job: rq.job.Job, *, done: bool) -> None:
    """In the work horse, once RQ has handled what the job's function returned: record the
    success, unless RQ retries the job (it returned ``Retry``) or failed it (``done`` is
    false: e.g. its success callback raised). Then what the job reported is written, and
    the worker's main process records the outcome from the job's RQ status."""
    execution = _executions.get(job.id)
    if not isinstance(job, Job) or job._jobstatus_returned is None or execution is None:
        return
    (result,) = job._jobstatus_returned
    job._jobstatus_returned = None
    if done and not isinstance(result, rq.Retry):
        _finish(execution, result)
    elif execution.handle is not None and execution.handle.has_news:
        execution.handle.flush()


@contrib.never_raises
def _repeated(job: rq.job.Job) -> Any:
    """In the work horse, before RQ enqueues ``job`` again under its id (``rq.Repeat``):
    record this execution's success, which ends its run, and the repetition as a new
    run, queued; the id of that run, or None.

    Each execution is a run of its own: recorded now, the success cannot be taken for
    the next execution's, which a worker may start as soon as RQ has enqueued it.
    """
    execution = _executions.get(job.id)
    if not isinstance(job, Job) or job._jobstatus_returned is None or execution is None:
        return None  # recorded by perform() (a worker that is not ours), or not ours
    (result,) = job._jobstatus_returned
    job._jobstatus_returned = None
    _finish(execution, result)
    with writebehind.inline():  # this process exits next, without atexit
        return _execution.record_queued(
            SOURCE, job.id, _name(job), fresh=True, **_fields(job)
        )


def _left_to_parent(job: rq.job.Job, execution: Execution) -> bool:
    """Leave this success to the worker's main process when it can record it as well as
    this work horse; whether it was left.

    It can when this is a fork of it that recorded the start and is still its child (a
    main process that was killed, e.g. with SIGKILL, records nothing), the job wrote
    nothing so far (this horse has no database connection), RQ keeps the result for it
    to read, and will not enqueue the job again at once under its id (``rq.Repeat``:
    ``_Recording.handle_job_success()`` records each repetition's success first).
    What the job reported (progress, log lines) is handed to it in the job's meta: then
    the horse does not connect to the database at all, and the main process writes it
    with the end through the connection it keeps open.
    """
    handle = execution.handle
    return (
        _recorder not in (0, os.getpid())
        and os.getppid() == _recorder
        and not _repeats(job)
        and execution.recorded
        and handle is not None
        and not handle.has_written
        and job.result_ttl != 0
        and (not handle.has_news or _hand_over(job, handle))
    )


def _repeats(job: rq.job.Job) -> bool:
    """Whether RQ runs ``job`` again once it succeeds (``rq.Repeat``, under the same id)."""
    left = getattr(job, "repeats_left", None)  # rq >= 2.2
    return bool(left and left > 0)


def _hand_over(job: rq.job.Job, handle: JobHandle) -> bool:
    """Leave what the job reported in its meta, for the main process; False when there
    is too much of it (``JobHandle.unwritten()``: 64 KB) or Redis refused it."""
    unwritten = handle.unwritten()
    if unwritten is None:
        return False
    job.meta[UNWRITTEN] = unwritten
    try:
        job.save_meta()  # type: ignore[no-untyped-call]
    except Exception:
        logger.warning(
            "Could not hand the reports of RQ job %s to its worker; its work horse writes them.",
            job.id,
            exc_info=True,
        )
        job.meta.pop(UNWRITTEN, None)
        return False
    return True


@contrib.never_raises
def _finish_health() -> None:
    """A work horse ends without atexit: the ends of runs still to write (their job's
    transaction held their row) and the monitor checks and alerts it queued go out first,
    or are dropped (``health.finish()``)."""
    heartbeats.write_ends_before_exit()
    health.finish()


@contrib.never_raises
def _start(execution: Execution) -> None:
    execution.start()


@contrib.never_raises
def _mark_start(job: rq.job.Job, *, stoppable: bool) -> None:
    """Leave in the job's meta (and in Redis, when that changes it) only the marks of the
    execution that starts now, before RQ says it started.

    An earlier attempt's (a retry's, a requeue's, maybe on another worker) would mislead:
    its RECORDED would tell the main process that this attempt's work horse recorded the
    success; its UNWRITTEN, that its worker ended before it wrote them; its CANNOT_STOP
    (it ran on a SimpleWorker), that a kill cannot stop this attempt, which a forking
    worker can. A worker that cannot (``stoppable`` false) marks it, for a forced kill
    to say so.
    """
    before = dict(job.meta)
    for mark in (RECORDED, UNWRITTEN, CANNOT_STOP):
        job.meta.pop(mark, None)
    if not stoppable:
        job.meta[CANNOT_STOP] = True
    if job.meta != before:
        job.save_meta()  # type: ignore[no-untyped-call]


@contrib.never_raises
def _clear_marks(job: rq.job.Job, *marks: str) -> None:
    """Take ``marks`` out of the job's meta, and out of Redis, when one is there."""
    if any(mark in job.meta for mark in marks):
        for mark in marks:
            job.meta.pop(mark, None)
        job.save_meta()  # type: ignore[no-untyped-call]


@contrib.never_raises
def _before_fork() -> None:
    """The work horse inherits the monitored job names, read here through this process's
    own connection when they are stale (``health.before_fork()``)."""
    health.before_fork(tracking_database())


@contrib.never_raises
def _finish(execution: Execution, result: Any) -> None:
    execution.end(result=result)


@contrib.never_raises
def _end_here(execution: Execution, exc: BaseException, *, retry: bool) -> None:
    if retry:
        execution.retrying(exc)
    else:
        execution.end(exc)


# The worker's main process.


class _Recording:
    """``execute_job`` around the work horse: running before it, the outcome after it."""

    # Whether RQ's stop-job command stops the jobs this worker runs (not a SimpleWorker's).
    _jobstatus_stops_jobs = True

    # Whether this worker's cold shutdown killed its work horse (``request_force_stop``).
    _jobstatus_cold_shutdown = False

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """RQ's cold shutdown (a second stop signal), which kills the work horse, waits for
        it and exits: RQ leaves the job started (until its cleanup of abandoned jobs takes
        it), and ``execute_job()`` records its end on the way out."""
        horse = getattr(self, "horse_pid", 0)
        try:
            super().request_force_stop(signum, frame)  # type: ignore[misc]
        except SystemExit:
            self._jobstatus_cold_shutdown = bool(horse)
            raise

    def work(self, *args: Any, **kwargs: Any) -> Any:
        if not _connected:
            return super().work(*args, **kwargs)  # type: ignore[misc]
        # One connection for the worker's whole loop (a forked work horse forgets it).
        with own_connections.tracking_through_own():
            return super().work(*args, **kwargs)  # type: ignore[misc]

    def perform_job(self, job: rq.job.Job, queue: rq.Queue, *args: Any) -> bool:
        # rq 3 passes the execution too: whatever follows job and queue goes through.
        done: bool = super().perform_job(job, queue, *args)  # type: ignore[misc]
        if _connected:
            _decided(job, done=done)
            if _recorder not in (0, os.getpid()):
                writebehind.flush()  # a repetition's queued run (handle_job_success)
                # A work horse ends next, without atexit: the check of a monitored
                # job that it recorded, and the alerts, go out first (or are dropped).
                _finish_health()
        return done

    def handle_job_success(
        self, job: rq.job.Job, queue: rq.Queue, *args: Any, **kwargs: Any
    ) -> Any:
        # rq 3 passes the execution too (by keyword): what follows job and queue goes through.
        if not (_connected and _repeats(job)):
            return super().handle_job_success(job, queue, *args, **kwargs)  # type: ignore[misc]
        # RQ enqueues the job again, under its id (rq.Repeat), in what follows: this
        # execution's run ends now, before a worker can start the next one.
        created = _repeated(job)
        with _forgotten_if_refused(job, created, None):
            return super().handle_job_success(job, queue, *args, **kwargs)  # type: ignore[misc]

    def handle_job_failure(
        self, job: rq.job.Job, queue: rq.Queue, *args: Any, **kwargs: Any
    ) -> Any:
        # rq 3 passes the execution too: what follows job and queue goes through.
        if _connected and os.getpid() == _recorder:
            # The main process fails a work horse that died (e.g. killed by a signal);
            # when the job has retries left, RQ keeps no result that says why.
            setattr(job, _FAILURE, _argument(args, kwargs, 1, "exc_string") or "")
        return super().handle_job_failure(job, queue, *args, **kwargs)  # type: ignore[misc]

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> Any:
        if not _connected:
            return super().execute_job(job, queue)  # type: ignore[misc]
        global _recorder
        execution = _execution_of(job)
        _executions[job.id] = execution
        _recorder = os.getpid()
        _start(execution)
        _mark_start(job, stoppable=self._jobstatus_stops_jobs)
        _before_fork()
        # The work horse is a fork of this process: it must not share its database connections.
        connections.close_all()
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            _executions.pop(job.id, None)
            execution.close()
            if self._jobstatus_cold_shutdown:
                setattr(job, _COLD_SHUTDOWN, True)
            _record_outcome(job, execution)


# The type of the result RQ keeps for a job that returned Retry (none before rq 2.4).
_RETRIED = getattr(Result.Type, "RETRIED", None)


def _error_fields(job: rq.job.Job, result: Result | None) -> dict[str, str]:
    """The error and traceback of the job's last execution: what the worker's main process
    failed it with (a work horse that died), else from RQ's ``result``."""
    text = getattr(job, _FAILURE, "")
    if not text and result is None:
        text = str(getattr(job, "exc_info", None) or "")  # deprecated in rq 3
    elif not text and result is not None:
        if result.type == _RETRIED and not result.exc_string:
            # The job returned Retry: RQ keeps no error, so the attempt says why it ended.
            error = _("Retry requested by the job (it returned rq.Retry).")
            return {"error": str(error), "traceback": ""}
        text = str(result.exc_string or "")
    text = text.strip()
    return {"error": last_line(text), "traceback": text}


def _return_value(job: rq.job.Job) -> Any:
    try:
        return job.return_value(refresh=True)
    except Exception:  # a result RQ cannot load
        logger.debug("Could not load the result of RQ job %s.", job.id, exc_info=True)
        return None


def _take_unwritten(job: rq.job.Job, execution: Execution) -> None:
    """What the work horse handed over (``_hand_over()``), to this process's handle; and
    out of Redis, where the job's meta stays as long as its result."""
    unwritten = job.meta.get(UNWRITTEN)
    if unwritten is None:
        return
    if execution.handle is not None:
        execution.handle.take(unwritten)
    _clear_marks(job, UNWRITTEN)


# What RQ decided of a job whose dependents it then keeps deferred (unless they allow it).
_UNSUCCESSFUL = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def _record_outcome(job: rq.job.Job, execution: Execution) -> None:
    status = _outcome(job, execution)
    if status in _UNSUCCESSFUL:
        _end_dependents(job, status)


@contrib.never_raises
def _outcome(job: rq.job.Job, execution: Execution) -> JobStatus | None:
    """Record what is not recorded yet of ``job``'s execution; the RQ status it ended with."""
    if execution.ended:  # recorded in this process (SimpleWorker)
        return job.get_status(refresh=False)
    try:
        job.refresh()  # type: ignore[no-untyped-call]  # its status and meta, in one read
        status = job.get_status(refresh=False)
    except (InvalidJobOperation, NoSuchJobError):
        status = None  # deleted already (result_ttl=0): it finished
    _take_unwritten(job, execution)  # written with the outcome, whatever it is
    if status == JobStatus.FINISHED and execution.recorded:
        if not job.meta.get(
            RECORDED
        ):  # the work horse left the success to this process
            execution.end(result=_return_value(job))
        return status
    # The work horse recorded what it could; this process knows only what it recorded itself.
    found = contrib.durably(
        lambda: (find_run(job.id),), f"the outcome of RQ job {job.id}"
    )
    if found is None:
        return status  # the database stayed away (logged)
    run = found[0]
    if run is not None:
        if run.status != Status.RUNNING or run.worker != execution.worker:
            return status  # recorded by the work horse, or another worker runs its retry already
        execution.adopt(run)
    _end_as(job, execution, status)
    return status


def _end_as(job: rq.job.Job, execution: Execution, status: JobStatus | None) -> None:
    """Record the end of the execution of ``job``, which RQ says is ``status`` now."""
    if status in (JobStatus.FINISHED, None):
        execution.end(result=_return_value(job) if status is not None else None)
    elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
        execution.end(JobKilled(job.id), message=str(_("Stopped through RQ.")))
    elif status == JobStatus.FAILED:
        fields = _error_fields(job, job.latest_result())
        execution.end(RuntimeError(fields["error"]), **fields)
    elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        result = job.latest_result()
        if (
            not getattr(job, _FAILURE, "")  # a dead horse's retry: no result of its own
            and result is not None
            and result.type == Result.Type.SUCCESSFUL
        ):
            # Enqueued again after a success (rq.Repeat), which its work horse did not
            # record (it records it before RQ enqueues the repetition).
            execution.end(result=result.return_value)
        else:
            execution.retrying(None, **_error_fields(job, result))
    elif status == JobStatus.STARTED and getattr(job, _COLD_SHUTDOWN, False):
        # RQ's cleanup of abandoned jobs later fails it, or retries it if it has retries
        # left (as ``_abandoned()`` records it when a worker died).
        fields = {
            "error": str(
                _("Killed by its worker's cold shutdown (a second stop signal).")
            ),
            "traceback": "",
        }
        if job.retries_left:
            execution.retrying(None, **fields)
        else:
            execution.end(RuntimeError(fields["error"]), **fields)
    # STARTED otherwise: another worker picked up its retry already.


# How many jobs, at most, the end of one job's dependents reaches.
DEPENDENTS_MAX = 1000
# RQ statuses of a job that will not run any more (a deleted one has none).
_ENDED = frozenset(
    {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
)


def _end_dependents(job: rq.job.Job, status: JobStatus) -> None:
    """End killed the queued runs of the jobs waiting for ``job``, which ended ``status``
    (failed, stopped or canceled), and that RQ keeps deferred for good."""
    _end_waiting(
        _deferred_for_good(
            job.connection,
            job.serializer,
            [job.id],
            failed=status == JobStatus.FAILED,
        ),
        status,
    )


@contrib.never_raises
def _deferred_for_good(
    connection: Redis,
    serializer: Any,
    job_ids: list[str],
    *,
    failed: bool = False,
    gone: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """The deferred jobs that wait for the jobs ``job_ids``, which will not finish, and
    that RQ will therefore never run; and so on, for the jobs that wait for those: (job
    id, the id of the job it waits for). Read from Redis before ``gone`` are deleted.

    RQ enqueues a job once its dependencies are met (``Job.dependencies_are_met()``): a
    failed job (``failed``) meets it only for a job that allows its failure
    (``Dependency(allow_failure=True)``), a stopped or canceled one never does. A
    deleted job has no status left, which RQ skips: a job that also waits for another
    one, still to finish, is enqueued when that one succeeds.
    """
    if not _connected or not job_ids:
        return []
    first, deleted = set(job_ids), set(gone)
    stranded: list[tuple[str, str]] = []
    seen = set(first)
    level = list(job_ids)
    while level and len(seen) - len(first) < DEPENDENTS_MAX:
        waits = _dependents_of(connection, level, seen)
        level = []
        jobs = rq.job.Job.fetch_many(list(waits), connection, serializer=serializer)
        for dependent in jobs:
            if dependent is None:
                continue
            dependency_id = waits[dependent.id]
            if dependent.id in deleted:
                # Deleted too (its run is recorded so): those that wait for it are looked at.
                level.append(dependent.id)
                continue
            if dependent.get_status(refresh=False) != JobStatus.DEFERRED:
                continue
            if (
                failed
                and dependency_id in first
                and dependent.allow_dependency_failures
            ):
                continue  # RQ enqueues it
            if dependency_id in deleted and _awaited(dependent, deleted):
                continue
            stranded.append((dependent.id, dependency_id))
            level.append(dependent.id)
    return stranded


def _dependents_of(
    connection: Redis, job_ids: list[str], seen: set[str]
) -> dict[str, str]:
    """The jobs that wait for the jobs ``job_ids`` (in one round trip), each with the job
    it waits for; but those ``seen`` already, which it adds them to."""
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.smembers(rq.job.Job.dependents_key_for(job_id))
        found = pipeline.execute()
    waits: dict[str, str] = {}
    for dependency_id, ids in zip(job_ids, found, strict=True):
        for dependent_id in map(as_text, ids):
            if dependent_id not in seen:
                seen.add(dependent_id)
                waits[dependent_id] = dependency_id
    return waits


def _awaited(job: rq.job.Job, deleted: set[str]) -> bool:
    """Whether ``job`` waits for a job still to finish besides those ``deleted``: that
    one enqueues it when it succeeds, as RQ skips the deleted ones."""
    ids = [
        job_id
        for job_id in map(as_text, job.connection.smembers(job.dependencies_key))
        if job_id not in deleted
    ]
    with job.connection.pipeline(transaction=False) as pipeline:
        for job_id in ids:
            pipeline.hget(rq.job.Job.key_for(job_id), "status")
        statuses = pipeline.execute()
    return any(
        status is not None and as_text(status) not in _ENDED for status in statuses
    )


@contrib.never_raises
def _end_waiting(
    stranded: list[tuple[str, str]] | None, status: JobStatus | None
) -> None:
    """End killed the queued runs of the jobs ``stranded`` (``_deferred_for_good()``),
    saying which job each waited for, which ended ``status`` (None: was deleted)."""
    for job_id, dependency_id in stranded or []:
        if status is None:
            message = _(
                "Not run: RQ keeps it deferred, as RQ job %(dependency)s, which it waits "
                "for, was deleted (or waits for one that was)."
            ) % {"dependency": dependency_id}
        else:
            message = _(
                "Not run: RQ keeps it deferred, as RQ job %(dependency)s, which it waits "
                "for, will not finish (it ended %(status)s, or waits for one that did)."
            ) % {"dependency": dependency_id, "status": status.value}

        def record(alias: str, job_id: str = job_id, message: str = message) -> None:
            run = find_run(job_id, alias)
            if run is not None:
                _canceled(run, alias, message=message)

        _execution.best_effort(record, f"the end of RQ job {job_id}'s wait")


@contrib.never_raises
def _abandoned(
    job: rq.job.Job, exc_type: type[BaseException], exc_value: BaseException, tb: Any
) -> bool:
    """Exception handler: a job whose worker died (found by RQ's cleanup) is lost, or
    retrying; and the runs of the jobs that wait for it end killed when RQ fails it.

    RQ takes a job for abandoned once its worker's main process stopped beating for it,
    but a work horse outlives a main process killed alone, and then beats for the run
    itself (``_beat_once_orphaned()``). A run whose heartbeat is fresh (as ``stale()``
    judges it, on the database's clock) is left to that horse, with a line saying what
    RQ did: the horse records the job's real end; if it is dead after all,
    ``reap_jobstatus`` takes the run for lost once its heartbeat is stale. Without
    retries left, RQ fails the job and keeps the jobs that wait for it deferred for
    good, whatever its run says (reaped first, or its horse's success to come: RQ reads
    the job failed then, and enqueues none of them).
    """
    if not _connected or not issubclass(exc_type, AbandonedJobError):
        return True  # let the next handler run
    retry = bool(job.retries_left and job.retries_left > 0)  # as RQ's cleanup decides

    def record(alias: str) -> None:
        run = find_run(job.id, alias)
        if run is None or run.status != Status.RUNNING:
            return  # ended already (reaped, or by a cold shutdown)
        if not JobRun.objects.using(alias).filter(pk=run.pk).stale().exists():
            run.log(logging.WARNING, _abandoned_while_beating(retry=retry), using=alias)
            return
        error = str(_("Abandoned: the worker running it died."))
        if retry:
            run.mark_failed(using=alias, retry=True, error=error)
        else:
            run.mark_lost(using=alias, error=error)

    _execution.best_effort(record, f"the abandonment of RQ job {job.id}")
    if not retry:
        _end_dependents(job, JobStatus.FAILED)
    return True


def _abandoned_while_beating(*, retry: bool) -> str:
    """The line on a run that RQ's cleanup took for abandoned while it beats (``retry``:
    RQ enqueues the job again)."""
    if retry:
        return str(
            _(
                "RQ took this job for abandoned (the worker that ran it died) and enqueued "
                "it again, but its run still beats: its work horse runs it on, and the "
                "retry runs it once more."
            )
        )
    return str(
        _(
            "RQ took this job for abandoned (the worker that ran it died) and failed it, "
            "but its run still beats: its work horse runs it on and records its end."
        )
    )


class Worker(_Recording, rq.Worker):
    """RQ's forking worker, recording every job it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(_abandoned)  # type: ignore[no-untyped-call]


class SimpleWorker(_Recording, rq.SimpleWorker):
    """RQ's worker without a fork, recording every job it runs (its jobs cannot be stopped)."""

    _jobstatus_stops_jobs = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(_abandoned)  # type: ignore[no-untyped-call]


# Kill and retry.


# RQ statuses of a job that no worker is running.
_WAITING = frozenset(
    {JobStatus.CREATED, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
)


def _canceled(run: JobRun, alias: str, *, message: str | None = None) -> None:
    """End ``run`` killed (with ``message``): its job was canceled before a worker took it.

    Read again when the move is refused: the worker that scheduled the retry may have
    moved the run retrying → queued between the read and the write.
    """
    for _attempt in range(3):
        current = JobRun.objects.using(alias).filter(pk=run.pk).first()
        if current is None or not current.is_active or current.status == Status.RUNNING:
            return
        try:
            current.mark_killed(
                using=alias, message=message or str(_("Canceled before it ran."))
            )
        except InvalidTransition:
            continue
        return


# How long a kill waits for a worker to finish handing a failed job to RQ's scheduler.
SCHEDULING_TIMEOUT = 5.0


def _scheduling(job: rq.job.Job, connection: Redis) -> bool:
    """Whether ``job`` is marked scheduled while its worker has not put it in the registry yet.

    RQ's retry marks the job scheduled at once and registers it in a pipeline run later:
    a cancel between the two would be undone by that pipeline.
    """
    registry = rq.registry.ScheduledJobRegistry(job.origin, connection=connection)  # type: ignore[no-untyped-call]
    return job.id not in registry


class RQBackend:
    """Stops runs with RQ's stop-job command (or cancels them) and retries them by enqueueing again."""

    def __init__(self, connection: Redis | None = None) -> None:
        self._connection = connection

    def connection(self, run: JobRun) -> Redis:
        return self._connection or django_rq.get_connection(run.queue or "default")

    def kill(self, run: JobRun, *, force: bool = False) -> str | None:
        connection = self.connection(run)
        try:
            job = rq.job.Job.fetch(run.backend_job_id, connection=connection)
        except NoSuchJobError:
            return str(
                _("RQ has no job %(id)s any more: it cannot be stopped through RQ.")
                % {"id": run.backend_job_id}
            )
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            if job.meta.get(CANNOT_STOP):
                return str(
                    _(
                        "it runs on an RQ SimpleWorker, which cannot stop a job: it stops at "
                        "its next progress call, or runs to its end."
                    )
                )
            send_stop_job_command(connection, job.id)
            return None
        if status in _WAITING:
            # Queued, scheduled (e.g. waiting for an RQ Retry) or deferred: RQ drops it.
            # (job.worker_name still names the worker of an earlier attempt: a stop-job
            # command would go to a worker that is not running it.)
            if status == JobStatus.SCHEDULED:
                deadline = time.monotonic() + SCHEDULING_TIMEOUT
                while _scheduling(job, connection) and time.monotonic() < deadline:
                    time.sleep(0.005)
            with contextlib.suppress(InvalidJobOperation):  # canceled already
                job.cancel()
            _end_dependents(job, JobStatus.CANCELED)
            _execution.best_effort(
                lambda alias: _canceled(run, alias),
                f"the cancel of RQ job {run.backend_job_id}",
                # Where the kill was asked: that transaction holds the run's row.
                database=run._state.db,
            )
        return None  # finished, failed, stopped or canceled: nothing to stop

    def retry(self, run: JobRun) -> JobRun:
        refusal = _unretriable(run.job_name)
        if refusal is not None:
            raise RetryRefused(refusal)
        params = run.params if isinstance(run.params, dict) else {}
        queue = django_rq.get_queue(run.queue or "default", connection=self._connection)
        enqueue = getattr(
            queue, "original_enqueue_call", queue.enqueue_call
        )  # never deferred to a commit
        job = enqueue(
            func=run.job_name,
            args=params.get("args", []),
            kwargs=params.get("kwargs", {}),
        )
        if not isinstance(queue, Queue):
            _record_queued(job)
        new = find_run(job.id)
        if new is None:
            new = JobRun.objects.enqueue(
                run.job_name, source=SOURCE, backend_job_id=job.id, **_fields(job)
            )
        return new


def _unretriable(name: str) -> str | None:
    """Why RQ cannot run the function ``name`` again from its dotted path, or None when it
    may: a method of an instance, which went with the job. A name this process cannot
    import is left to RQ, as before (the worker may have modules the web process has not)."""
    owner_name, _dot, attribute = name.rpartition(".")
    owner = _owner(owner_name)
    if inspect.isclass(owner) and inspect.isfunction(
        inspect.getattr_static(owner, attribute, None)
    ):
        return str(
            _(
                "This run cannot be retried: its job is a method of an instance of "
                "%(owner)s, which RQ pickled with the job, and the run does not keep it."
            )
            % {"owner": owner_name}
        )
    return None


def _owner(name: str) -> Any:
    try:
        return import_attribute(name) if name else None
    except Exception:
        return None


def connect(connection: Redis | None = None) -> None:
    """Record RQ jobs (run by this module's Worker/Job/Queue classes); kill/retry through ``connection``
    (default: django-rq's connection for the run's queue). Idempotent."""
    global _connected
    _connected = True
    contrib.register(SOURCE, RQBackend(connection))


def disconnect() -> None:
    """Stop recording RQ jobs (the classes then behave like RQ's own). Idempotent."""
    global _connected
    _connected = False
    contrib.unregister(SOURCE)
