"""Scopes: the vocabulary every surface uses to pick runs and log lines."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, cast

from django.db import connections, models, transaction
from django.db.models import (
    Avg,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
)
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_jobstatus.conf import settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from django_jobstatus.models import JobRun


def _status() -> Any:
    # querysets.py is imported by models.py, so Status is looked up when a scope runs.
    from django_jobstatus.models import Status

    return Status


def as_timedelta(name: str, value: float | timedelta) -> timedelta:
    """``value`` as a timedelta: a number counts ``name`` (days or seconds)."""
    if isinstance(value, timedelta):
        delta = value
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        delta = timedelta(**{name: value})
    else:
        raise ValueError(f"{name} must be a number or a timedelta, not {value!r}")
    if delta < timedelta(0):
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return delta


_REAPED = _(
    "Lost: no heartbeat since %(since)s, more than %(timeout)g seconds ago; reaped."
)

DURATION = ExpressionWrapper(
    F("finished_at") - F("started_at"), output_field=DurationField()
)


class _Percentile(models.Aggregate):
    """PostgreSQL's exact ``percentile_cont(f) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = models.FloatField()

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


class _EpochSeconds(models.Func):
    template = "EXTRACT(EPOCH FROM %(expressions)s)"
    output_field = models.FloatField()


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: the same definition as percentile_cont."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (
        position - low
    )


@dataclasses.dataclass
class PurgeResult:
    """What ``JobRunQuerySet.purge()`` deleted or, with ``dry_run``, would delete."""

    dry_run: bool = False
    runs: int = 0
    logs: int = 0
    # (job_name, status) -> [runs, logs]
    counts: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)
    batches: int = 0
    longest_batch: float = 0.0  # seconds: the longest single batch transaction
    elapsed: float = 0.0  # seconds since the purge began
    _began: float = dataclasses.field(
        default_factory=time.monotonic, repr=False, compare=False
    )

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per job name and status (``job_name``, ``status``, ``runs``, ``logs``), sorted."""
        return [
            {"job_name": name, "status": status, "runs": runs, "logs": logs}
            for (name, status), (runs, logs) in sorted(self.counts.items())
        ]

    def _add(self, name: str, status: str, runs: int, logs: int) -> None:
        entry = self.counts.setdefault((name, status), [0, 0])
        entry[0] += runs
        entry[1] += logs
        self.runs += runs
        self.logs += logs


@dataclasses.dataclass
class ReapResult:
    """What ``JobRunQuerySet.reap()`` did."""

    reaped: int = 0  # runs marked lost
    finished: int = 0  # stale runs whose job finished first (the job won the race)


def _chunks(items: list[Any], size: int | None) -> Iterable[list[Any]]:
    """``items`` in slices of ``size`` (all at once when None): SQLite caps query parameters."""
    if not size:
        yield items
        return
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _chunk_size(db: str) -> int | None:
    """Most ids one statement may take: SQLite caps query parameters, PostgreSQL does not."""
    limit = connections[db].features.max_query_params
    return limit - 1 if limit else None


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be a whole number of {minimum} or more, not {value!r}"
        )
    return value


def _can_raw_delete_runs(model: type[JobRun]) -> bool:
    """True when deleting runs needs nothing but their log lines gone and their children detached."""
    from django.db.models.signals import post_delete, pre_delete

    from django_jobstatus.models import JobLog

    if pre_delete.has_listeners(model) or post_delete.has_listeners(model):
        return False
    for relation in model._meta.related_objects:
        if relation.related_model is JobLog or (
            relation.related_model is model and relation.field.name == "parent"
        ):
            continue
        return False
    return True


class JobRunQuerySet(models.QuerySet["JobRun"]):
    # States.

    def queued(self) -> Self:
        """Runs waiting for a worker."""
        return self.filter(status=_status().QUEUED)

    def running(self) -> Self:
        """Runs a worker is executing now."""
        return self.filter(status=_status().RUNNING)

    def retrying(self) -> Self:
        """Runs whose attempt failed and that wait for another."""
        return self.filter(status=_status().RETRYING)

    def active(self) -> Self:
        """Runs not finished yet: queued, running or retrying."""
        return self.filter(status__in=sorted(_status().ACTIVE))

    def finished(self) -> Self:
        """Runs in a terminal state: succeeded, failed, killed or lost."""
        return self.filter(status__in=sorted(_status().TERMINAL))

    def succeeded(self) -> Self:
        """Runs that finished without error."""
        return self.filter(status=_status().SUCCEEDED)

    def failed(self) -> Self:
        """Runs that finished with an error and no retry left."""
        return self.filter(status=_status().FAILED)

    def killed(self) -> Self:
        """Runs stopped on request."""
        return self.filter(status=_status().KILLED)

    def lost(self) -> Self:
        """Runs whose worker stopped sending heartbeats."""
        return self.filter(status=_status().LOST)

    def failed_or_lost(self) -> Self:
        """Runs that ended without reaching their end: failed, or lost with their worker."""
        return self.filter(status__in=sorted({_status().FAILED, _status().LOST}))

    # Other predicates.

    def with_errors(self) -> Self:
        """Runs that logged an error, whatever their state."""
        return self.filter(has_errors=True)

    def for_job(self, name: str) -> Self:
        """Runs of one job."""
        return self.filter(job_name=name)

    def older_than(self, days: float | timedelta = 30) -> Self:
        """Runs created before ``days`` ago (a number of days or a timedelta)."""
        return self.filter(created_at__lt=timezone.now() - as_timedelta("days", days))

    def recent(self, limit: int = 100) -> Self:
        """The newest ``limit`` runs, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(
                f"limit must be a whole number of 0 or more, not {limit!r}"
            )
        return self.order_by("-created_at", "-id")[:limit]

    def stale(self, timeout: float | timedelta | None = None) -> Self:
        """Running runs with no heartbeat (or start, if they never beat) for ``timeout`` seconds."""
        delta = as_timedelta(
            "seconds", settings.HEARTBEAT_TIMEOUT if timeout is None else timeout
        )
        cutoff = timezone.now() - delta
        return self.running().filter(
            Q(heartbeat_at__lt=cutoff)
            | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        )

    def kill_requested(self) -> Self:
        """Runs someone asked to stop."""
        return self.filter(kill_requested_at__isnull=False)

    # Reading one run.

    def latest_for(self, name: str) -> JobRun | None:
        """The newest run of job ``name``, or None."""
        return self.for_job(name).order_by("-created_at", "-id").first()

    # Creating runs.

    def _create(self, name: str, status: str, fields: dict[str, Any]) -> JobRun:
        from django_jobstatus.models import check_job_name, check_json

        check_job_name(name)
        for field in ("params", "data", "result"):
            if field in fields:
                check_json(field, fields[field])
        now = timezone.now()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        return self.create(job_name=name, status=status, **fields)

    def enqueue(self, name: str, **fields: Any) -> JobRun:
        """Record a run waiting for a worker."""
        fields.setdefault("queued_at", timezone.now())
        return self._create(name, _status().QUEUED, fields)

    def start(self, name: str, **fields: Any) -> JobRun:
        """Record a run that starts now, in this process."""
        from django_jobstatus.models import default_worker

        now = timezone.now()
        fields.setdefault("started_at", now)
        fields.setdefault("heartbeat_at", now)
        fields.setdefault("worker", default_worker())
        return self._create(name, _status().RUNNING, fields)

    # Bulk writes.

    def request_kill(self) -> int:
        """Ask every active run here to stop; the number of runs newly asked."""
        now = timezone.now()
        return (
            self.active()
            .filter(kill_requested_at__isnull=True)
            .update(kill_requested_at=now, updated_at=now)
        )

    def purge(
        self,
        *,
        days: float | timedelta | None = None,
        retention: Mapping[str, float | timedelta] | None = None,
        keep_last: int | None = None,
        statuses: Iterable[str] | None = None,
        include_active: bool = False,
        batch_size: int = 1000,
        dry_run: bool = False,
        progress: Callable[[PurgeResult], None] | None = None,
        now: datetime | None = None,
    ) -> PurgeResult:
        """Delete the old runs here with their log lines, in short batches; the counts.

        A run goes when it was created longer ago than its status's retention: ``days``
        for every status when given, else ``JOBSTATUS["RETENTION"][status]`` or
        ``RETENTION_DAYS`` (``retention`` replaces ``JOBSTATUS["RETENTION"]``). Only
        finished runs go unless ``include_active``; ``statuses`` narrows further. The
        newest ``keep_last`` runs of every job name (default ``KEEP_LAST``, counted over
        all its runs) stay whatever their age. Each batch of ``batch_size`` runs is one
        short transaction: log lines are deleted in SQL, never loaded, then the runs.
        ``progress(result)`` is called after each batch. ``dry_run`` deletes nothing and
        returns the same counts per job name and status (pass the same ``now``, the time
        the retention counts back from, to both calls for exactly the same runs).
        """
        if self.query.is_sliced:
            raise TypeError("Cannot purge a sliced queryset.")
        keep = _whole(
            "keep_last", settings.KEEP_LAST if keep_last is None else keep_last, 0
        )
        _whole("batch_size", batch_size, 1)
        cutoffs = self._purge_cutoffs(
            self._purge_statuses(statuses, include_active),
            days,
            retention,
            now or timezone.now(),
        )
        old = Q()
        for cutoff, chosen in cutoffs.items():
            old |= Q(status__in=sorted(chosen), created_at__lt=cutoff)
        candidates = self.filter(old) if old else self.none()
        result = PurgeResult(dry_run=dry_run)
        kept = self._purge_kept(candidates, keep)
        if dry_run:
            candidates._purge_count(kept, result)
        else:
            candidates._purge_batches(kept, batch_size, result, progress)
        result.elapsed = time.monotonic() - result._began
        return result

    def _purge_kept(self, candidates: Self, keep: int) -> set[Any]:
        """The ids of the newest ``keep`` runs of each job name that has candidates, over all its runs."""
        kept: set[Any] = set()
        if not keep:
            return kept
        names = candidates.order_by().values_list("job_name", flat=True).distinct()
        every = self.model.objects.using(self.db)
        for name in sorted(set(names)):
            # One short index scan of (job_name, created_at) per job.
            kept.update(
                every.for_job(name)
                .order_by("-created_at", "-id")
                .values_list("pk", flat=True)[:keep]
            )
        return kept

    def _purge_count(self, kept: set[Any], result: PurgeResult) -> None:
        """Add to ``result`` what the purge would delete: every run here except ``kept``."""
        from django_jobstatus.models import JobLog

        counted = (
            self.order_by().values("job_name", "status").annotate(run_count=Count("pk"))
        )
        for row in counted:
            result._add(row["job_name"], row["status"], row["run_count"], 0)
        logs = JobLog.objects.using(self.db).filter(
            run__in=self.order_by().values("pk")
        )
        for row in (
            logs.order_by()
            .values("run__job_name", "run__status")
            .annotate(n=Count("pk"))
        ):
            result._add(row["run__job_name"], row["run__status"], 0, row["n"])
        chunk = _chunk_size(self.db)
        for part in _chunks(sorted(kept), chunk):
            spared = self.filter(pk__in=part).order_by()
            for row in spared.values("job_name", "status").annotate(
                run_count=Count("pk")
            ):
                result._add(row["job_name"], row["status"], -row["run_count"], 0)
            lines = JobLog.objects.using(self.db).filter(run__in=spared.values("pk"))
            for row in (
                lines.order_by()
                .values("run__job_name", "run__status")
                .annotate(n=Count("pk"))
            ):
                result._add(row["run__job_name"], row["run__status"], 0, -row["n"])
        result.counts = {key: value for key, value in result.counts.items() if value[0]}

    def _purge_statuses(
        self,
        statuses: Iterable[str] | None,
        include_active: bool,  # noqa: FBT001
    ) -> set[str]:
        status = _status()
        allowed = set(status.values) if include_active else set(status.TERMINAL)
        if statuses is None:
            return allowed
        chosen = {
            str(value)
            for value in ([statuses] if isinstance(statuses, str) else statuses)
        }
        unknown = chosen - set(status.values)
        if unknown:
            raise ValueError(f"Unknown status: {', '.join(sorted(unknown))}")
        active = chosen - allowed
        if active:
            raise ValueError(
                f"{', '.join(sorted(active))} runs are not finished: pass include_active=True to purge them"
            )
        return chosen

    def _purge_cutoffs(
        self,
        chosen: set[str],
        days: float | timedelta | None,
        retention: Mapping[str, float | timedelta] | None,
        now: datetime,
    ) -> dict[datetime, set[str]]:
        """Group the chosen statuses by the time before which their runs go."""
        if retention is None:
            retention = {} if days is not None else settings.RETENTION
        unknown = set(retention) - set(_status().values)
        if unknown:
            raise ValueError(
                f"Unknown status in retention: {', '.join(sorted(unknown))}"
            )
        default = as_timedelta(
            "days", settings.RETENTION_DAYS if days is None else days
        )
        cutoffs: dict[datetime, set[str]] = defaultdict(set)
        for status in chosen:
            keep_for = (
                as_timedelta("days", retention[status])
                if status in retention
                else default
            )
            cutoffs[now - keep_for].add(status)
        return cutoffs

    def _purge_batches(
        self,
        kept: set[Any],
        batch_size: int,
        result: PurgeResult,
        progress: Callable[[PurgeResult], None] | None,
    ) -> None:
        """Delete the runs here but ``kept``, and their logs, oldest first, one transaction per batch.

        One sweep in ``created_at`` order: runs and log lines written at the same time sit
        together on disk, so each batch reads few pages.
        """
        db = self.db
        features = connections[db].features
        ordered = self.order_by("created_at", "id")
        after: tuple[datetime, Any] | None = None
        while True:
            # Keyset pagination: each batch starts after the last one, never rescanning
            # the index entries of the rows already deleted.
            page = (
                ordered
                if after is None
                else ordered.filter(
                    Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1])
                )
            )
            batch = page.values_list("pk", "job_name", "status", "created_at")
            if features.has_select_for_update_skip_locked:
                # Another purge (or a writer) holding a row: skip it rather than wait.
                batch = batch.select_for_update(
                    skip_locked=True,
                    of=("self",) if features.has_select_for_update_of else (),
                )
            began = time.monotonic()
            with transaction.atomic(using=db):
                rows = list(batch[:batch_size])
                doomed = {
                    pk: (name, status)
                    for pk, name, status, _created in rows
                    if pk not in kept
                }
                if doomed:
                    self._purge_delete(doomed, result)
            if not rows:
                return
            after = (rows[-1][3], rows[-1][0])
            took = time.monotonic() - began
            result.batches += 1
            result.longest_batch = max(result.longest_batch, took)
            result.elapsed = time.monotonic() - result._began
            if progress is not None:
                progress(result)
            if len(rows) < batch_size:
                return

    def _purge_delete(
        self, doomed: dict[Any, tuple[str, str]], result: PurgeResult
    ) -> None:
        """Delete the runs ``doomed`` (id -> (job name, status)) and their log lines; count them in ``result``."""
        from django_jobstatus.models import JobLog

        db = self.db
        every = self.model._base_manager.using(db)
        raw = _can_raw_delete_runs(self.model)
        lines: dict[Any, int] = {}
        for part in _chunks(list(doomed), _chunk_size(db)):
            logs = JobLog.objects.using(db).filter(run_id__in=part)
            # Counted per run (a short index-only read), then deleted in SQL, never loaded.
            lines.update(logs.order_by().values_list("run_id").annotate(n=Count("pk")))
            logs._raw_delete(db)
            if raw:
                every.filter(parent_id__in=part).update(parent=None)
                every.filter(pk__in=part)._raw_delete(db)
            else:
                every.filter(pk__in=part).only("pk").delete()
        for pk, (name, status) in doomed.items():
            result._add(name, status, 1, lines.get(pk, 0))

    def reap(
        self, timeout: float | timedelta | None = None, *, batch_size: int = 100
    ) -> ReapResult:
        """Mark the stale running runs here ``lost``, each with a message and a log line.

        ``timeout`` is in seconds (default ``HEARTBEAT_TIMEOUT``), as for ``stale()``. Each
        batch locks its runs (``SKIP LOCKED`` where the database has it), so reapers running
        at once never reap a run twice, and ``mark_lost()`` is a conditional UPDATE: a job
        finishing at the same instant either wins (counted in ``finished``) or gets
        ``InvalidTransition``, never both.
        """
        import logging

        from django_jobstatus.exceptions import InvalidTransition

        delta = as_timedelta(
            "seconds", settings.HEARTBEAT_TIMEOUT if timeout is None else timeout
        )
        _whole("batch_size", batch_size, 1)
        features = connections[self.db].features
        result = ReapResult()
        while True:
            with transaction.atomic(using=self.db):
                batch = self.stale(delta).order_by("pk")
                if features.has_select_for_update_skip_locked:
                    batch = batch.select_for_update(
                        skip_locked=True,
                        of=("self",) if features.has_select_for_update_of else (),
                    )
                runs = list(batch[:batch_size])
                for run in runs:
                    since = run.heartbeat_at or run.started_at
                    text = str(_REAPED) % {
                        "since": since.isoformat() if since else "?",
                        "timeout": delta.total_seconds(),
                    }
                    try:
                        run.mark_lost(message=text)
                    except InvalidTransition:
                        result.finished += 1
                        continue
                    run.log(logging.WARNING, text)
                    result.reaped += 1
            if len(runs) < batch_size:
                return result

    # Numbers.

    def failure_groups(
        self,
        since: datetime,
        limit: int = 200,
        retry_sources: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        """Failed and lost runs finished since ``since``, one row per job and error fingerprint.

        Each row: ``job_name``, ``error_fingerprint``, ``count``, ``first_seen`` and
        ``last_seen`` (finish times), ``lost`` (how many were lost) and ``retryable`` (how
        many come from ``retry_sources``), newest group first. One aggregate over the
        partial index ``jobstatus_run_failure_idx``.
        """
        rows = (
            self.failed_or_lost()
            .filter(finished_at__gte=since)
            .order_by()
            .values("job_name", "error_fingerprint")
            .annotate(
                count=Count("pk"),
                lost=Count("pk", filter=Q(status=_status().LOST)),
                retryable=Count("pk", filter=Q(source__in=list(retry_sources))),
                first_seen=Min("finished_at"),
                last_seen=Max("finished_at"),
            )
            .order_by("-last_seen", "job_name", "error_fingerprint")
        )
        return [dict(row) for row in rows[:limit]]

    def stats(self) -> list[dict[str, Any]]:
        """Per job name: total, a count per status, failure rate and duration figures in seconds.

        ``failure_rate`` is failed / finished. Percentiles are exact on PostgreSQL
        (``percentile_cont``); elsewhere they are computed in Python from the durations.
        """
        statuses = _status().values
        postgres = connections[self.db].vendor == "postgresql"
        counts = {status: Count("pk", filter=Q(status=status)) for status in statuses}
        timed = Q(finished_at__isnull=False, started_at__isnull=False)
        durations = {
            "min_duration": Min(DURATION, filter=timed),
            "avg_duration": Avg(DURATION, filter=timed),
            "max_duration": Max(DURATION, filter=timed),
        }
        if postgres:
            seconds = _EpochSeconds(DURATION)
            durations["p50_duration"] = _Percentile(seconds, 0.5, filter=timed)
            durations["p95_duration"] = _Percentile(seconds, 0.95, filter=timed)
        rows = (
            self.order_by()
            .values("job_name")
            .annotate(total=Count("pk"), **counts, **durations)
            .order_by("job_name")
        )
        result = []
        # django-stubs types the rows by the values() keys only, not the annotations.
        for row in cast("Iterable[Mapping[str, Any]]", rows):
            finished = sum(row[status] for status in _status().TERMINAL)
            entry: dict[str, Any] = {
                "job_name": row["job_name"],
                "total": row["total"],
                "counts": {status: row[status] for status in statuses},
                "failure_rate": row[_status().FAILED] / finished if finished else None,
            }
            for key in ("min_duration", "avg_duration", "max_duration"):
                entry[key] = row[key].total_seconds() if row[key] is not None else None
            if postgres:
                entry["p50_duration"] = row["p50_duration"]
                entry["p95_duration"] = row["p95_duration"]
            result.append(entry)
        if not postgres:
            self._add_percentiles(result)
        return result

    def _add_percentiles(self, result: list[dict[str, Any]]) -> None:
        by_job: dict[str, list[float]] = defaultdict(list)
        rows = (
            self.filter(finished_at__isnull=False, started_at__isnull=False)
            .order_by()
            .values_list("job_name", "started_at", "finished_at")
        )
        for name, started, finished in rows.iterator(chunk_size=5000):
            assert started is not None and finished is not None  # noqa: S101 (filtered above)
            by_job[name].append((finished - started).total_seconds())
        for entry in result:
            values = sorted(by_job.get(entry["job_name"], []))
            entry["p50_duration"] = percentile(values, 0.5)
            entry["p95_duration"] = percentile(values, 0.95)


class JobLogQuerySet(models.QuerySet[Any]):
    def for_run(self, run: Any) -> Self:
        """Lines of one run (an instance or its id)."""
        return self.filter(run_id=getattr(run, "pk", run))

    def at_least(self, level: int) -> Self:
        """Lines of ``level`` and above."""
        return self.filter(level__gte=level)

    def errors(self) -> Self:
        """Lines of level ERROR and above."""
        return self.at_least(40)

    def older_than(self, days: float | timedelta = 30) -> Self:
        """Lines written before ``days`` ago."""
        return self.filter(created_at__lt=timezone.now() - as_timedelta("days", days))
