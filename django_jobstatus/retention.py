"""Retention: the purge, which deletes old runs with their logs, and the reaper, which ends runs
whose worker went silent.

``JobRunQuerySet.purge()`` and ``JobRunQuerySet.reap()`` are the entry points (the
``purge_jobstatus`` and ``reap_jobstatus`` commands and the dashboard call them); this
module holds their engines.

The purge: which old runs go, and the short batches that delete them. Each batch is
one transaction that takes the write lock up front (SQLite: ``BEGIN IMMEDIATE``, retried a
few times while another connection holds the lock) and is sized by time: it grows while
batches finish under ``batch_seconds`` and shrinks when one takes longer, up to
``batch_size`` runs. On PostgreSQL a batch is two statements: one picks the runs with
``FOR UPDATE SKIP LOCKED``, the next deletes them, and the database deletes their log
lines with them (``ON DELETE CASCADE``, migration 0008), counted first. A batch waiting
for a lock longer than ``CANCEL_AFTER`` times ``batch_seconds`` is rolled back
(``lock_timeout``) and tried again at half the size; a run alone past it is left for the
next purge. With ``jobs`` above 1, that many threads, each with its own connection,
delete at once, each taking the next slice of the candidates.

The reaper: runs ``running`` with no heartbeat for the timeout end ``lost``, and with a
queued timeout, runs no worker started end ``killed``; each batch locks its runs (``SKIP
LOCKED``), and each run moves by a conditional UPDATE, so a job finishing at the same
instant and other reapers never make a run end twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.db import OperationalError, connections, transaction
from django.db.models import Count, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_jobstatus import contrib, statements
from django_jobstatus.batches import BATCH_PARENT, refresh_batch
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog
from django_jobstatus.querysets import (
    PURGE_BATCH_SECONDS,
    PURGE_BATCH_SIZE,
    _chunk_size,
    _chunks,
    _killed,
    _whole,
    as_timedelta,
    distinct_job_names,
    gathering_batches,
    queued_wait,
    stale_timeout,
    values_table,
)
from django_jobstatus.states import Status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from datetime import timedelta

    from django.db.models import Field

    from django_jobstatus.models import JobRun
    from django_jobstatus.querysets import JobRunQuerySet

logger = logging.getLogger(__name__)
V = TypeVar("V", bound="Callable[..., Any]")

# The admin's purge page counts what a purge would delete only this far (``purge(dry_run=True)``
# and ``purge_jobstatus --dry-run`` count everything): counting the 7.9 million lines of
# 790,000 runs took it 5 s (bench_admin.py).
PREVIEW_RUNS = 5_000
PREVIEW_LINES = 20_000
# The first batch's runs (at most ``batch_size``); later batches are sized by the time they took.
FIRST_BATCH = 200
# SQLite: a batch that finds the database locked after the busy timeout is tried this many times.
LOCKED_TRIES = 5
# PostgreSQL: a batch that waits longer than this many times ``batch_seconds`` for a lock
# another transaction holds (on one of its runs' log lines, say) is rolled back
# (``lock_timeout``) and tried again at half the size, so that it never holds its own
# locks, which writers wait on, while it waits: 0.2 s at the default 0.1 s. Only a wait
# for a lock counts: a batch slowed by a busy machine is never thrown away.
CANCEL_AFTER = 2
# The longest batch_seconds: its lock timeout (CANCEL_AFTER times it) stays within
# PostgreSQL's lock_timeout, at most 2,147,483,647 ms (some 12 days).
MAX_BATCH_SECONDS = 86_400
# The SQLSTATE of a statement that gave up waiting for a lock (lock_timeout).
LOCK_NOT_AVAILABLE = "55P03"
# ``purge(jobs=N)``: at most this many connections at once.
MAX_JOBS = 16
# ``purge(jobs=N)`` cuts the candidates into this many slices of equal time per connection,
# and as many again of about equal runs (``_Parallel.cut()``); each connection takes the
# next slice when it is done with one, so a slice denser than the others does not leave
# the rest idle.
SLICES_PER_JOB = 8


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
    # A preview() that stopped counting: there are more runs than ``runs`` (and the
    # lines are not counted), or more log lines than ``logs``.
    more_runs: bool = False
    more_logs: bool = False
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


def purge(
    runs: JobRunQuerySet,
    *,
    days: float | timedelta | None,
    retention: Mapping[str, float | timedelta] | None,
    keep_last: int | None,
    statuses: Iterable[str] | None,
    include_active: bool,
    batch_size: int,
    batch_seconds: float,
    dry_run: bool,
    progress: Callable[[PurgeResult], None] | None,
    now: datetime | None,
    deleted: Callable[[list[JobRun]], None] | None = None,
    jobs: int = 1,
) -> PurgeResult:
    """The body of ``JobRunQuerySet.purge()`` (which documents the arguments), and of
    ``delete_finished()`` (``deleted``)."""
    if runs.query.is_sliced:
        raise TypeError("Cannot purge a sliced queryset.")
    runs = runs.writing()
    keep = _whole(
        "keep_last", settings.KEEP_LAST if keep_last is None else keep_last, 0
    )
    _whole("batch_size", batch_size, 1)
    if (
        not isinstance(batch_seconds, int | float)
        or not 0 < batch_seconds <= MAX_BATCH_SECONDS
    ):
        raise ValueError(
            f"batch_seconds must be a number above 0 and at most {MAX_BATCH_SECONDS},"
            f" not {batch_seconds!r}"
        )
    _jobs(jobs, runs.db, dry_run)
    cutoffs = _cutoffs(_statuses(statuses, include_active), days, retention, now)
    result = PurgeResult(dry_run=dry_run)
    if not cutoffs or runs.query.is_empty():  # no statement could pick a run
        result.elapsed = time.monotonic() - result._began
        return result
    kept = _kept(runs, keep)
    candidates = _candidates(runs, cutoffs, kept)
    if dry_run:
        _count(candidates, kept, result)
    elif jobs > 1 and cutoffs:
        parallel = _Parallel(candidates, kept, result, progress, max(cutoffs))
        parallel.run(jobs, batch_size, batch_seconds)
    else:
        batches = _Batches(candidates, kept, result, progress, deleted)
        batches.run(batch_size, batch_seconds)
    result.elapsed = time.monotonic() - result._began
    return result


def _jobs(jobs: int, db: str, dry_run: bool) -> None:  # noqa: FBT001
    """Check ``purge()``'s ``jobs``: above 1, the batches run on connections of their own."""
    _whole("jobs", jobs, 1)
    if jobs > MAX_JOBS:
        raise ValueError(f"jobs must be at most {MAX_JOBS}, not {jobs}")
    if jobs == 1 or dry_run:
        return
    connection = connections[db]
    if connection.vendor != "postgresql":
        raise ValueError(
            f"jobs above 1 needs PostgreSQL ({connection.vendor} writes one transaction"
            " at a time): leave jobs at 1"
        )
    if connection.in_atomic_block:
        raise ValueError(
            "jobs above 1 deletes on connections of their own, outside this"
            " transaction: purge outside transaction.atomic(), or leave jobs at 1"
        )


def preview(runs: JobRunQuerySet, *, days: float | None) -> PurgeResult:
    """What ``runs.purge(days=days)`` would delete now, counted up to PREVIEW_RUNS runs and
    PREVIEW_LINES log lines (the admin's purge page).

    Past PREVIEW_RUNS runs, ``more_runs`` is set, ``runs`` is PREVIEW_RUNS and nothing else
    is counted; past PREVIEW_LINES lines, ``more_logs`` is set and ``logs`` is
    PREVIEW_LINES (the runs are all counted). A few queries, whatever the number of jobs.
    """
    runs = runs.writing()
    db = runs.db
    spared = _kept(runs, _whole("keep_last", settings.KEEP_LAST, 0))
    candidates = _candidates(
        runs, _cutoffs(set(Status.TERMINAL), days, None, None), spared
    )
    kept = set(spared)
    result = PurgeResult(dry_run=True)
    # The oldest first, as the purge goes; the kept runs left out here (SQLite caps
    # query parameters), so read as many more.
    oldest = candidates.order_by("created_at", "id").values_list(
        "pk", "job_name", "status"
    )[: PREVIEW_RUNS + len(kept) + 1]
    doomed = [row for row in oldest if row[0] not in kept]
    if len(doomed) > PREVIEW_RUNS:
        result.runs, result.more_runs = PREVIEW_RUNS, True
        return result
    lines = _lines_per_run(
        runs.model, db, [row[0] for row in doomed], PREVIEW_LINES + 1
    )
    result.more_logs = sum(lines.values()) > PREVIEW_LINES
    for pk, name, status in doomed:
        result._add(name, status, 1, 0 if result.more_logs else lines.get(pk, 0))
    if result.more_logs:
        result.logs = PREVIEW_LINES
    return result


def _ids_table(connection: Any, model: type[JobRun], ids: list[Any]) -> tuple[str, Any]:
    """The runs ``ids`` as a table ``ids`` of one column, ``value``, and its one parameter
    (``values_table()``): a statement that does not grow with their number, nor meet
    SQLite's cap on parameters."""
    pk = model._meta.pk
    return values_table(
        connection,
        [pk.get_db_prep_value(i, connection) for i in ids],
        "ids",
        str(pk.db_type(connection)),
    )


def _id_subquery(db: str, model: type[JobRun], ids: list[Any]) -> RawSQL:
    """A subquery of the runs ``ids``, all in one parameter (``_ids_table()``)."""
    ids_sql, param = _ids_table(connections[db], model, ids)
    return RawSQL(f"SELECT value FROM {ids_sql}", [param])  # noqa: S611, S608 - the ids are a parameter


def _lines_per_run(
    model: type[JobRun], db: str, ids: list[Any], most: int
) -> dict[Any, int]:
    """The log lines of each run of ``ids`` that has some, counted by the database, which
    reads at most ``most`` lines in all (the ids are one parameter: no cap on them)."""
    if not ids:
        return {}
    connection = connections[db]
    ids_sql, param = _ids_table(connection, model, ids)
    table = connection.ops.quote_name(JobLog._meta.db_table)
    column = connection.ops.quote_name(JobLog._meta.get_field("run").column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column}, COUNT(*) FROM (SELECT {column} FROM {table}"  # noqa: S608 - quoted names only
            f" WHERE {column} IN (SELECT value FROM {ids_sql}) LIMIT %s) lines"
            f" GROUP BY {column}",
            [param, most],
        )
        return {model._meta.pk.to_python(run): n for run, n in cursor.fetchall()}


def _candidates(
    runs: JobRunQuerySet, cutoffs: dict[datetime, set[str]], kept: list[Any]
) -> JobRunQuerySet:
    """The runs of ``runs`` past their cutoff (``kept``, the ids ``_kept()`` spares,
    included), but the runs of a batch still gathering its children
    (``JobRunQuerySet.held_by_batch()``).

    A batch's status and progress add its children's up until the last one ends, and a
    parent that failed or was killed early follows them too (``refresh_batch()``): a
    finished child purged meanwhile leaves the parent's figures short (a batch with a
    killed child then ended ``succeeded``). So while a parent is active, or has an
    active child, it stays, and so do its children, however old. Purging active runs
    too, a batch whose parent goes (one of ``runs``, past its cutoff, and not kept) goes
    whole; one whose parent stays keeps its children: a parent kept as its job's newest
    run, or left out of a purge narrowed to its children's job name, its children
    purged, stayed running for ever.

    The parents are read from the active runs (few, and indexed) once a statement, a
    hashed subplan on PostgreSQL that each candidate is looked up in: 8 ms to pick a
    batch of 2,000 runs among 1 million with 3,000 active, 6 ms without the check. An
    EXISTS per candidate was planned as a join of each against every parent: 490 ms.
    Purging active runs too, the parents that go are read the same way, from the active
    parents looked up in ``runs``: 15 ms with 1,000 running batches of 2 children among
    1 million runs, narrowed to a job name or not (9 ms when the check took no account
    of ``runs``).
    """
    old = Q()
    for cutoff, chosen in cutoffs.items():
        old |= Q(status__in=sorted(chosen), created_at__lt=cutoff)
    if not old:
        return runs.none()
    every = runs.model._base_manager.using(runs.db).order_by()
    # held_by_batch_condition()'s rule, as separate exclusions that purging active runs narrows.
    active, gathering = gathering_batches(every)
    if set().union(*cutoffs.values()) & Status.ACTIVE:
        # Purging active runs too: the children of a parent that goes go with it. The
        # parent goes when the purge takes it: of ``runs`` (a purge narrowed to the
        # children's job name leaves it), old and not kept. Read from the few parents
        # at stake, so the subquery stays as small as they are.
        goes = runs.order_by().filter(old)
        if kept:
            goes = goes.exclude(pk__in=_id_subquery(runs.db, runs.model, kept))
        active = active.exclude(pk__in=goes.filter(pk__in=active).values("pk"))
        gathering = (
            every.filter(pk__in=gathering)
            .exclude(pk__in=goes.filter(pk__in=gathering).values("pk"))
            .values_list("pk", flat=True)
        )
    else:
        runs = runs.exclude(pk__in=gathering)  # a parent with an active child
    runs = runs.exclude(parent__in=active).exclude(parent__in=gathering)
    # Older than the latest cutoff too: an index range, which the OR of the cutoffs alone
    # is not (a scan would walk on past the last candidate, through the newer runs).
    return runs.filter(old, created_at__lt=max(cutoffs))


def _statuses(statuses: Iterable[str] | None, include_active: bool) -> set[str]:  # noqa: FBT001
    allowed = set(Status.values) if include_active else set(Status.TERMINAL)
    if statuses is None:
        return allowed
    chosen = {
        str(value) for value in ([statuses] if isinstance(statuses, str) else statuses)
    }
    unknown = chosen - set(Status.values)
    if unknown:
        raise ValueError(f"Unknown status: {', '.join(sorted(unknown))}")
    active = chosen - allowed
    if active:
        raise ValueError(
            f"{', '.join(sorted(active))} runs are not finished: pass include_active=True to purge them"
        )
    return chosen


def _cutoffs(
    chosen: set[str],
    days: float | timedelta | None,
    retention: Mapping[str, float | timedelta] | None,
    now: datetime | None,
) -> dict[datetime, set[str]]:
    """Group the chosen statuses by the time before which their runs go."""
    now = now or timezone.now()
    if retention is None:
        retention = {} if days is not None else settings.RETENTION
    unknown = set(retention) - set(Status.values)
    if unknown:
        raise ValueError(f"Unknown status in retention: {', '.join(sorted(unknown))}")
    default = as_timedelta("days", settings.RETENTION_DAYS if days is None else days)
    cutoffs: dict[datetime, set[str]] = defaultdict(set)
    for status in chosen:
        keep_for = (
            as_timedelta("days", retention[status]) if status in retention else default
        )
        cutoffs[now - keep_for].add(status)
    return cutoffs


def _kept(runs: JobRunQuerySet, keep: int) -> list[Any]:
    """The ids of the newest ``keep`` runs of each job name, over all its runs.

    Every job name of the table, read through the (job_name, created_at) index (a
    ``SELECT DISTINCT`` of the candidates' names read 790,000 runs in 0.4 s); a job with
    nothing to purge only adds ids that no candidate has.
    """
    if not keep:
        return []
    every = runs.model.objects.using(runs.db)
    return sorted(every.newest_ids(distinct_job_names(runs.model, runs.db), keep))


def _count(candidates: JobRunQuerySet, kept: list[Any], result: PurgeResult) -> None:
    """Add to ``result`` what the purge would delete: every candidate except ``kept``."""
    db = candidates.db
    counted = (
        candidates.order_by()
        .values("job_name", "status")
        .annotate(run_count=Count("pk"))
    )
    for row in counted:
        result._add(row["job_name"], row["status"], row["run_count"], 0)
    logs = JobLog.objects.using(db).filter(run__in=candidates.order_by().values("pk"))
    for row in (
        logs.order_by().values("run__job_name", "run__status").annotate(n=Count("pk"))
    ):
        result._add(row["run__job_name"], row["run__status"], 0, row["n"])
    for part in _chunks(kept, _chunk_size(db)):
        spared = candidates.filter(pk__in=part).order_by()
        for row in spared.values("job_name", "status").annotate(run_count=Count("pk")):
            result._add(row["job_name"], row["status"], -row["run_count"], 0)
        lines = JobLog.objects.using(db).filter(run__in=spared.values("pk"))
        for row in (
            lines.order_by()
            .values("run__job_name", "run__status")
            .annotate(n=Count("pk"))
        ):
            result._add(row["run__job_name"], row["run__status"], 0, -row["n"])
    result.counts = {key: value for key, value in result.counts.items() if value[0]}


def _can_raw_delete_runs(model: type[JobRun]) -> bool:
    """True when deleting runs needs nothing but their log lines gone and their children detached."""
    from django.db.models.signals import post_delete, pre_delete

    if pre_delete.has_listeners(model) or post_delete.has_listeners(model):
        return False
    for relation in model._meta.related_objects:
        if relation.related_model is JobLog or (
            relation.related_model is model and relation.field.name == "parent"
        ):
            continue
        return False
    return True


# Later than any run's created_at: delete_finished() purges with no age cutoff. Two
# days short of datetime.max: a database that stores local time (DATABASES' TIME_ZONE,
# SQLite) is sent it in its zone, and east of UTC datetime.max overflows.
END_OF_TIME = datetime(9999, 12, 29, tzinfo=UTC)


def delete_finished(
    runs: JobRunQuerySet, deleted: Callable[[list[JobRun]], None] | None = None
) -> PurgeResult:
    """Delete the finished runs of ``runs`` (whatever their age, none of a job kept) with
    their log lines, in the purge's short batches: the admin's and the API's bulk delete.

    ``deleted`` is called after each batch commits, with the runs it deleted (unsaved
    instances holding ``pk``, ``job_name`` and ``status``): a run that another purge or a
    reaper holds is skipped, so what was selected is not always what went.
    """
    return purge(
        runs,
        days=0,
        retention=None,
        keep_last=0,
        statuses=None,
        include_active=False,
        batch_size=PURGE_BATCH_SIZE,
        batch_seconds=PURGE_BATCH_SECONDS,
        dry_run=False,
        progress=None,
        now=END_OF_TIME,
        deleted=deleted,
    )


def own_transactions(view: V) -> V:
    """``view`` (a view function) kept out of ``ATOMIC_REQUESTS``' transaction, on every
    database: it commits short transactions of its own (a purge's batches, the dashboard's
    roll-ups). In the request's one transaction, a purge held every run it deleted locked
    until the response, and a request killed at a timeout lost the roll-ups it had made."""
    for alias in connections:
        transaction.non_atomic_requests(using=alias)(view)
    return view


# A batch's runs are locked (FOR UPDATE SKIP LOCKED) and read as one array by a statement
# of their own, which the deleting statements below take as ``{page}``. Their snapshot,
# taken after the lock, holds every line those runs will have: a writer's line was
# committed before the lock, or waits for it and then finds its run gone. Locked by the
# deleting statement itself, a line committed between its snapshot and the lock went
# uncounted by the cascade or, without one, was left behind and the commit refused.
_LOCKED_PAGE = "SELECT array_agg(page.id)::text FROM ({page}) AS page (id)"
_PICKED = "SELECT unnest(%s::{type}[])"

# PostgreSQL, the foreign keys as migration 0008 leaves them: deleting the runs deletes their
# lines (ON DELETE CASCADE) and detaches their children (SET NULL) in the same statement.
# The lines are counted first, in the statement's snapshot, taken once the runs were locked.
_CASCADING = """
    WITH picked (id) AS MATERIALIZED ({page}),
    lines AS (
        SELECT run_id, count(*) AS n FROM {logs}
        WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked)) GROUP BY run_id
    ), gone AS (
        DELETE FROM {runs} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked))
        RETURNING id, job_name, status, created_at
    ), batch AS (
        SELECT gone.*, coalesce(lines.n, 0) AS n
        FROM gone LEFT JOIN lines ON lines.run_id = gone.id
    )
    {totals}
"""

# Without those actions (a schema older than 0008, or changed since): the lines go in the
# same statement; their foreign key is checked at commit (Django makes it DEFERRABLE
# INITIALLY DEFERRED), so runs and lines may go in either order.
_DELETING = """
    WITH gone AS (
        DELETE FROM {runs} WHERE id = ANY(ARRAY({page}))
        RETURNING id, job_name, status, created_at
    ), lines AS (
        DELETE FROM {logs} WHERE run_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING run_id
    ), batch AS (
        SELECT gone.*, coalesce(n.lines, 0) AS n
        FROM gone LEFT JOIN (
            SELECT run_id, count(*) AS lines FROM lines GROUP BY run_id
        ) AS n ON n.run_id = gone.id
    )
    {totals}
"""

# What a batch deleted, per job name and status (runs, lines); the newest run's created_at
# and id (where the next batch starts) on one of the rows; the deleted ids with ``ids``.
# Summed here: a row per run cost more to load in Python (its datetime, its UUID) than
# the batch's delete.
_TOTALS = """
    SELECT job_name, status, count(*), sum(n)::bigint, max(last_created), max(last_id){ids}
    FROM (
        SELECT id, job_name, status, n,
            CASE WHEN row_number() OVER newest = 1 THEN created_at END AS last_created,
            CASE WHEN row_number() OVER newest = 1 THEN id::text END AS last_id
        FROM batch WINDOW newest AS (ORDER BY created_at DESC, id DESC)
    ) AS numbered
    GROUP BY job_name, status
"""


def _database_cascades(db: str, runs: str, logs: str) -> bool:
    """PostgreSQL: True when the log lines' foreign key cascades and the parent's sets null
    in the database (migration 0008)."""
    with connections[db].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND confrelid = %s::regclass AND ((conrelid = %s::regclass AND confdeltype = 'c')"
            " OR (conrelid = %s::regclass AND confdeltype = 'n'))",
            [runs, logs, runs],
        )
        (found,) = cursor.fetchone()
    return bool(found == 2)


def _skipping_locked(runs: JobRunQuerySet) -> JobRunQuerySet:
    """``runs`` locked as they are read, skipping those another transaction holds (where the
    database can): another purge or reaper, or a writer, holding a run is not waited for."""
    features = connections[runs.db].features
    if not features.has_select_for_update_skip_locked:
        return runs
    return runs.select_for_update(
        skip_locked=True, of=("self",) if features.has_select_for_update_of else ()
    )


def _locked(exc: OperationalError, db: str) -> bool:
    return connections[db].vendor == "sqlite" and "locked" in str(exc)


def _cancelled(exc: OperationalError) -> bool:
    """True when PostgreSQL gave up waiting for a lock at the ``lock_timeout``."""
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return bool(code == LOCK_NOT_AVAILABLE)


class _Batches:
    """Delete the candidates but ``kept``, and their logs, oldest first, one transaction per batch.

    One sweep in ``created_at`` order, each batch starting after the last one (keyset
    pagination: never rescanning the index entries of rows already deleted). Runs and
    log lines written at the same time sit together on disk, so each batch reads few pages.
    """

    def __init__(
        self,
        candidates: JobRunQuerySet,
        kept: list[Any],
        result: PurgeResult,
        progress: Callable[[PurgeResult], None] | None,
        deleted: Callable[[list[JobRun]], None] | None = None,
        parallel: _Parallel | None = None,
    ) -> None:
        self.candidates = candidates
        self.db = candidates.db
        self.kept = kept
        self.result = result
        self.progress = progress
        self.deleted = deleted
        self.parallel = parallel  # the purge this is one slice of, with jobs > 1
        # Held while the result is added to: the lock the slices share, with jobs > 1.
        self.lock = parallel.lock if parallel else contextlib.nullcontext()
        self.gone: list[JobRun] = []  # the last batch's runs, for ``deleted``
        # The last batch's (job_name, status, runs, lines), added to the result once it commits.
        self.counted: list[tuple[str, str, int, int]] = []
        connection = connections[self.db]
        self.set_based = connection.vendor == "postgresql" and _can_raw_delete_runs(
            candidates.model
        )
        if self.set_based:
            quote = connection.ops.quote_name
            self.tables = (
                quote(candidates.model._meta.db_table),
                quote(JobLog._meta.db_table),
            )
            self.cascades = _database_cascades(self.db, *self.tables)
            # The kept runs as one array parameter: with a placeholder each, every batch
            # statement grew with the number of job names (a run kept for each).
            self.spared = _id_subquery(self.db, candidates.model, kept)

    def run(
        self, batch_size: int, batch_seconds: float, first: int | None = None
    ) -> int:
        """Delete every candidate, the first batch of ``first`` runs at most (default
        FIRST_BATCH); the size the next batch would have had (a parallel purge's next
        slice starts there)."""
        size = min(FIRST_BATCH if first is None else first, batch_size)
        after: tuple[datetime, Any] | None = None
        self.timeout_ms = max(1, round(CANCEL_AFTER * batch_seconds * 1000))
        while not (self.parallel and self.parallel.stopped.is_set()):
            began = time.monotonic()
            try:
                rows, last = self._batch_with_retries(size, after)
            except OperationalError as exc:
                if not _cancelled(exc):
                    raise
                took = time.monotonic() - began
                with self.lock:
                    self.result.longest_batch = max(self.result.longest_batch, took)
                if size > 1:
                    size = max(1, size // 2)
                    continue
                after = self._skip(after)
                if after is None:
                    return size
                continue
            took = time.monotonic() - began
            if last is None:
                return size
            after = last
            if self.deleted is not None:
                self.deleted(self.gone)
            with self.lock:
                self._committed(took)
            if rows < size:
                return size
            # Sized by time: aim at batch_seconds, never more than doubling or halving at once.
            share = batch_seconds / max(took, 1e-6)
            size = max(1, min(batch_size, round(size * min(max(share, 0.5), 2.0))))
        return size

    def _committed(self, took: float) -> None:
        """Add the batch that just committed, which took ``took`` seconds, to the result."""
        result = self.result
        for name, status, runs, lines in self.counted:
            result._add(name, status, runs, lines)
        result.batches += 1
        result.longest_batch = max(result.longest_batch, took)
        result.elapsed = time.monotonic() - result._began
        if self.progress is not None:
            self.progress(result)

    def _batch_with_retries(
        self, size: int, after: tuple[datetime, Any] | None
    ) -> tuple[int, tuple[datetime, Any] | None]:
        connection = connections[self.db]
        for attempt in range(1, LOCKED_TRIES + 1):
            try:
                # Not inside a caller's transaction: SET LOCAL would outlive the batch.
                bound = connection.vendor == "postgresql" and not (
                    connection.in_atomic_block
                )
                with statements.write_transaction(self.db):
                    if bound:
                        with connection.cursor() as cursor:
                            cursor.execute(
                                f"SET LOCAL lock_timeout = {self.timeout_ms:d}"
                            )
                    if self.set_based:
                        return self._delete_set_based(size, after)
                    return self._delete(size, after)
            except OperationalError as exc:
                if not _locked(exc, self.db) or attempt == LOCKED_TRIES:
                    raise
                logger.warning(
                    "Purge batch found the database locked (try %d of %d): %s",
                    attempt,
                    LOCKED_TRIES,
                    exc,
                )
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _opaque(self, field: str, value: Any) -> Any:
        """PostgreSQL: ``value`` as a one-row subquery, a parameter the planner does not
        estimate. As a constant below the lowest bound of the column's statistics (where
        the keyset is once an autoanalyze has run mid-purge), the planner reads the
        index's actual lowest entry, walking past every one the batches before deleted
        and VACUUM has not removed: measured 10 to 50 ms of planning a batch, growing
        with the purge, against 0.5 ms."""
        if connections[self.db].vendor != "postgresql":
            return value
        meta = self.candidates.model._meta
        return RawSQL(
            "(SELECT %s)",
            (value,),
            output_field=cast("Field[Any, Any]", meta.get_field(field)),
        )

    def _skip(self, after: tuple[datetime, Any] | None) -> tuple[datetime, Any] | None:
        """Step past the next candidate: alone in its batch, it waited past the lock
        timeout (a transaction holds a lock on its lines); the next purge takes it.

        The batch's own page: the set-based batch leaves the kept runs out in SQL, the
        other reads them and passes them by (a kept run alone never waits for a lock)."""
        run = (
            self._page(1, after, spare=self.set_based, lock=False)
            .values_list("created_at", "pk")
            .first()
        )
        if run is None:
            return None
        logger.warning(
            "Purge skipped run %s: deleting it waited more than %d ms for a lock (a"
            " transaction holds one on its log lines); the next purge deletes it.",
            run[1],
            self.timeout_ms,
        )
        return run

    def _page(
        self,
        size: int,
        after: tuple[datetime, Any] | None,
        *,
        spare: bool,
        lock: bool = True,
    ) -> JobRunQuerySet:
        """The next ``size`` candidates; with ``spare``, the kept runs are left out in SQL;
        with ``lock``, locked as they are read, skipping those another transaction holds."""
        page = self.candidates.order_by("created_at", "id")
        if after is not None:
            # created_at >= the last one is the index condition: the scan starts there
            # rather than at the oldest entry, walking past every run deleted so far.
            since, pk = (
                self._opaque("created_at", after[0]),
                self._opaque("id", after[1]),
            )
            page = page.filter(
                Q(created_at__gt=since) | Q(created_at=since, id__gt=pk),
                created_at__gte=since,
            )
        if spare and self.kept:
            page = page.exclude(pk__in=self.spared)
        return (_skipping_locked(page) if lock else page)[:size]

    def _delete_set_based(
        self, size: int, after: tuple[datetime, Any] | None
    ) -> tuple[int, tuple[datetime, Any] | None]:
        """PostgreSQL: a statement locks a batch of runs; the next deletes them and their log lines, and counts both."""
        connection = connections[self.db]
        pk = self.candidates.model._meta.pk
        sql, params = (
            self._page(size, after, spare=True).values("pk").query.sql_with_params()
        )
        every_id = not self.cascades or self.deleted is not None
        totals = _TOTALS.format(ids=", array_agg(id)" if every_id else "")
        statement = (_CASCADING if self.cascades else _DELETING).format(
            runs=self.tables[0],
            logs=self.tables[1],
            page=_PICKED.format(type=pk.db_type(connection)),
            totals=totals,
        )
        deleted, last = 0, None
        # The deleted ids: read when asked for, or to detach children without SET NULL.
        ids: list[Any] = []
        self.gone, self.counted = [], []
        with connection.cursor() as cursor:
            cursor.execute(_LOCKED_PAGE.format(page=sql), params)
            (picked,) = cursor.fetchone()
            if picked is None:
                return 0, None
            cursor.execute(statement, [picked])
            for name, status, runs, lines, last_created, last_id, *more in cursor:
                self.counted.append((name, status, runs, lines))
                deleted += runs
                if more:
                    ids += more[0]
                    self._went(more[0], name, status)
                if last_created is not None:
                    last = (last_created, pk.to_python(last_id))
            if ids and not self.cascades:
                # Runs kept whose parent went: detached, as on_delete=SET_NULL would.
                cursor.execute(
                    f"UPDATE {self.tables[0]} SET parent_id = NULL WHERE parent_id = ANY(%s)",  # noqa: S608
                    [ids],
                )
        return deleted, last

    def _delete(
        self, size: int, after: tuple[datetime, Any] | None
    ) -> tuple[int, tuple[datetime, Any] | None]:
        """Any database: read a batch's ids, delete its log lines in SQL (never loaded), then the runs."""
        db = self.db
        # The kept runs are skipped here rather than in SQL: SQLite caps query parameters.
        rows = list(
            self._page(size, after, spare=False).values_list(
                "pk", "job_name", "status", "created_at"
            )
        )
        if not rows:
            return 0, None
        kept = set(self.kept)
        doomed = [row for row in rows if row[0] not in kept]
        every = self.candidates.model._base_manager.using(db)
        raw = _can_raw_delete_runs(self.candidates.model)
        lines: dict[Any, int] = {}
        for part in _chunks([row[0] for row in doomed], _chunk_size(db)):
            logs = JobLog.objects.using(db).filter(run_id__in=part)
            # Counted per run (a short index-only read), then deleted in SQL, never loaded.
            lines.update(logs.order_by().values_list("run_id").annotate(n=Count("pk")))
            logs._raw_delete(db)
            if raw:
                every.filter(parent_id__in=part).update(parent=None)
                every.filter(pk__in=part)._raw_delete(db)
            else:
                every.filter(pk__in=part).only("pk").delete()
        self.gone = []
        self.counted = [
            (name, status, 1, lines.get(pk, 0)) for pk, name, status, _created in doomed
        ]
        for pk, name, status, _created in doomed:
            self._went([pk], name, status)
        return len(rows), (rows[-1][3], rows[-1][0])

    def _went(self, ids: list[Any], name: str, status: str) -> None:
        """For ``deleted``: runs of ``ids``, of job ``name`` in ``status``, were deleted."""
        if self.deleted is not None:
            model = self.candidates.model
            self.gone += [model(pk=pk, job_name=name, status=status) for pk in ids]


def _histogram(runs: JobRunQuerySet) -> list[datetime]:
    """PostgreSQL's equal-count bounds of the runs' ``created_at`` (about as many runs
    between each two), as of the table's last ANALYZE; none before one."""
    connection = connections[runs.db]
    meta = runs.model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.histogram_bounds::text::timestamptz[] FROM pg_stats s"
            " JOIN pg_class c ON c.relname = s.tablename"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
            " WHERE c.oid = %s::regclass AND s.attname = %s AND NOT s.inherited",
            [
                connection.ops.quote_name(meta.db_table),
                meta.get_field("created_at").column,
            ],
        )
        row = cursor.fetchone()
    return sorted(row[0]) if row and row[0] else []


class _Parallel:
    """``purge(jobs=N)``: the candidates deleted by ``N`` connections at once, each in the
    short batches of ``_Batches``.

    The candidates are cut into about ``SLICES_PER_JOB`` slices per connection
    (``cut()``); each thread takes the next slice when it is done with one and deletes it
    oldest first, so two never pick the same runs (and ``SKIP LOCKED`` would skip them if
    they did). The result is added to under a lock, and ``progress`` is called from the
    threads, one at a time. The first error, or Ctrl-C, stops the threads after their
    batch under way and is raised here, once every thread has ended.
    """

    def __init__(
        self,
        candidates: JobRunQuerySet,
        kept: list[Any],
        result: PurgeResult,
        progress: Callable[[PurgeResult], None] | None,
        before: datetime,
    ) -> None:
        self.candidates = candidates
        self.kept = kept
        self.result = result
        self.progress = progress
        self.before = before
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.slices: queue.SimpleQueue[JobRunQuerySet] = queue.SimpleQueue()
        self.errors: list[BaseException] = []

    def run(self, jobs: int, batch_size: int, batch_seconds: float) -> None:
        for part in self.cut(jobs * SLICES_PER_JOB):
            self.slices.put(part)
        # Set by each thread as it ends. Not Thread.join() after Ctrl-C: on Python 3.11, a
        # join that Ctrl-C interrupts marks a thread that is still running as stopped, and
        # joining it again returns at once (seen in the test of Ctrl-C).
        ended = [threading.Event() for _ in range(jobs)]
        threads = [
            threading.Thread(
                target=self._work,
                args=(batch_size, batch_seconds, done),
                name=f"jobstatus-purge-{n}",
            )
            for n, done in enumerate(ended, 1)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C: the threads stop after their batch under way.
            self.stopped.set()
            for thread, done in zip(threads, ended, strict=True):
                if thread.ident is not None:  # started (one starting now does nothing)
                    done.wait()
            raise
        if self.errors:
            raise self.errors[0]

    def cut(self, count: int) -> list[JobRunQuerySet]:
        """The candidates in slices of ``created_at``, oldest first: ``count`` slices of
        equal time from the oldest candidate to ``before``, each cut again where
        PostgreSQL's statistics put as many runs on either side (``pg_stats``' histogram
        of ``created_at``, from the last ANALYZE), so that a backlog packed into a few
        hours is shared out too. No slice when there is no candidate."""
        oldest = (
            self.candidates.order_by("created_at", "id")
            .values_list("created_at", flat=True)
            .first()
        )
        if oldest is None:
            return []
        step = (self.before - oldest) / count
        bounds = {oldest + step * n for n in range(1, count)}
        dense = [b for b in _histogram(self.candidates) if oldest < b < self.before]
        if len(dense) >= count:
            dense = [dense[len(dense) * n // count] for n in range(1, count)]
        bounds.update(dense)
        ordered = sorted(bounds)
        parts = []
        for lower, upper in zip([None, *ordered], [*ordered, None], strict=True):
            part = self.candidates
            if lower is not None:
                part = part.filter(created_at__gte=lower)
            if upper is not None:
                part = part.filter(created_at__lt=upper)
            parts.append(part)
        return parts

    def _work(
        self, batch_size: int, batch_seconds: float, done: threading.Event
    ) -> None:
        """One thread: the next slice, until none is left (or another thread failed);
        ``done`` set as it ends."""
        db = self.candidates.db
        size = None
        try:
            while not self.stopped.is_set():
                try:
                    part = self.slices.get_nowait()
                except queue.Empty:
                    return
                batches = _Batches(
                    part, self.kept, self.result, self.progress, parallel=self
                )
                size = batches.run(batch_size, batch_seconds, size)
        except BaseException as exc:  # raised by run(), in the caller's thread
            with self.lock:
                self.errors.append(exc)
            self.stopped.set()
        finally:
            connections[db].close()
            done.set()


# The reaper.

_REAPED = _(
    "Lost: no heartbeat since %(since)s, more than %(timeout)g seconds ago; reaped."
)

_EXPIRED = _(
    "Killed: queued since %(since)s, more than %(timeout)g seconds, and no worker "
    "started it (its message was probably lost); ended by the reaper."
)

_EXPIRED_RETRY = _(
    "Killed: attempt %(attempt)d waiting since %(since)s, more than %(timeout)g seconds, "
    "and no worker started it (its retry was probably lost); ended by the reaper."
)

_EXPIRED_BATCH = _(
    "Killed: queued since %(since)s, more than %(timeout)g seconds; its children have "
    "all ended, but its batch() block never ended (its total is unknown); ended by the "
    "reaper."
)


@dataclasses.dataclass
class ReapResult:
    """What ``JobRunQuerySet.reap()`` did or, with ``dry_run``, would do."""

    reaped: int = 0  # runs marked lost
    finished: int = 0  # stale runs whose job finished first (the job won the race)
    # Batches' parents whose children had all ended, moved where they add up to: no
    # worker beats for a parent, and its refresh after the last child was missed.
    settled: int = 0
    expired: int = 0  # queued runs ended killed: no worker started them in time
    dry_run: bool = False
    # With dry_run: the runs that would be reaped, as (pk, job_name, worker) ...
    stale_runs: list[tuple[Any, str, str]] = dataclasses.field(default_factory=list)
    # ... and those that would end killed, queued too long, as (pk, job_name).
    queued_runs: list[tuple[Any, str]] = dataclasses.field(default_factory=list)


def reap(
    runs: JobRunQuerySet,
    timeout: float | timedelta | None,
    *,
    queued_timeout: float | timedelta | None,
    batch_size: int,
    dry_run: bool,
) -> ReapResult:
    """The body of ``JobRunQuerySet.reap()`` (which documents the arguments)."""
    runs = runs.writing()
    delta = stale_timeout(timeout)
    if queued_timeout is None:
        queued_timeout = settings.QUEUED_TIMEOUT
    queued_delta = None if queued_timeout is None else queued_wait(queued_timeout)
    _whole("batch_size", batch_size, 1)
    result = ReapResult(dry_run=dry_run)
    if dry_run:
        stale = list(
            runs.stale(delta).order_by("pk").values_list("pk", "job_name", "worker")
        )
        parents = _parents(runs, [pk for pk, _name, _worker in stale])
        result.stale_runs = [row for row in stale if row[0] not in parents]
        result.reaped = len(result.stale_runs)
        result.settled = len(parents)
        if queued_delta is not None:
            queued = list(
                runs.stale_queued(queued_delta)
                .order_by("pk")
                .values_list("pk", "job_name", "progress_total")
            )
            # A batch's parent whose block ended (it has a total) follows its children.
            parents = _parents(runs, [row[0] for row in queued])
            closed = {
                row[0] for row in queued if row[0] in parents and row[2] is not None
            }
            result.settled += len(closed)
            result.queued_runs = [row[:2] for row in queued if row[0] not in closed]
            result.expired = len(result.queued_runs)
        return result
    _reap_stale(runs, delta, batch_size, result)
    if queued_delta is not None:
        _expire_queued(runs, queued_delta, batch_size, result)
    return result


def _locked_batch(runs: JobRunQuerySet, batch_size: int) -> list[JobRun]:
    """The first ``batch_size`` of ``runs`` by pk, locked (skipping those held elsewhere)."""
    return list(_skipping_locked(runs.order_by("pk"))[:batch_size])


def _reap_stale(
    runs: JobRunQuerySet, delta: timedelta, batch_size: int, result: ReapResult
) -> None:
    """Mark lost the running runs silent longer than ``delta``, one transaction per batch."""
    while True:
        with statements.write_transaction(runs.db):
            batch = _locked_batch(runs.stale(delta), batch_size)
            parents = _parents(runs, [run.pk for run in batch])
            for run in batch:
                if run.pk in parents:
                    # Not lost: a batch's parent lives while a child is active, and
                    # these have all ended. It follows them, as its refresh would have.
                    refresh_batch(run)
                    result.settled += 1
                    continue
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
        if len(batch) < batch_size:
            return


def _parents(runs: JobRunQuerySet, pks: list[Any]) -> set[Any]:
    """Which of the runs ``pks`` are batches' parents, with children and no worker (a
    run a worker runs, children or not, is lost when it falls silent): a query a chunk."""
    found: set[Any] = set()
    every = runs.model.objects.using(runs.db).order_by()
    for part in _chunks(pks, _chunk_size(runs.db)):
        children = every.filter(parent__in=every.filter(BATCH_PARENT, pk__in=part))
        found.update(children.values_list("parent_id", flat=True).distinct())
    return found


def _expire_queued(
    runs: JobRunQuerySet, delta: timedelta, batch_size: int, result: ReapResult
) -> None:
    """End the runs queued longer than ``delta`` killed, and tell their task systems.

    A batch's parent among them (its children have all ended: stale_queued() leaves out
    one with an active child) ends as they add up instead, as its refresh would have.
    """
    while True:
        with statements.write_transaction(runs.db):
            batch = _locked_batch(runs.stale_queued(delta), batch_size)
            parents = _parents(runs, [run.pk for run in batch])
            ended = []
            for run in batch:
                fields: dict[str, Any] = {}
                if run.pk in parents:
                    state = refresh_batch(run)
                    if run.is_finished:
                        result.settled += 1
                        continue
                    # Still queued: its batch() block never ended and set its total.
                    fields["result"] = {"children": state.counts}
                # A retry waits since it was scheduled; a job scheduled for later, since it was due.
                since = max(
                    run.updated_at
                    if run.attempt > 1
                    else run.queued_at or run.created_at,
                    run.due_at or run.created_at,
                ).isoformat()
                if run.pk in parents:
                    text = str(_EXPIRED_BATCH) % {
                        "since": since,
                        "timeout": delta.total_seconds(),
                    }
                elif run.attempt > 1:
                    text = str(_EXPIRED_RETRY) % {
                        "attempt": run.attempt,
                        "since": since,
                        "timeout": delta.total_seconds(),
                    }
                else:
                    text = str(_EXPIRED) % {
                        "since": since,
                        "timeout": delta.total_seconds(),
                    }
                # Recorded as asked to stop too, as a forced kill is: a worker that
                # takes the task afterwards refuses it (or the job sees it at once).
                if run.kill_requested_at is None:
                    run.kill_requested_at = timezone.now()
                if _killed(
                    run, text, kill_requested_at=run.kill_requested_at, **fields
                ):
                    run.log(logging.WARNING, text)
                    ended.append(run)
        result.expired += len(ended)
        # Outside the transaction: a broker is slow, a lock must not wait for it.
        for problem in contrib.stop(ended, force=True):
            logger.warning(
                "Run %s ended killed, but its task system did not drop it: %s",
                problem.run_id,
                problem.reason,
            )
        if len(batch) < batch_size:
            return
