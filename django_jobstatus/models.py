"""JobRun (one run of a background job) and JobLog (its log lines)."""

from __future__ import annotations

import copy
import logging
import math
import secrets
import threading
import time
import traceback as tb
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from cronsim import CronSim, CronSimError
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, router, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _

from django_jobstatus import statements
from django_jobstatus.clock import DatabaseNow, database_now
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.fingerprints import fingerprint
from django_jobstatus.querysets import JobLogQuerySet, JobRunManager
from django_jobstatus.routers import write_database
from django_jobstatus.signals import job_status_changed
from django_jobstatus.states import Status
from django_jobstatus.values import (
    BIGINT_MAX,
    JOB_NAME_MAX_LENGTH,
    MAX_LENGTHS,
    check_amount,
    check_job_name,
    check_json,
    check_progress,
    clean,
    cut,
    cut_json,
    default_worker,
    escaped,
    exception_text,
    storable,
    was_cut,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

logger = logging.getLogger(__name__)

# Status and the value checks live in modules without models (querysets.py uses them, and
# models.py imports querysets.py); their names stay importable from here.
__all__ = [
    "BIGINT_MAX",
    "JOB_NAME_MAX_LENGTH",
    "MONITOR_MAX_DURATION",
    "Dashboard",
    "JobLog",
    "JobMonitor",
    "JobMonitorIncident",
    "JobRun",
    "MonitorState",
    "Status",
    "check_amount",
    "check_job_name",
    "check_json",
    "check_progress",
    "clean",
    "cut",
    "cut_json",
    "default_worker",
    "exception_text",
    "storable",
    "uuid7",
    "validate_cron",
    "validate_not_negative_duration",
    "validate_positive_duration",
    "was_cut",
]

_last_uuid7 = 0
_uuid7_lock = threading.Lock()


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): milliseconds, then a fraction of one, then random bits.

    The 12 bits after the milliseconds hold the sub-millisecond time (RFC 9562's method 3),
    so ids made within one millisecond still sort by time across processes; within one
    process each id is also greater than the one before. Python has ``uuid.uuid7`` only
    from 3.14, so it is made here.
    """
    global _last_uuid7
    ms, ns = divmod(time.time_ns(), 1_000_000)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (ns * 4096 // 1_000_000) << 64  # rand_a: the fraction of the millisecond
    value |= 0b10 << 62  # variant
    value |= int.from_bytes(secrets.token_bytes(8), "big") >> 2  # rand_b, 62 bits
    with _uuid7_lock:
        # The clock may repeat (or step back): keep this process's ids increasing.
        if value <= _last_uuid7:
            value = _last_uuid7 + 1
        _last_uuid7 = value
    return uuid.UUID(int=value)


def _sources(target: str, *, new_attempt: bool) -> list[str]:
    """The statuses a move to ``target`` applies from."""
    sources = Status.sources_of(target)
    if target != Status.RUNNING:
        return sources
    # running → running is only a restart (a new attempt); a start needs queued|retrying,
    # else two workers holding the same queued run would both win.
    if new_attempt:
        return [Status.RUNNING]
    return [s for s in sources if s != Status.RUNNING]


def attempt_time(text: Any) -> datetime | None:
    """A moment of an ``attempts`` entry (ISO 8601 text, UTC when naive), or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = parse_datetime(text)
    except ValueError:  # well formed, but no such time
        return None
    if moment is not None and timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


def detach_owner(collector: Any, field: Any, sub_objs: Any, using: str) -> None:
    """``on_delete`` of a run's owner: ``SET_NULL`` where the runs share the user's database.

    With the app's tables on a database of their own (``JOBSTATUS["DATABASE"]``), Django
    cleared them on the user's database, which has no such table: no user could be
    deleted at all (in code, or the admin's Delete of a user). Nothing is done here then:
    Django also collects for the admin's confirmation page, which deletes nothing.
    ``clear_deleted_owner()`` clears them once the delete is committed.
    """
    if router.db_for_write(JobRun) == using:
        models.SET_NULL(collector, field, sub_objs, using)


detach_owner.lazy_sub_objs = True  # type: ignore[attr-defined]  # as SET_NULL: no read first


def clear_deleted_owner(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """``post_delete`` of the user model: with the runs on another database than the
    user's, the deleted user's runs lose their owner there, once the delete is committed
    (a delete rolled back keeps them; no transaction spans the two databases)."""
    runs = router.db_for_write(JobRun)
    if runs == using:
        return  # detach_owner() did, in the delete's transaction
    owner = instance.pk
    transaction.on_commit(
        lambda: JobRun.objects.using(runs).filter(owner_id=owner).update(owner=None),
        using=using,
    )


class JobRun(models.Model):
    id = models.UUIDField(_("id"), primary_key=True, default=uuid7, editable=False)
    job_name = models.CharField(_("job name"), max_length=MAX_LENGTHS["job_name"])
    status = models.CharField(
        _("status"),
        max_length=MAX_LENGTHS["status"],
        choices=Status.choices,
        default=Status.QUEUED,
    )
    source = models.CharField(
        _("source"),
        max_length=MAX_LENGTHS["source"],
        blank=True,
        default="manual",
        help_text=_(
            "How the run was started: manual, command, schedule, api, admin, django_tasks, celery, rq…"
        ),
    )
    backend_job_id = models.CharField(
        _("backend job id"),
        max_length=MAX_LENGTHS["backend_job_id"],
        blank=True,
        default="",
        help_text=_("The task system's own id of this run."),
    )
    queue = models.CharField(
        _("queue"), max_length=MAX_LENGTHS["queue"], blank=True, default=""
    )
    priority = models.IntegerField(_("priority"), default=0)
    subject = models.CharField(
        _("subject"),
        max_length=MAX_LENGTHS["subject"],
        blank=True,
        default="",
        help_text=_('What the run is about, e.g. "library.Book:53".'),
    )
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    data = models.JSONField(_("data"), default=dict, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    message = models.TextField(_("message"), blank=True, default="")
    step = models.CharField(
        _("step"), max_length=MAX_LENGTHS["step"], blank=True, default=""
    )
    progress_current = models.PositiveBigIntegerField(_("progress"), default=0)
    progress_total = models.PositiveBigIntegerField(
        _("progress total"), null=True, blank=True
    )
    error = models.TextField(_("error"), blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")
    has_errors = models.BooleanField(_("has errors"), default=False)
    error_fingerprint = models.CharField(
        _("error fingerprint"),
        max_length=MAX_LENGTHS["error_fingerprint"],
        blank=True,
        default="",
        # Also a database default: code that inserts runs without it (an older release
        # during a rolling deploy, raw SQL) still works.
        db_default="",
        editable=False,
        help_text=_(
            "The error with its numbers, ids and quoted values stripped: runs failing for one cause share it."
        ),
    )
    attempt = models.PositiveIntegerField(_("attempt"), default=1)
    attempts = models.JSONField(_("earlier attempts"), default=list, blank=True)
    worker = models.CharField(
        _("worker"), max_length=MAX_LENGTHS["worker"], blank=True, default=""
    )
    owner = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=detach_owner,
        related_name="jobstatus_runs",
        db_index=False,  # jobstatus_run_owner_idx: the runs that have one (0018)
    )
    parent = models.ForeignKey(
        "self",
        verbose_name=_("parent"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        db_index=False,  # jobstatus_run_parent_idx: the runs that have one (0018)
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    due_at = models.DateTimeField(
        _("due"),
        null=True,
        blank=True,
        help_text=_(
            "When a job scheduled for later is due (an ETA or countdown, enqueue_at, "
            "run_after, a retry's delay): a worker is not expected before."
        ),
    )
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    kill_requested_at = models.DateTimeField(_("kill requested"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), default=timezone.now)

    objects = JobRunManager()

    class Meta:
        verbose_name = _("job run")
        verbose_name_plural = _("job runs")
        ordering = ["-created_at", "-id"]
        get_latest_by = "created_at"
        indexes = [
            # Newest first, and the changelist's deep pages: an index-only OFFSET (0004).
            models.Index(
                fields=["created_at", "id"], name="jobstatus_run_created_id_idx"
            ),
            models.Index(
                fields=["status", "created_at"], name="jobstatus_run_status_idx"
            ),
            # One job's runs newest first, and its deep pages: an index-only OFFSET (0012).
            models.Index(
                fields=["job_name", "created_at", "id"],
                name="jobstatus_run_job_id_idx",
            ),
            # One job's last runs to finish, the last first: what a monitor judges, however
            # long before the others a run was created (health.py, migration 0017). Partial
            # on finished_at, not the status: SQLite uses a partial index only for a query
            # that repeats its condition, and a status list is a parameter there.
            models.Index(
                fields=["job_name", "finished_at", "id"],
                condition=Q(finished_at__isnull=False),
                name="jobstatus_run_job_finished_idx",
            ),
            models.Index(fields=["finished_at"], name="jobstatus_run_finished_idx"),
            # The API's ?ordering=started_at and ?ordering=duration (migration 0002).
            models.Index(fields=["started_at"], name="jobstatus_run_started_idx"),
            models.Index(
                F("finished_at") - F("started_at"), name="jobstatus_run_duration_idx"
            ),
            models.Index(fields=["backend_job_id"], name="jobstatus_run_backend_idx"),
            models.Index(
                fields=["subject", "created_at"], name="jobstatus_run_subject_idx"
            ),
            models.Index(
                fields=["status", "heartbeat_at"],
                condition=Q(status__in=["queued", "running", "retrying"]),
                name="jobstatus_run_active_idx",
            ),
            # The active runs per job and status with the oldest's age (metrics/, migration
            # 0006): an index-only scan of the few active rows, wherever they lie.
            models.Index(
                fields=["status", "job_name", "created_at"],
                condition=Q(status__in=["queued", "running", "retrying"]),
                name="jobstatus_run_active_job_idx",
            ),
            # The failures view and the dashboard: failed and lost runs of a window, grouped
            # by cause, read from the index alone (0007, status and source since 0010).
            models.Index(
                fields=[
                    "finished_at",
                    "job_name",
                    "error_fingerprint",
                    "status",
                    "source",
                ],
                condition=Q(status__in=["failed", "lost"]),
                name="jobstatus_run_failure_idx",
            ),
            # The same, one range per job and cause: the newest groups' figures without
            # reading the whole window's failures (0015).
            models.Index(
                fields=[
                    "job_name",
                    "error_fingerprint",
                    "finished_at",
                    "status",
                    "source",
                ],
                condition=Q(status__in=["failed", "lost"]),
                name="jobstatus_run_group_idx",
            ),
            # The changelist's other filters, each an index range newest first however few
            # runs match: without, a rare value walked every run (0014).
            models.Index(
                fields=["source", "created_at", "id"], name="jobstatus_run_source_idx"
            ),
            models.Index(
                fields=["worker", "created_at", "id"], name="jobstatus_run_worker_idx"
            ),
            models.Index(
                fields=["queue", "created_at", "id"], name="jobstatus_run_queue_idx"
            ),
            models.Index(
                fields=["created_at", "id"],
                condition=Q(kill_requested_at__isnull=False),
                name="jobstatus_run_kill_idx",
            ),
            models.Index(
                fields=["created_at", "id"],
                condition=Q(has_errors=True),
                name="jobstatus_run_errors_idx",
            ),
            models.Index(
                fields=["error_fingerprint", "created_at", "id"],
                condition=Q(status__in=["failed", "lost"]),
                name="jobstatus_run_cause_idx",
            ),
            # The two nullable foreign keys, on the runs that have one (0018): most runs
            # have neither, and an index of the whole column held an entry for each.
            # ``parent_id = x`` and ``owner_id = x`` imply the condition, as does the
            # SET NULL each run deleted fires for its children.
            models.Index(
                fields=["parent"],
                condition=Q(parent__isnull=False),
                name="jobstatus_run_parent_idx",
            ),
            models.Index(
                fields=["owner"],
                condition=Q(owner__isnull=False),
                name="jobstatus_run_owner_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress_total__isnull=True)
                | Q(progress_current__lte=F("progress_total")),
                name="jobstatus_run_progress_le_total",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_name} ({self.get_status_display()}) {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("admin:django_jobstatus_jobrun_change", args=[self.pk])

    def get_status_display(self) -> str:  # type: ignore[no-redef]  # django-stubs declares Django's
        """The status's label, like Django's own, without rebuilding a dict of the choices
        each call (which cost most of a changelist row: every row shows it twice).
        """
        try:
            return str(Status(self.status).label)
        except ValueError:
            return str(self.status)

    # Derived values.

    @property
    def progress(self) -> float | None:
        """Share done, 0.0 to 1.0; None while the total is unknown."""
        if not self.progress_total:
            return 1.0 if self.progress_total == 0 and self.is_finished else None
        return min(self.progress_current / self.progress_total, 1.0)

    @property
    def percent_done(self) -> int | None:
        """The share done in whole percent, rounded down, as every label shows it: 100
        only once the work is all done (999 of 1,000 reads 99, not 100); None while the
        total is unknown."""
        if self.progress is None:
            return None
        if not self.progress_total:
            return 100  # a finished run that had nothing to do
        return min(self.progress_current * 100 // self.progress_total, 100)

    @property
    def duration(self) -> timedelta | None:
        """Run time of the last attempt; grows while it runs."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def waiting(self) -> timedelta | None:
        """Time spent queued before the first start; grows while it waits."""
        if self.queued_at is None:
            return None
        started = self._first_start() or self.started_at
        return (started or self.finished_at or timezone.now()) - self.queued_at

    def _first_start(self) -> datetime | None:
        """The first attempt's start, from ``attempts`` (a retry clears ``started_at``)."""
        first = self.attempts[0] if self.attempts else None
        return attempt_time(
            first.get("started_at") if isinstance(first, dict) else None
        )

    @property
    def is_active(self) -> bool:
        return self.status in Status.ACTIVE

    @property
    def is_finished(self) -> bool:
        return self.status in Status.TERMINAL

    @property
    def kill_requested(self) -> bool:
        return self.kill_requested_at is not None

    # Transitions: each is one conditional UPDATE, so two processes can never both win.

    def _db(self, using: str | None) -> str:
        return using or write_database(self._state.db)

    def _transition(
        self,
        target: str,
        *,
        using: str | None = None,
        new_attempt: bool = False,
        **values: Any,
    ) -> None:
        db = self._db(using)
        previous = self.status
        now = timezone.now()
        values = {"status": target, "updated_at": now, **storable(values)}
        stamps = self._stamps(target, now, values)
        updates: dict[str, Any] = dict(values)
        for field, stamp in stamps.items():
            # First entry only: a stamp already set stays.
            updates[field] = (
                Coalesce(F(field), stamp)
                if not new_attempt or field != "started_at"
                else stamp
            )
        sources = _sources(target, new_attempt=new_attempt)
        # A move applies to the state this instance saw, status and attempt: a worker
        # finishing attempt 1 cannot end attempt 2 that a restart opened meanwhile, the
        # history of a new attempt is built from this instance's fields, and ``previous``
        # is exactly the status the run left.
        updated = 0
        if previous in sources:
            if statements.usable(db) and not any(
                hasattr(value, "resolve_expression")
                and not isinstance(value, DatabaseNow)  # statements write it
                for value in values.values()
            ):
                # The same UPDATE from SQL text made once (issue 12: the ORM's compiling
                # cost more than the statement).
                first = {
                    field: stamp
                    for field, stamp in stamps.items()
                    if not new_attempt or field != "started_at"
                }
                plain = {
                    field: value
                    for field, value in updates.items()
                    if field not in first
                }
                updated = statements.move(
                    db, self.pk, previous, self.attempt, plain, first
                )
            else:
                updated = (
                    JobRun.objects.using(db)
                    .filter(pk=self.pk)
                    .still(previous, self.attempt)
                    .update(**updates)
                )
        if not updated:
            raise self._refusal(db, target, sources, previous)
        for field, value in values.items():
            setattr(self, field, value)
        for field, stamp in stamps.items():
            if new_attempt or getattr(self, field) is None:
                setattr(self, field, stamp)
        self._announce(previous, target, db)

    def _stamps(
        self, target: str, now: datetime, values: dict[str, Any]
    ) -> dict[str, datetime]:
        """The first-entry timestamps a move to ``target`` sets; adds the other values it implies."""
        stamps: dict[str, datetime] = {}
        if target == Status.QUEUED:
            stamps["queued_at"] = now
        elif target == Status.RUNNING:
            stamps["started_at"] = self._after_queued(now)
            values.setdefault("heartbeat_at", database_now(now))
        elif target in Status.TERMINAL:
            values.setdefault("finished_at", self._end(now))
        if target in (Status.FAILED, Status.LOST):
            values["error_fingerprint"] = self._fingerprint(target, values)
        return stamps

    def _end(self, now: datetime) -> datetime:
        """The end of this attempt at ``now``, never before its start: the process that
        ends it (a forced kill from the web server, say) may have a clock behind the
        worker's that stamped ``started_at``, and the duration would be negative. A run
        that never started ends no earlier than it was queued.

        The instance's ``started_at`` is the row's: a move applies only to the status
        and attempt this instance saw, and an attempt's start is stamped once.
        """
        if self.started_at is not None:
            return max(now, self.started_at)
        return self._after_queued(now)

    def _after_queued(self, now: datetime) -> datetime:
        """``now``, or the run's enqueue when that is later: the web server that enqueued
        it may have a clock ahead of the worker's that starts it (or of the host that
        kills it waiting), and the run would start before it was queued (a negative
        ``waiting``)."""
        return max(now, self.queued_at) if self.queued_at is not None else now

    def _refusal(
        self, db: str, target: str, sources: list[str], previous: str
    ) -> Exception:
        """Why the conditional UPDATE of a move to ``target`` changed no row, read from the row."""
        current = (
            JobRun.objects.using(db)
            .filter(pk=self.pk)
            .values_list("status", "attempt")
            .first()
        )
        if current is None:
            return JobRun.DoesNotExist(f"Run {self.pk} does not exist.")
        status, attempt = current
        if status not in sources:
            return InvalidTransition(
                f"Run {self.pk} cannot move from {status} to {target}.", status=status
            )
        if attempt != self.attempt:
            return InvalidTransition(
                f"Run {self.pk} is at attempt {attempt}, not {self.attempt}; reload it first.",
                status=status,
            )
        return InvalidTransition(
            f"Run {self.pk} is {status}, not {previous}; reload it first.",
            status=status,
        )

    def _announce(self, previous: str, target: str, using: str) -> None:
        """Send job_status_changed for a move this run made, once its transaction commits.

        With a copy of the run as this move left it: a later move in the same transaction
        (a batch's parent settled queued → running → succeeded) changes the instance.
        A receiver's error is logged, never raised: the move is committed, and an
        observer's bug failed a job that had succeeded, cut a reap or a forced kill
        short (the other runs left running, the task system never told), and, in a
        transaction, dropped the announcements of the moves after it.
        """
        run = copy.copy(self)

        def send() -> None:
            for receiver, answer in job_status_changed.send_robust(
                sender=JobRun, run=run, previous=previous, status=target
            ):
                if isinstance(answer, Exception):
                    logger.error(
                        "A job_status_changed receiver (%r) failed for run %s.",
                        receiver,
                        run.pk,
                        exc_info=answer,
                    )

        transaction.on_commit(send, using=using)

    def _fingerprint(self, target: str, values: dict[str, Any]) -> str:
        """The cause of a failed or lost run: its error, or a lost run's message."""
        text = values.get("error", self.error) or ""
        if not text and target == Status.LOST:
            text = values.get("message", self.message) or ""
        return fingerprint(str(text))

    def _next_attempt(self, outcome: str, error: str, now: datetime) -> dict[str, Any]:
        """Field values that close the current attempt into ``attempts`` and open the next."""
        entry = {
            "attempt": self.attempt,
            "status": outcome,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self._end(now).isoformat(),
            "worker": self.worker,
            "error": storable({"error": error})["error"],
        }
        return {"attempt": self.attempt + 1, "attempts": [*self.attempts, entry]}

    def mark_queued(self, *, using: str | None = None, **fields: Any) -> None:
        """retrying → queued (the next attempt waits for a worker)."""
        self._transition(Status.QUEUED, using=using, **fields)

    def mark_running(
        self, *, worker: str | None = None, using: str | None = None
    ) -> None:
        """queued|retrying → running; running → running is a restart (a new attempt).

        The attempt starts with no ``error`` or ``traceback``: an earlier attempt's are in ``attempts``.
        """
        values: dict[str, Any] = {
            "worker": worker if worker is not None else default_worker(),
            "error": "",
            "traceback": "",
        }
        if self.status == Status.RUNNING:
            now = timezone.now()
            values |= self._next_attempt("restarted", self.error, now)
            values |= {"finished_at": None}
            self._transition(Status.RUNNING, using=using, new_attempt=True, **values)
        else:
            self._transition(Status.RUNNING, using=using, **values)

    def mark_succeeded(
        self, result: Any = None, *, using: str | None = None, **fields: Any
    ) -> None:
        """running → succeeded, with the job's result (and no error left from an earlier attempt)."""
        check_json("result", result)
        fields.setdefault("error", "")
        fields.setdefault("traceback", "")
        self._transition(Status.SUCCEEDED, using=using, result=result, **fields)

    def mark_failed(
        self,
        exc: BaseException | None = None,
        *,
        retry: bool = False,
        using: str | None = None,
        **fields: Any,
    ) -> None:
        """running → failed (or → retrying with ``retry=True``), recording the error."""
        if exc is not None:
            fields.setdefault("error", exception_text(exc))
            fields.setdefault("traceback", "".join(tb.format_exception(exc)))
        fields.setdefault("error", self.error or "")
        if retry:
            now = timezone.now()
            fields |= self._next_attempt(Status.RETRYING, fields["error"], now)
            fields |= {"started_at": None}
            self._transition(Status.RETRYING, using=using, new_attempt=True, **fields)
        else:
            self._transition(Status.FAILED, using=using, **fields)

    def mark_killed(self, *, using: str | None = None, **fields: Any) -> None:
        """queued|running|retrying → killed."""
        fields.setdefault(
            "message",
            str(_("Killed on request.")) if self.kill_requested else str(_("Killed.")),
        )
        self._transition(Status.KILLED, using=using, **fields)

    def mark_lost(self, *, using: str | None = None, **fields: Any) -> None:
        """running → lost: the worker process running it died (the reaper, which finds a
        run whose heartbeats stopped, gives its own message)."""
        fields.setdefault(
            "message", str(_("Lost: the worker process running it died."))
        )
        self._transition(Status.LOST, using=using, **fields)

    # Writes that are not transitions.

    def request_kill(self, *, using: str | None = None) -> bool:
        """Ask the job (and its task system) to stop, as ``JobRunQuerySet.request_kill()``
        does; True when the run is active and was not asked already."""
        result = JobRun.objects.using(self._db(using)).filter(pk=self.pk).request_kill()
        if result:
            self.kill_requested_at = result.requested_at
        return bool(result)

    def set_progress(
        self,
        current: float,
        total: float | None = None,
        *,
        step: str | None = None,
        message: str | None = None,
        using: str | None = None,
    ) -> None:
        """Store progress now (unthrottled; running jobs use ``track()``'s handle).

        A run that has ended is left as it is (a copy read before its end cannot move it),
        and so is a next attempt (a copy of an earlier one cannot move it either).
        Without ``total``, ``current`` past the stored total raises ValueError.
        """
        current_n, total_n = check_progress(current, total)
        now = timezone.now()
        values: dict[str, Any] = {
            "progress_current": current_n,
            "heartbeat_at": database_now(now),
            "updated_at": now,
        }
        if total is not None:
            values["progress_total"] = total_n
        if step is not None:
            values["step"] = step
        if message is not None:
            values["message"] = message
        values = storable(values)
        runs = (
            JobRun.objects.using(self._db(using))
            .filter(pk=self.pk, attempt=self.attempt)
            .active()
        )
        # Judged on the stored total, not this copy's: another writer may have changed
        # it since this copy was read (a new step), and the UPDATE would break the
        # progress <= total constraint.
        fits = (
            runs
            if total is not None
            else runs.filter(
                Q(progress_total__isnull=True) | Q(progress_total__gte=current_n)
            )
        )
        if fits.update(**values):
            for field, value in values.items():
                setattr(self, field, value)
            return
        if total is not None:
            return  # the run has ended
        stored = runs.values_list("progress_total", flat=True).first()
        # Nothing written: past the stored total, or the run has ended (left as it is).
        if stored is not None and current_n > stored:
            self.progress_total = stored
            raise ValueError(
                f"progress current ({current_n}) is greater than total ({stored})"
            )

    def heartbeat(self, *, using: str | None = None) -> None:
        """Stamp ``heartbeat_at`` now, while the run is running at this copy's attempt (a
        next attempt lives and dies with the worker that started it)."""
        now = database_now()
        runs = (
            JobRun.objects.using(self._db(using))
            .filter(pk=self.pk)
            .still(Status.RUNNING, self.attempt)
        )
        if runs.update(heartbeat_at=now):
            self.heartbeat_at = now

    def log(
        self,
        level: int,
        message: str,
        *args: Any,
        extra: dict[str, Any] | None = None,
        using: str | None = None,
    ) -> JobLog:
        """Write one log line now; ``level`` is a ``logging`` level number."""
        entry = JobLog.build(self, level, message, *args, extra=extra)
        db = self._db(using)
        if entry.level < 40 or self.has_errors:
            entry.save(using=db)
            return entry
        with transaction.atomic(using=db):  # the error line and the flag, or neither
            entry.save(using=db)
            JobRun.objects.using(db).filter(pk=self.pk).update(has_errors=True)
        self.has_errors = True
        return entry

    def wait(
        self,
        statuses: str | Iterable[str] | None = None,
        timeout: float = 60,
        *,
        interval: float = 0.2,
    ) -> JobRun:
        """Block until the run is in one of ``statuses`` (default: finished); TimeoutError after ``timeout`` s.

        One status may be given alone (``wait("running")``); a status that does not exist
        is a ValueError (it was waited for until the timeout, a string as its letters).
        """
        if statuses is None:
            wanted = Status.TERMINAL
        else:
            wanted = frozenset([statuses] if isinstance(statuses, str) else statuses)
            unknown = sorted(map(str, wanted - set(Status.values)))
            if unknown:
                raise ValueError(
                    f"statuses must be statuses of a run ({', '.join(Status.values)}), "
                    f"not {', '.join(unknown)}"
                )
        deadline = time.monotonic() + timeout
        while True:
            self.refresh_from_db()
            if self.status in wanted:
                return self
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Run {self.pk} is still {self.status} after {timeout} s."
                )
            time.sleep(min(interval, max(deadline - time.monotonic(), 0)))


class JobLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(
        JobRun,
        verbose_name=_("run"),
        on_delete=models.CASCADE,
        related_name="logs",
        # jobstatus_log_run_idx (run, created_at) serves every lookup by run (0004).
        db_index=False,
    )
    created_at = models.DateTimeField(_("time"), default=timezone.now)
    level = models.PositiveSmallIntegerField(_("level"), default=20)
    message = models.TextField(_("message"))
    extra = models.JSONField(_("extra"), default=dict, blank=True)

    objects = JobLogQuerySet.as_manager()

    class Meta:
        verbose_name = _("job log")
        verbose_name_plural = _("job logs")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["run", "created_at"], name="jobstatus_log_run_idx"),
            models.Index(
                fields=["run", "level", "created_at"], name="jobstatus_log_level_idx"
            ),
            models.Index(
                fields=["created_at", "id"], name="jobstatus_log_created_id_idx"
            ),
            # "Warnings and errors, newest first" across all runs, without the info lines;
            # with the level, "errors" pages skip the warnings in the index alone (0013).
            models.Index(
                fields=["created_at", "id", "level"],
                condition=models.Q(level__gte=30),
                name="jobstatus_log_warn_level_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.level_name}: {self.message[:80]}"

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level)

    @classmethod
    def build(
        cls,
        run: JobRun | Any,
        level: int,
        message: str,
        *args: Any,
        extra: dict[str, Any] | None = None,
    ) -> JobLog:
        """An unsaved line: ``%``-formatted, cut to LOG_MAX_LENGTH, ``extra`` checked for JSON."""
        # What the level column holds everywhere (a smallint on PostgreSQL).
        highest = 32767
        if (
            isinstance(level, bool)
            or not isinstance(level, int)
            or not 0 <= level <= highest
        ):
            raise ValueError(
                f"log level must be a logging level number from 0 to {highest}, not {level!r}"
            )
        text = str(message)
        if args:
            text = text % args
        extra = extra or {}
        check_json("extra", extra)
        run_id = run.pk if isinstance(run, JobRun) else run
        return cls(
            run_id=run_id,
            level=level,
            message=cut(clean(text), settings.LOG_MAX_LENGTH),
            extra=cut_json(clean(extra), settings.JSON_MAX_LENGTH),
        )


class Dashboard(JobRun):
    """No table: the admin index's link to the dashboard (a proxy model, as django-rq does)."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
        default_permissions = ()


# Health: one monitor per job name, and the incidents its state changes open and resolve.


class MonitorState(models.TextChoices):
    HEALTHY = "healthy", _("Healthy")
    LATE = "late", _("Late")
    FAILING = "failing", _("Failing")
    SLOW = "slow", _("Slow")
    DISABLED = "disabled", _("Disabled")

    # The states that open an incident, worst first (the panel's order).
    UNHEALTHY: ClassVar[tuple[str, ...]]


MonitorState.UNHEALTHY = (MonitorState.FAILING, MonitorState.LATE, MonitorState.SLOW)

_MONITOR_STATE_LENGTH = max(len(value) for value in MonitorState.values)


def validate_cron(value: str) -> None:
    """A cron expression (5 fields, or 6 with seconds) that fires at least once."""
    try:
        next(CronSim(value, timezone.now()))
    except (CronSimError, StopIteration) as exc:
        raise ValidationError(
            _("“%(value)s” is not a cron expression: %(error)s"),
            code="invalid_cron",
            params={"value": escaped(value), "error": exc or _("it never fires")},
        ) from exc


# The longest duration a monitor takes: past it, SQLite's microseconds overflow 64 bits.
MONITOR_MAX_DURATION = timedelta(days=36500)


def _validate_at_most(value: timedelta) -> None:
    if value > MONITOR_MAX_DURATION:
        raise ValidationError(
            _("Give a duration of at most 100 years."), code="too_long"
        )


def validate_positive_duration(value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValidationError(
            _("Give a duration longer than zero."), code="not_positive"
        )
    _validate_at_most(value)


def validate_not_negative_duration(value: timedelta) -> None:
    if value < timedelta(0):
        raise ValidationError(_("Give a duration of zero or more."), code="negative")
    _validate_at_most(value)


class JobMonitor(models.Model):
    """What a healthy job looks like: how often it runs, how long it may take, how often it may fail.

    ``save()`` validates (``full_clean()``): a bad value raises ``ValidationError`` naming
    the field and writes nothing. It stamps ``enabled_at`` when it turns a disabled
    monitor on again, and ``cadence_changed_at`` when it changes ``every`` or ``cron`` (a
    queryset ``update()`` stamps neither). ``state`` is written by the evaluation only
    (``django_jobstatus.health``).
    """

    job_name = models.CharField(
        _("job name"),
        max_length=JOB_NAME_MAX_LENGTH,
        unique=True,
        help_text=_("The job to watch: a name its runs are recorded with."),
    )
    every = models.DurationField(
        _("every"),
        null=True,
        blank=True,
        validators=[validate_positive_duration],
        help_text=_(
            "How often the job should start, e.g. “1:00:00” for hourly. Or give a cron expression."
        ),
    )
    cron = models.CharField(
        _("cron"),
        max_length=255,
        blank=True,
        default="",
        validators=[validate_cron],
        help_text=_(
            "When the job should start, as a cron expression in TIME_ZONE, e.g. “0 2 * * *”."
        ),
    )
    grace = models.DurationField(
        _("grace"),
        default=timedelta(minutes=5),
        validators=[validate_not_negative_duration],
        help_text=_(
            "How long after the expected time a missing run is still not late."
        ),
    )
    max_duration = models.DurationField(
        _("maximum duration"),
        null=True,
        blank=True,
        validators=[validate_positive_duration],
        help_text=_("A run taking longer is slow."),
    )
    max_duration_p95_factor = models.FloatField(
        _("maximum duration, × p95"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1.0), MaxValueValidator(1000.0)],
        help_text=_(
            "A run taking longer than this many times the job's own p95 duration is slow "
            "(p95 of its recent finished runs). Instead of a maximum duration."
        ),
    )
    max_failures = models.PositiveIntegerField(
        _("maximum failures"),
        default=1,
        validators=[MaxValueValidator(100)],
        help_text=_(
            "This many failed runs in a row make the job failing; 0: failures never do."
        ),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    state = models.CharField(
        _("state"),
        max_length=_MONITOR_STATE_LENGTH,
        choices=MonitorState.choices,
        default=MonitorState.HEALTHY,
        editable=False,
    )
    state_changed_at = models.DateTimeField(
        _("state changed"), null=True, blank=True, editable=False
    )
    checked_at = models.DateTimeField(
        _("last checked"), null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(
        _("created"), default=timezone.now, editable=False
    )
    enabled_at = models.DateTimeField(
        _("enabled again"),
        null=True,
        blank=True,
        editable=False,
        help_text=_(
            "When the monitor was last turned on again; no run is expected before. "
            "Empty: on since its creation."
        ),
    )
    cadence_changed_at = models.DateTimeField(
        _("cadence changed"),
        null=True,
        blank=True,
        editable=False,
        help_text=_(
            "When “every” or the cron expression last changed; the new cadence expects "
            "no run before. Empty: unchanged since its creation."
        ),
    )

    class Meta:
        verbose_name = _("job monitor")
        verbose_name_plural = _("job monitors")
        ordering = ["job_name"]
        indexes = [
            models.Index(
                fields=["state", "job_name"], name="jobstatus_monitor_state_idx"
            )
        ]

    def __str__(self) -> str:
        return self.job_name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean()
        update_fields = kwargs.get("update_fields")
        using = kwargs.get("using")
        stamps = {
            "enabled_at": self._turned_on_again(using, update_fields),
            "cadence_changed_at": self._cadence_changed(using, update_fields),
        }
        for field in [name for name, stamp in stamps.items() if stamp]:
            setattr(self, field, timezone.now())
            if update_fields is not None:
                kwargs["update_fields"] = update_fields = {*update_fields, field}
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("admin:django_jobstatus_jobmonitor_change", args=[self.pk])

    def clean(self) -> None:
        factor = self.max_duration_p95_factor
        if factor is not None and math.isnan(factor):
            # NaN passes both bounds (each comparison is false), and every check raised.
            raise ValidationError(
                {"max_duration_p95_factor": _("Enter a number.")}, code="invalid"
            )
        if self.every is not None and self.cron:
            raise ValidationError(
                {"cron": _("Give either “every” or a cron expression, not both.")},
                code="both_cadences",
            )
        if self.max_duration is not None and self.max_duration_p95_factor is not None:
            raise ValidationError(
                {
                    "max_duration_p95_factor": _(
                        "Give either a maximum duration or a multiple of p95, not both."
                    )
                },
                code="both_limits",
            )
        # On DATABASE: a replica (READ_DATABASE) may not have the run of a job that just ran.
        if (
            self._names_a_new_job()
            and not JobRun.objects.for_job(self.job_name).writing().exists()
        ):
            raise ValidationError(
                {
                    "job_name": _(
                        "No run of “%(name)s” has been recorded; a monitor watches a job that has run at least once."
                    )
                    % {"name": self.job_name}
                },
                code="unknown_job",
            )

    def validate_unique(self, exclude: Collection[str] | None = None) -> None:
        """Django's, with the job name asked of DATABASE: a replica (READ_DATABASE) may
        not have a monitor just created, and the insert failed (an IntegrityError)."""
        skipped = set(exclude or ())
        super().validate_unique(exclude=skipped | {"job_name"})
        if "job_name" in skipped or not self.job_name:
            return
        stored = type(self)._default_manager.using(write_database(self._state.db))
        if stored.filter(job_name=self.job_name).exclude(pk=self.pk).exists():
            raise ValidationError(
                {"job_name": [self.unique_error_message(type(self), ("job_name",))]}
            )

    @property
    def is_unhealthy(self) -> bool:
        return self.state in MonitorState.UNHEALTHY

    def _names_a_new_job(self) -> bool:
        """Whether the job name is new to this monitor (it is added, or watches another
        job now): a monitor kept after its job's runs were purged stays editable."""
        if not self.job_name:
            return False
        if self._state.adding:
            return True
        stored = type(self)._default_manager.using(write_database(self._state.db))
        return not stored.filter(pk=self.pk, job_name=self.job_name).exists()

    def _cadence_changed(self, using: str | None, update_fields: Any) -> bool:
        """Whether this save changes ``every`` or ``cron`` from their stored values (read by
        primary key, as ``_turned_on_again()`` reads ``enabled``)."""
        if self._state.adding:
            return False
        if update_fields is not None and not {"every", "cron"} & set(update_fields):
            return False
        db = using or router.db_for_write(type(self), instance=self)
        stored = type(self)._default_manager.using(db)
        return not stored.filter(pk=self.pk, every=self.every, cron=self.cron).exists()

    def _turned_on_again(self, using: str | None, update_fields: Any) -> bool:
        """Whether this save turns a disabled monitor on: the stored value is read (by
        primary key, only when an existing monitor is saved enabled), not the one the
        instance was loaded with, which another process may have changed since.
        ``JobMonitor.objects.update(enabled=True)`` bypasses ``save()`` and stamps nothing."""
        if not self.enabled or self._state.adding:
            return False
        if update_fields is not None and "enabled" not in update_fields:
            return False
        db = using or router.db_for_write(type(self), instance=self)
        return (
            type(self)
            ._default_manager.using(db)
            .filter(pk=self.pk, enabled=False)
            .exists()
        )


class JobMonitorIncident(models.Model):
    """One stretch of time a monitor spent late, failing or slow."""

    monitor = models.ForeignKey(
        JobMonitor,
        verbose_name=_("monitor"),
        on_delete=models.CASCADE,
        related_name="incidents",
    )
    state = models.CharField(
        _("state"),
        max_length=_MONITOR_STATE_LENGTH,
        choices=[(s, MonitorState(s).label) for s in MonitorState.UNHEALTHY],
    )
    opened_at = models.DateTimeField(_("opened"), default=timezone.now)
    resolved_at = models.DateTimeField(_("resolved"), null=True, blank=True)
    # What the end's alert says when it is sent again after the monitor moved on.
    resolved_to = models.CharField(
        _("resolved to"),
        max_length=_MONITOR_STATE_LENGTH,
        choices=MonitorState.choices,
        blank=True,
        default="",
        help_text=_("The state the monitor moved to as the incident ended."),
    )
    detail = models.TextField(_("detail"), blank=True, default="")
    # Not a foreign key: a purged run must not cost the purge a join (and the incident stays).
    run_id = models.UUIDField(
        _("run"),
        null=True,
        blank=True,
        help_text=_("The run that showed the problem, when one did."),
    )
    # An alert is queued (its process claims it), then goes out: see health.py.
    open_alert_queued_at = models.DateTimeField(
        _("opening alert queued"),
        null=True,
        blank=True,
        help_text=_(
            "When a process last took the alert of the opening to send it. While the "
            "alert has not gone out, manage.py check_jobstatus sends it again (for a day)."
        ),
    )
    open_alert_at = models.DateTimeField(
        _("opening alerted"),
        null=True,
        blank=True,
        help_text=_(
            "When the alert of the opening went out (a channel took it). Empty: none did "
            "(no alert target is set, the rate limit, or it is queued: see when)."
        ),
    )
    resolve_alert_queued_at = models.DateTimeField(
        _("resolution alert queued"),
        null=True,
        blank=True,
        help_text=_(
            "When a process last took the alert of the resolution to send it. While the "
            "alert has not gone out, manage.py check_jobstatus sends it again (for a day)."
        ),
    )
    resolve_alert_at = models.DateTimeField(
        _("resolution alerted"),
        null=True,
        blank=True,
        help_text=_(
            "When the alert of the resolution went out (a channel took it). Empty: none "
            "did (its opening was not announced, or it is queued: see when)."
        ),
    )

    class Meta:
        verbose_name = _("monitor incident")
        verbose_name_plural = _("monitor incidents")
        ordering = ["-opened_at", "-id"]
        indexes = [
            models.Index(
                fields=["monitor", "opened_at"], name="jobstatus_incident_monitor_idx"
            ),
            models.Index(fields=["opened_at"], name="jobstatus_incident_opened_idx"),
            # The alerts queued and not gone out, for health.resend(): a few rows at most.
            models.Index(
                fields=["open_alert_queued_at"],
                condition=Q(
                    open_alert_at__isnull=True, open_alert_queued_at__isnull=False
                ),
                name="jobstatus_incident_open_unsent",
            ),
            models.Index(
                fields=["resolve_alert_queued_at"],
                condition=Q(
                    resolve_alert_at__isnull=True, resolve_alert_queued_at__isnull=False
                ),
                name="jobstatus_incident_res_unsent",
            ),
        ]
        constraints = [
            # At most one open incident per monitor: two checks at once cannot both open one.
            models.UniqueConstraint(
                fields=["monitor"],
                condition=Q(resolved_at__isnull=True),
                name="jobstatus_incident_one_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.monitor_id}: {self.get_state_display()} {self.opened_at:%Y-%m-%d %H:%M}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    @property
    def duration(self) -> timedelta:
        return (self.resolved_at or timezone.now()) - self.opened_at


class JobRunHour(models.Model):
    """The runs of one job that finished in one closed hour (or UTC day), in one duration bucket.

    A roll-up, filled lazily by ``django_jobstatus.rollups`` for hours that are over (a run
    finishes at "now", so a past hour's figures never change), read by the dashboard
    instead of the runs themselves. A row with an empty ``job_name`` marks an hour (a day)
    as rolled up and holds its totals. Runs deleted afterwards (purge, delete) stay
    counted: these are what happened.
    """

    # Where the row starts; ``hours``: 1, or 24 for a day's sum of its hours' rows.
    hour = models.DateTimeField(_("hour"))
    hours = models.PositiveSmallIntegerField(_("hours"), default=1)
    job_name = models.CharField(_("job name"), max_length=JOB_NAME_MAX_LENGTH)
    # querysets.duration_bucket(): the histogram bucket of the runs' durations.
    duration_bucket = models.SmallIntegerField(_("duration bucket"))
    succeeded = models.PositiveIntegerField(_("succeeded"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    killed = models.PositiveIntegerField(_("killed"), default=0)
    lost = models.PositiveIntegerField(_("lost"), default=0)
    seconds = models.FloatField(_("seconds"), null=True, blank=True)

    class Meta:
        verbose_name = _("hourly figures")
        verbose_name_plural = _("hourly figures")
        default_permissions = ()
        constraints = [
            # Two fills of one hour at once insert it once (ON CONFLICT DO NOTHING).
            models.UniqueConstraint(
                fields=["hour", "hours", "job_name", "duration_bucket"],
                name="jobstatus_figures_unique",
            ),
        ]
        indexes = [
            # The markers of a window's hours and days (the chart, and what is rolled up).
            models.Index(
                fields=["hours", "hour"],
                condition=Q(job_name=""),
                name="jobstatus_figures_marker_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_name} {self.hour:%Y-%m-%d %H:00} [{self.duration_bucket}]"
