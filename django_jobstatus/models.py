"""JobRun (one run of a background job) and JobLog (its log lines)."""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import time
import traceback as tb
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings as django_settings
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.fingerprints import FINGERPRINT_MAX_LENGTH, fingerprint
from django_jobstatus.querysets import JobLogQuerySet, JobRunQuerySet
from django_jobstatus.signals import job_status_changed

if TYPE_CHECKING:
    from collections.abc import Iterable

JOB_NAME_MAX_LENGTH = 255


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


def default_worker() -> str:
    """``host:pid`` of this process, or ``JOBSTATUS["WORKER_NAME"]``."""
    return settings.WORKER_NAME or f"{socket.gethostname()}:{os.getpid()}"


def check_json(field: str, value: Any) -> None:
    """Raise TypeError naming ``field`` when ``value`` cannot be stored as JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{field} must be JSON-serializable: {exc}") from exc


def check_job_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("job_name must be a non-empty string")
    if len(name) > JOB_NAME_MAX_LENGTH:
        raise ValueError(
            f"job_name is {len(name)} characters long; the most is {JOB_NAME_MAX_LENGTH}"
        )
    return name


def check_amount(name: str, value: Any) -> int:
    """A progress figure as a whole number; ``ValueError`` naming it when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of 0 or more, not {value!r}")
    return int(value)


def check_progress(current: Any, total: Any = None) -> tuple[int, int | None]:
    """Validate a progress pair; return it as whole numbers."""
    current_n = check_amount("progress current", current)
    total_n = None if total is None else check_amount("progress total", total)
    if total_n is not None and current_n > total_n:
        raise ValueError(
            f"progress current ({current_n}) is greater than total ({total_n})"
        )
    return current_n, total_n


def exception_text(exc: BaseException) -> str:
    """``"ExcClass: message"`` (or just the class when the message is empty)."""
    name = type(exc).__qualname__
    text = str(exc)
    return f"{name}: {text}" if text else name


def cut(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, ending with a visible marker when cut."""
    if len(text) <= limit:
        return text
    marker = f"… [cut {len(text) - limit} characters]"
    return text[: max(limit - len(marker), 0)] + marker


class Status(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    RETRYING = "retrying", _("Retrying")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    KILLED = "killed", _("Killed")
    LOST = "lost", _("Lost")

    # Enum members cannot be declared in the class body as sets; they are set below.
    TERMINAL: ClassVar[frozenset[str]]
    ACTIVE: ClassVar[frozenset[str]]
    LEGAL_MOVES: ClassVar[dict[str, frozenset[str]]]

    @classmethod
    def sources_of(cls, target: str) -> list[str]:
        """The statuses a run may move to ``target`` from."""
        return sorted(
            source for source, targets in cls.LEGAL_MOVES.items() if target in targets
        )


Status.TERMINAL = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST}
)
Status.ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING})
Status.LEGAL_MOVES = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.KILLED}),
    Status.RUNNING: frozenset(
        {
            Status.SUCCEEDED,
            Status.FAILED,
            Status.RETRYING,
            Status.KILLED,
            Status.LOST,
            Status.RUNNING,
        }
    ),
    Status.RETRYING: frozenset({Status.QUEUED, Status.RUNNING, Status.KILLED}),
}

_STATUS_LENGTH = max(len(value) for value in Status.values)


class JobRun(models.Model):
    id = models.UUIDField(_("id"), primary_key=True, default=uuid7, editable=False)
    job_name = models.CharField(_("job name"), max_length=JOB_NAME_MAX_LENGTH)
    status = models.CharField(
        _("status"),
        max_length=_STATUS_LENGTH,
        choices=Status.choices,
        default=Status.QUEUED,
    )
    source = models.CharField(
        _("source"),
        max_length=50,
        blank=True,
        default="manual",
        help_text=_(
            "How the run was started: manual, command, schedule, api, admin, django_tasks, celery, rq…"
        ),
    )
    backend_job_id = models.CharField(
        _("backend job id"),
        max_length=255,
        blank=True,
        default="",
        help_text=_("The task system's own id of this run."),
    )
    queue = models.CharField(_("queue"), max_length=255, blank=True, default="")
    priority = models.IntegerField(_("priority"), default=0)
    subject = models.CharField(
        _("subject"),
        max_length=255,
        blank=True,
        default="",
        help_text=_('What the run is about, e.g. "library.Book:53".'),
    )
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    data = models.JSONField(_("data"), default=dict, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    message = models.TextField(_("message"), blank=True, default="")
    step = models.CharField(_("step"), max_length=255, blank=True, default="")
    progress_current = models.PositiveBigIntegerField(_("progress"), default=0)
    progress_total = models.PositiveBigIntegerField(
        _("progress total"), null=True, blank=True
    )
    error = models.TextField(_("error"), blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")
    has_errors = models.BooleanField(_("has errors"), default=False)
    error_fingerprint = models.CharField(
        _("error fingerprint"),
        max_length=FINGERPRINT_MAX_LENGTH,
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
    worker = models.CharField(_("worker"), max_length=255, blank=True, default="")
    owner = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobstatus_runs",
    )
    parent = models.ForeignKey(
        "self",
        verbose_name=_("parent"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    kill_requested_at = models.DateTimeField(_("kill requested"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), default=timezone.now)

    objects = JobRunQuerySet.as_manager()

    class Meta:
        verbose_name = _("job run")
        verbose_name_plural = _("job runs")
        ordering = ["-created_at", "-id"]
        get_latest_by = "created_at"
        indexes = [
            models.Index(fields=["created_at"], name="jobstatus_run_created_idx"),
            models.Index(
                fields=["status", "created_at"], name="jobstatus_run_status_idx"
            ),
            models.Index(
                fields=["job_name", "created_at"], name="jobstatus_run_job_idx"
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
            # The failures view: failed and lost runs of a window, grouped by cause (0006).
            models.Index(
                fields=["finished_at", "job_name", "error_fingerprint"],
                condition=Q(status__in=["failed", "lost"]),
                name="jobstatus_run_failure_idx",
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

    # Derived values.

    @property
    def progress(self) -> float | None:
        """Share done, 0.0 to 1.0; None while the total is unknown."""
        if not self.progress_total:
            return 1.0 if self.progress_total == 0 and self.is_finished else None
        return min(self.progress_current / self.progress_total, 1.0)

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
        return (self.started_at or self.finished_at or timezone.now()) - self.queued_at

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
        return using or self._state.db or settings.DATABASE

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
        values = {"status": target, "updated_at": now, **values}
        stamps: dict[str, datetime] = {}
        if target == Status.QUEUED:
            stamps["queued_at"] = now
        elif target == Status.RUNNING:
            stamps["started_at"] = now
            values.setdefault("heartbeat_at", now)
        elif target in Status.TERMINAL:
            values.setdefault("finished_at", now)
        if target in (Status.FAILED, Status.LOST):
            values["error_fingerprint"] = self._fingerprint(target, values)
        updates: dict[str, Any] = dict(values)
        for field, stamp in stamps.items():
            # First entry only: a stamp already set stays.
            updates[field] = (
                Coalesce(F(field), stamp)
                if not new_attempt or field != "started_at"
                else stamp
            )
        sources = Status.sources_of(target)
        if target == Status.RUNNING:
            # running → running is only a restart (a new attempt); a start needs queued|retrying,
            # else two workers holding the same queued run would both win.
            sources = (
                [Status.RUNNING]
                if new_attempt
                else [s for s in sources if s != Status.RUNNING]
            )
        # A move applies to the state this instance saw, status and attempt: a worker
        # finishing attempt 1 cannot end attempt 2 that a restart opened meanwhile, the
        # history of a new attempt is built from this instance's fields, and ``previous``
        # is exactly the status the run left.
        updated = 0
        if previous in sources:
            updated = (
                JobRun.objects.using(db)
                .filter(pk=self.pk, status=previous, attempt=self.attempt)
                .update(**updates)
            )
        if not updated:
            current = (
                JobRun.objects.using(db)
                .filter(pk=self.pk)
                .values_list("status", "attempt")
                .first()
            )
            if current is None:
                raise JobRun.DoesNotExist(f"Run {self.pk} does not exist.")
            status, attempt = current
            if status not in sources:
                raise InvalidTransition(
                    f"Run {self.pk} cannot move from {status} to {target}."
                )
            if attempt != self.attempt:
                raise InvalidTransition(
                    f"Run {self.pk} is at attempt {attempt}, not {self.attempt}; reload it first."
                )
            raise InvalidTransition(
                f"Run {self.pk} is {status}, not {previous}; reload it first."
            )
        for field, value in values.items():
            setattr(self, field, value)
        for field, stamp in stamps.items():
            if new_attempt or getattr(self, field) is None:
                setattr(self, field, stamp)
        transaction.on_commit(
            lambda: job_status_changed.send(
                sender=JobRun, run=self, previous=previous, status=target
            ),
            using=db,
        )

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
            "finished_at": now.isoformat(),
            "worker": self.worker,
            "error": error,
        }
        return {"attempt": self.attempt + 1, "attempts": [*self.attempts, entry]}

    def mark_queued(self, *, using: str | None = None) -> None:
        """retrying → queued (the next attempt waits for a worker)."""
        self._transition(Status.QUEUED, using=using)

    def mark_running(
        self, *, worker: str | None = None, using: str | None = None
    ) -> None:
        """queued|retrying → running; running → running is a restart (a new attempt)."""
        values: dict[str, Any] = {
            "worker": worker if worker is not None else default_worker()
        }
        if self.status == Status.RUNNING:
            now = timezone.now()
            values |= self._next_attempt("restarted", self.error, now)
            values |= {"error": "", "traceback": "", "finished_at": None}
            self._transition(Status.RUNNING, using=using, new_attempt=True, **values)
        else:
            self._transition(Status.RUNNING, using=using, **values)

    def mark_succeeded(
        self, result: Any = None, *, using: str | None = None, **fields: Any
    ) -> None:
        """running → succeeded, with the job's result."""
        check_json("result", result)
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
        """running → lost: its worker stopped sending heartbeats."""
        fields.setdefault(
            "message", str(_("Lost: the worker stopped sending heartbeats."))
        )
        self._transition(Status.LOST, using=using, **fields)

    # Writes that are not transitions.

    def request_kill(self, *, using: str | None = None) -> bool:
        """Ask the job to stop; True when the run is active and was not asked already."""
        now = timezone.now()
        rows = (
            JobRun.objects.using(self._db(using))
            .filter(pk=self.pk)
            .active()
            .filter(kill_requested_at__isnull=True)
        )
        if rows.update(kill_requested_at=now, updated_at=now):
            self.kill_requested_at = now
            return True
        return False

    def set_progress(
        self,
        current: float,
        total: float | None = None,
        *,
        step: str | None = None,
        message: str | None = None,
        using: str | None = None,
    ) -> None:
        """Store progress now (unthrottled; running jobs use ``track()``'s handle)."""
        current_n, total_n = check_progress(current, total)
        now = timezone.now()
        values: dict[str, Any] = {
            "progress_current": current_n,
            "heartbeat_at": now,
            "updated_at": now,
        }
        if total is not None:
            values["progress_total"] = total_n
        elif self.progress_total is not None and current_n > self.progress_total:
            raise ValueError(
                f"progress current ({current_n}) is greater than total ({self.progress_total})"
            )
        if step is not None:
            values["step"] = step
        if message is not None:
            values["message"] = message
        JobRun.objects.using(self._db(using)).filter(pk=self.pk).update(**values)
        for field, value in values.items():
            setattr(self, field, value)

    def heartbeat(self, *, using: str | None = None) -> None:
        now = timezone.now()
        JobRun.objects.using(self._db(using)).filter(pk=self.pk).update(
            heartbeat_at=now
        )
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
        entry.save(using=self._db(using))
        if entry.level >= 40 and not self.has_errors:
            JobRun.objects.using(self._db(using)).filter(pk=self.pk).update(
                has_errors=True
            )
            self.has_errors = True
        return entry

    def wait(
        self,
        statuses: Iterable[str] | None = None,
        timeout: float = 60,
        *,
        interval: float = 0.2,
    ) -> JobRun:
        """Block until the run is in one of ``statuses`` (default: finished); TimeoutError after ``timeout`` s."""
        wanted = frozenset(statuses) if statuses is not None else Status.TERMINAL
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
        JobRun, verbose_name=_("run"), on_delete=models.CASCADE, related_name="logs"
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
            models.Index(fields=["created_at"], name="jobstatus_log_created_idx"),
            # "Warnings and errors, newest first" across all runs, without the info lines.
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(level__gte=30),
                name="jobstatus_log_warning_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.level_name}: {self.message[:80]}"

    @property
    def level_name(self) -> str:
        import logging

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
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValueError(f"log level must be a logging level number, not {level!r}")
        text = str(message)
        if args:
            text = text % args
        extra = extra or {}
        check_json("extra", extra)
        run_id = run.pk if isinstance(run, JobRun) else run
        return cls(
            run_id=run_id,
            level=level,
            message=cut(text, settings.LOG_MAX_LENGTH),
            extra=extra,
        )


class Dashboard(JobRun):
    """No table: the admin index's link to the dashboard (a proxy model, as django-rq does)."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
        default_permissions = ()
