"""RQ integration (with django-rq): record every job as a run, and kill/retry runs through RQ.

Enable with::

    JOBSTATUS = {"INTEGRATIONS": ["django_jobstatus.contrib.rq"]}
    RQ = {
        "WORKER_CLASS": "django_jobstatus.contrib.rq.Worker",
        "JOB_CLASS": "django_jobstatus.contrib.rq.Job",
        "QUEUE_CLASS": "django_jobstatus.contrib.rq.Queue",  # optional: records "queued"
    }

- ``Queue`` (where jobs are enqueued): the run is ``queued``;
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
- a worker that died is noticed by RQ's cleanup of abandoned jobs (``lost``), or by
  ``reap_jobstatus``.

Kill sends RQ's stop-job command (forking workers only: ``SimpleWorker`` cannot stop a
job) or cancels a job that has not started; retry enqueues the function again with the
same arguments, as a new run. The same classes work with rq 2.x and 3.x: they override
``execute_job`` and ``perform``, whose signatures did not change, and ``perform_job``,
passing on what follows the job and its queue (rq 3 added the execution).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import django_rq
import rq
import rq.registry
from django.db import connections
from django.utils.translation import gettext as _
from django_rq.queues import DjangoRQ
from redis import Redis
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus
from rq.results import Result

from django_jobstatus import contrib, health, own_connections, writebehind
from django_jobstatus.contrib import _execution
from django_jobstatus.contrib._execution import Execution
from django_jobstatus.exceptions import InvalidTransition, JobKilled
from django_jobstatus.fingerprints import last_line
from django_jobstatus.models import JobRun, Status, default_worker
from django_jobstatus.tracking import JobHandle, tracking_database

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


def find_run(job_id: str, using: str | None = None) -> JobRun | None:
    """The newest run recorded for the RQ job ``job_id``."""
    return _execution.find_run(SOURCE, job_id, using)


def _name(job: rq.job.Job) -> str:
    """The job's function as a dotted path (what RQ can enqueue again)."""
    return job.func_name or job.description or job.id


def _fields(job: rq.job.Job) -> dict[str, Any]:
    return {
        "queue": job.origin or "",
        "params": contrib.params_of(job.args, job.kwargs),
    }


@contrib.never_raises
def _record_queued(job: rq.job.Job) -> Any:
    """Record ``job``'s run as queued; the id of the run created, or None."""
    if not _connected:
        return None
    return _execution.record_queued(
        SOURCE,
        job.id,
        _name(job),
        fresh=getattr(job, _FRESH, False),
        **_fields(job),
    )


# Set on a job made by Queue.create_job() with a new id: no run can have that id yet.
_FRESH = "_jobstatus_fresh"
# In a job's meta: the worker running it cannot stop it (a SimpleWorker).
CANNOT_STOP = "jobstatus_cannot_stop"


def _execution_of(job: rq.job.Job) -> Execution:
    return Execution(
        SOURCE, job.id, _name(job), worker=default_worker(), **_fields(job)
    )


# Where jobs are enqueued.


class Queue(DjangoRQ):
    """django-rq's queue that also records each enqueued or scheduled job as a queued run.

    The run is recorded before RQ has the job (on PostgreSQL written behind the enqueue:
    a worker that starts the job first waits for it or records the run itself, see
    ``writebehind``); when the push to Redis fails, the run goes again (or is never
    written) and the error is raised. (A push in a pipeline the caller executes later cannot be seen failing:
    such a run stays queued until ``reap_jobstatus --queued-timeout`` ends it.)
    """

    def create_job(self, *args: Any, **kwargs: Any) -> rq.job.Job:
        job = super().create_job(*args, **kwargs)
        if kwargs.get("job_id") is None:
            setattr(job, _FRESH, True)
        return job

    def enqueue_job(
        self, job: rq.job.Job, pipeline: Any = None, *args: Any, **kwargs: Any
    ) -> rq.job.Job:
        created = _record_queued(job)
        with _forgotten_if_refused(job, created, pipeline):
            return super().enqueue_job(job, pipeline, *args, **kwargs)

    def schedule_job(
        self,
        job: rq.job.Job,
        datetime: Any,
        pipeline: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> rq.job.Job:
        created = _record_queued(job)
        with _forgotten_if_refused(job, created, pipeline):
            return super().schedule_job(job, datetime, pipeline, *args, **kwargs)


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
        if hasattr(job, _FRESH):
            delattr(job, _FRESH)  # enqueued once; a later enqueue of it is no new job


# The work horse.


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
            # a kill request (JobKilled) is not retried: its retries are used up here.
            if isinstance(exc, JobKilled):
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
            if own:
                execution.close()
            # Runs this job enqueued, written before the work horse exits without atexit.
            writebehind.flush()


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


def _left_to_parent(job: rq.job.Job, execution: Execution) -> bool:
    """Leave this success to the worker's main process when it can record it as well as
    this work horse; whether it was left.

    It can when this is a fork of it that recorded the start, the job wrote nothing so
    far (this horse has no database connection), and RQ keeps the result for it to read.
    What the job reported (progress, log lines) is handed to it in the job's meta: then
    the horse does not connect to the database at all, and the main process writes it
    with the end through the connection it keeps open.
    """
    handle = execution.handle
    return (
        _recorder not in (0, os.getpid())
        and execution.recorded
        and handle is not None
        and not handle.has_written
        and job.result_ttl != 0
        and (not handle.has_news or _hand_over(job, handle))
    )


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
    """A work horse ends without atexit: the monitor checks and alerts it queued go out
    first, or are dropped (``health.finish()``)."""
    health.finish()


@contrib.never_raises
def _start(execution: Execution) -> None:
    execution.start()


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
                # A work horse ends next, without atexit: the check of a monitored
                # job that it recorded, and the alerts, go out first (or are dropped).
                _finish_health()
        return done

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> Any:
        if not _connected:
            return super().execute_job(job, queue)  # type: ignore[misc]
        global _recorder
        execution = _execution_of(job)
        _executions[job.id] = execution
        _recorder = os.getpid()
        _start(execution)
        # What an earlier attempt's work horse left (a retry's): its RECORDED would tell
        # this process that this attempt's horse recorded the success; its UNWRITTEN,
        # that its worker ended before it wrote them.
        _clear_marks(job, RECORDED, UNWRITTEN)
        _before_fork()
        # The work horse is a fork of this process: it must not share its database connections.
        connections.close_all()
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            _executions.pop(job.id, None)
            execution.close()
            _record_outcome(job, execution)


# The type of the result RQ keeps for a job that returned Retry (none before rq 2.4).
_RETRIED = getattr(Result.Type, "RETRIED", None)


def _error_fields(job: rq.job.Job) -> dict[str, str]:
    """The error and traceback of the job's last execution, from RQ's result."""
    result = job.latest_result()
    if result is None:
        text = str(getattr(job, "exc_info", None) or "")  # deprecated in rq 3
    elif result.type == _RETRIED and not result.exc_string:
        # The job returned Retry: RQ keeps no error, so the attempt says why it ended.
        error = _("Retry requested by the job (it returned rq.Retry).")
        return {"error": str(error), "traceback": ""}
    else:
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


@contrib.never_raises
def _record_outcome(job: rq.job.Job, execution: Execution) -> None:
    if execution.ended:
        return  # recorded in this process (SimpleWorker)
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
        return
    # The work horse recorded what it could; this process knows only what it recorded itself.
    found = contrib.durably(
        lambda: (find_run(job.id),), f"the outcome of RQ job {job.id}"
    )
    if found is None:
        return  # the database stayed away (logged)
    run = found[0]
    if run is not None:
        if run.status != Status.RUNNING or run.worker != execution.worker:
            return  # recorded by the work horse, or another worker runs its retry already
        execution.adopt(run)
    if status in (JobStatus.FINISHED, None):
        execution.end(result=_return_value(job) if status is not None else None)
    elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
        execution.end(JobKilled(job.id), message=str(_("Stopped through RQ.")))
    elif status == JobStatus.FAILED:
        fields = _error_fields(job)
        execution.end(RuntimeError(fields["error"]), **fields)
    elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        execution.retrying(None, **_error_fields(job))
    # STARTED: another worker picked up its retry already.


@contrib.never_raises
def _abandoned(
    job: rq.job.Job, exc_type: type[BaseException], exc_value: BaseException, tb: Any
) -> bool:
    """Exception handler: a job whose worker died (found by RQ's cleanup) is lost, or retrying."""
    if not _connected or not issubclass(exc_type, AbandonedJobError):
        return True  # let the next handler run

    def record(alias: str) -> None:
        run = find_run(job.id, alias)
        if run is None or run.status != Status.RUNNING:
            return
        error = str(_("Abandoned: the worker running it died."))
        if job.retries_left:
            run.mark_failed(using=alias, retry=True, error=error)
        else:
            run.mark_lost(using=alias, error=error)

    _execution.best_effort(record, f"the abandonment of RQ job {job.id}")
    return True


class Worker(_Recording, rq.Worker):
    """RQ's forking worker, recording every job it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(_abandoned)  # type: ignore[no-untyped-call]


class SimpleWorker(_Recording, rq.SimpleWorker):
    """RQ's worker without a fork, recording every job it runs (its jobs cannot be stopped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.push_exc_handler(_abandoned)  # type: ignore[no-untyped-call]

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> Any:
        if _connected:
            # So that a forced kill can say it cannot stop it.
            job.meta[CANNOT_STOP] = True
            with contextlib.suppress(Exception):
                job.save_meta()  # type: ignore[no-untyped-call]
        return super().execute_job(job, queue)


# Kill and retry.


# RQ statuses of a job that no worker is running.
_WAITING = frozenset(
    {JobStatus.CREATED, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
)


def _canceled(run: JobRun, alias: str) -> None:
    """End ``run`` killed: its job was canceled before a worker took it.

    Read again when the move is refused: the worker that scheduled the retry may have
    moved the run retrying → queued between the read and the write.
    """
    for _attempt in range(3):
        current = JobRun.objects.using(alias).filter(pk=run.pk).first()
        if current is None or not current.is_active or current.status == Status.RUNNING:
            return
        try:
            current.mark_killed(using=alias, message=str(_("Canceled before it ran.")))
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
            _execution.best_effort(
                lambda alias: _canceled(run, alias),
                f"the cancel of RQ job {run.backend_job_id}",
            )
        return None  # finished, failed, stopped or canceled: nothing to stop

    def retry(self, run: JobRun) -> JobRun:
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
