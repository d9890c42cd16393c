"""Scopes: the vocabulary every surface uses to pick runs and log lines."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Self, cast

from django.db import connections, models, router
from django.db.models import (
    Avg,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    Value,
)
from django.db.models.functions import Concat, TruncSecond
from django.db.models.lookups import Exact
from django.db.models.sql import UpdateQuery
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_jobstatus import contrib, heartbeats, statements, writebehind
from django_jobstatus.clock import Ago, database_now
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.routers import write_database
from django_jobstatus.states import Status
from django_jobstatus.values import (
    BIGINT_MAX,
    check_job_name,
    check_json,
    check_progress,
    default_worker,
    storable,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from django_jobstatus.models import JobRun
    from django_jobstatus.retention import PurgeResult, ReapResult


# The longest age or timeout: "now" minus it stays a date (datetime overflows past year 1).
MAX_AGE = timedelta(days=365 * 1000)


def as_timedelta(name: str, value: float | timedelta) -> timedelta:
    """``value`` as a timedelta: a number counts ``name`` (days or seconds), up to MAX_AGE."""
    too_long = f"{name} must be at most 1000 years, not {value!r}"
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
            delta = timedelta(**{name: value})
        except OverflowError:  # a whole number too big for a float, or for a timedelta
            raise ValueError(too_long) from None
    else:
        raise ValueError(f"{name} must be a number or a timedelta, not {value!r}")
    if delta < timedelta(0):
        raise ValueError(f"{name} must not be negative, not {value!r}")
    if delta > MAX_AGE:
        raise ValueError(too_long)
    return delta


DURATION = ExpressionWrapper(
    F("finished_at") - F("started_at"), output_field=DurationField()
)


# What a big aggregate (a week of runs, sorted per job for exact percentiles) may use on
# PostgreSQL: sorted in memory rather than spilled to disk with the default 4 MB work_mem,
# and no JIT compilation, which costs more than it saves on a query of this size.
AGGREGATE_WORK_MEM = "64MB"


_aggregating = threading.local()


@contextlib.contextmanager
def aggregating(using: str) -> Iterator[None]:
    """Run the block's queries with room to sort in memory (PostgreSQL); elsewhere, as they are.

    Two queries in all, whatever the block runs: one sets ``work_mem`` and ``jit`` for
    the connection, one puts the values before back when the block ends (a transaction
    that failed meanwhile undoes the setting itself). Nested blocks share the outer one.
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or getattr(_aggregating, using, False):
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('work_mem'), current_setting('jit'),"
            " set_config('work_mem', %s, false), set_config('jit', 'off', false)",
            [AGGREGATE_WORK_MEM],
        )
        work_mem, jit, *_new = cursor.fetchone()
    setattr(_aggregating, using, True)
    try:
        yield
    finally:
        setattr(_aggregating, using, False)
        if not connection.needs_rollback and connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('work_mem', %s, false), set_config('jit', %s, false)",
                    [work_mem, jit],
                )


class _Percentile(models.Aggregate):
    """PostgreSQL's exact ``percentile_cont(f) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = models.FloatField()

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


class _EpochSeconds(models.Func):
    """A duration in seconds: EXTRACT(EPOCH ...) on PostgreSQL; SQLite holds microseconds."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)"
    output_field = models.FloatField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="((%(expressions)s) / 1000000.0)", **extra
        )


# Durations histogram: bucket i holds durations in [2 ** (i / STEPS), 2 ** ((i + 1) / STEPS))
# seconds, so a percentile read from it (the bucket's geometric middle) is within
# 2 ** (1 / (2 * STEPS)) - 1, about 4.4 %, of the exact one. Buckets run from a
# millisecond (-80) to some 140 days (190); a run with no start time has no duration.
DURATION_STEPS = 8
DURATION_BUCKETS = (-80, 190)
UNTIMED = -1000


def duration_bucket() -> Any:
    """The histogram bucket of a run's duration (UNTIMED without one), as an SQL expression."""
    low, high = DURATION_BUCKETS
    # In floating point: PostgreSQL's EXTRACT gives a numeric, whose logarithm is exact
    # and slow (half of the 1 s a week's 220,000 runs took to read when first rolled up).
    seconds = models.functions.Cast(_EpochSeconds(DURATION), models.FloatField())
    logarithm = models.functions.Ln(
        models.functions.Greatest(seconds, models.Value(0.001))
    )
    index = models.functions.Floor(logarithm * (DURATION_STEPS / math.log(2)))
    return models.Case(
        models.When(
            Q(started_at__isnull=False, finished_at__isnull=False),
            then=models.functions.Cast(
                models.functions.Least(
                    models.functions.Greatest(index, models.Value(low)),
                    models.Value(high),
                ),
                models.IntegerField(),
            ),
        ),
        default=models.Value(UNTIMED),
        output_field=models.IntegerField(),
    )


def bucket_seconds(bucket: int) -> float:
    """The duration a histogram bucket stands for: its geometric middle, in seconds."""
    return float(2 ** ((bucket + 0.5) / DURATION_STEPS))


# The time buckets of finished_buckets(): a truncation of finished_at.
TIME_BUCKETS: dict[str, Any] = {
    "minute": models.functions.TruncMinute,
    "hour": models.functions.TruncHour,
    "day": models.functions.TruncDay,
}


def _time_groups(size: str, zone: tzinfo | None) -> dict[str, Any]:
    """What finished_buckets_query() groups a time bucket by: ``start``, the truncation
    of finished_at in ``zone`` (default: the current one), and for a minute or an hour
    in a zone whose offset changes, ``offset``, the UTC offset in force.

    A day is a local day (23 or 25 hours across a DST change). A minute or an hour is a
    real one, starting on the local clock: the wall clock alone merges the two 02:00
    hours of a fall-back into one, and UTC's hours start at half past in Asia/Kolkata.
    The wall clock with the offset in force tells the two apart, whatever the offset.
    """
    zone = zone or timezone.get_current_timezone()
    start = TIME_BUCKETS[size]("finished_at", tzinfo=zone)
    # utcoffset(None) is the offset of a fixed one (UTC, datetime.timezone), None for a
    # zone with rules: a fixed offset has no hour twice.
    if size == "day" or zone.utcoffset(None) is not None:
        return {"start": start}
    offset = TruncSecond("finished_at", tzinfo=zone) - TruncSecond(
        "finished_at", tzinfo=UTC
    )
    return {"start": start, "offset": offset}


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


def stale_timeout(timeout: float | timedelta | None = None) -> timedelta:
    """The silence after which a running run is stale: ``timeout`` seconds (default
    HEARTBEAT_TIMEOUT), which live runs must be able to meet (else a ValueError saying why).

    Workers beat every ``heartbeats.interval()`` (HEARTBEAT_TIMEOUT / 3): a timeout shorter
    than two intervals would find live runs stale between two beats. HEARTBEAT_TIMEOUT
    itself always passes.
    """
    delta = as_timedelta(
        "seconds", settings.HEARTBEAT_TIMEOUT if timeout is None else timeout
    )
    beat = heartbeats.interval()
    shortest = min(2 * beat, float(settings.HEARTBEAT_TIMEOUT))
    if delta.total_seconds() < shortest:
        raise ValueError(
            gettext(
                "A timeout of %(timeout)g s would mark live runs lost: it must be at least "
                "%(shortest)g s, two heartbeat intervals, as workers beat every %(beat)g s "
                "(HEARTBEAT_TIMEOUT / 3)."
            )
            % {"timeout": delta.total_seconds(), "shortest": shortest, "beat": beat}
        )
    return delta


def queued_wait(timeout: float | timedelta) -> timedelta:
    """The wait after which a run no worker started is stale: ``timeout`` seconds, above 0
    as ``QUEUED_TIMEOUT`` must be (check jobstatus.E003), else a ValueError. A wait of 0
    ended every queued run, one enqueued a moment ago too, and dropped it from its task
    system."""
    delta = as_timedelta("seconds", timeout)
    if not delta:
        raise ValueError(f"the queued timeout must be above 0 seconds, not {timeout!r}")
    return delta


def stale_condition(timeout: timedelta) -> Q:
    """stale()'s test: a running run with no heartbeat (or start, if it never beat) for
    ``timeout``, and no active child.

    The silence is measured on the clock the heartbeats were stamped with (``clock.Ago``), so a
    worker's or the reaper's clock running behind or ahead marks no live run lost. No
    process beats for a batch's parent: it lives while a child is queued, running or
    retrying. The children are read by one subquery (not correlated: once per query)."""
    cutoff = Ago(timeout)
    return (
        Q(status=Status.RUNNING)
        & (
            Q(heartbeat_at__lt=cutoff)
            | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        )
        & ~with_active_child()
    )


def with_active_child() -> Q:
    """Batches' parents with a child queued, running or retrying: no worker runs them
    (``batches.BATCH_PARENT``), and they live while their children are active. A run a
    worker runs, children or not, lives by its own heartbeats. One subquery (not
    correlated: once per query)."""
    from django_jobstatus.models import JobRun

    parents = JobRun.objects.filter(
        status__in=sorted(Status.ACTIVE), parent__isnull=False
    ).values("parent_id")
    return Q(worker="", pk__in=parents)


def gathering_batches(
    every: models.QuerySet[JobRun],
) -> tuple[models.QuerySet[JobRun, Any], models.QuerySet[JobRun, Any]]:
    """The batches of ``every`` (the runs of one database) still gathering their
    children, as two subqueries of ids: their parents that are active, and those with
    an active child. A batch's parent is a run no worker runs (``batches.BATCH_PARENT``):
    a job's own run that enqueued sub-tasks is no batch, and ends as its job does."""
    from django_jobstatus.batches import BATCH_PARENT  # it imports this module

    active = every.filter(status__in=sorted(Status.ACTIVE))
    waiting = active.filter(parent__in=every.filter(BATCH_PARENT)).values_list(
        "parent_id", flat=True
    )
    return active.filter(BATCH_PARENT).values_list("pk", flat=True), waiting


def held_by_batch_condition(every: models.QuerySet[JobRun]) -> Q:
    """The runs a batch still gathering its children holds (``gathering_batches()``):
    its parent and its children, finished or not.

    A batch's status and progress add its children's up until the last one ends, and a
    parent that failed or was killed early follows them too (``refresh_batch()``): a
    finished child deleted meanwhile leaves its figures short (a batch with a killed
    child then ended ``succeeded``). The purge keeps them (``retention._candidates()``),
    and so do the deletes of one run.
    """
    active, waiting = gathering_batches(every)
    return (
        Q(pk__in=active)
        | Q(pk__in=waiting)
        | Q(parent__in=active)
        | Q(parent__in=waiting)
    )


def _parents_first(runs: list[JobRun]) -> list[JobRun]:
    """``runs`` with each batch's parent before the runs under it among them: killed
    after them, a parent has ended already, as they add up, and the kill that ended it
    neither counts it nor gives it its message."""
    by_id = {run.pk: run for run in runs}

    def depth(run: JobRun) -> int:
        seen: set[Any] = set()
        while run.parent_id in by_id and run.parent_id not in seen:
            seen.add(run.parent_id)
            run = by_id[run.parent_id]
        return len(seen)

    return sorted(runs, key=depth)


@dataclasses.dataclass(frozen=True)
class NotStopped:
    """A run a kill could not stop through its task system, and why."""

    run_id: Any
    job_name: str
    reason: str
    # True: the task system failed (e.g. its broker is down); False: it cannot stop such a run.
    error: bool = False


class KillResult(int):
    """What ``JobRunQuerySet.request_kill()`` did: an int, with the details as attributes.

    Its value is the number of runs picked newly asked to stop (``asked``), or with
    ``force=True`` the number of runs picked it ended ``killed`` (``killed``); so
    ``if runs.request_kill():`` and ``== 1`` read as they always did, and neither
    counts more runs than were picked. ``in_batches`` counts the runs under the
    batches' parents picked that were newly asked too (forced: ended killed).
    ``not_stopped`` lists the runs whose task system failed to take the kill (errors),
    and with ``force=True`` also those that nothing can stop, each with the reason.
    """

    asked: int
    killed: int
    in_batches: int
    not_stopped: tuple[NotStopped, ...]
    requested_at: datetime

    def __new__(
        cls,
        *,
        asked: int,
        killed: int = 0,
        in_batches: int = 0,
        force: bool = False,
        not_stopped: Iterable[NotStopped] = (),
        requested_at: datetime,
    ) -> Self:
        result = super().__new__(cls, killed if force else asked)
        result.asked = asked
        result.killed = killed
        result.in_batches = in_batches
        result.not_stopped = tuple(not_stopped)
        result.requested_at = requested_at
        return result

    def __repr__(self) -> str:
        return (
            f"KillResult(asked={self.asked}, killed={self.killed}, "
            f"in_batches={self.in_batches}, not_stopped={list(self.not_stopped)!r})"
        )


def inherit_owner(fields: dict[str, Any]) -> None:
    """A run recorded under a parent run (``fields["parent"]``, an instance) that names
    no owner is the parent's owner's, as ``start_batch()``'s children are: the runs an
    integration records inside a ``batch()`` block (queued, or started inline), a batch
    inside another, a job's step. The owner scope (``API_OWNER_SCOPED``) shows, asks and
    kills a batch with the runs under it."""
    parent = fields.get("parent")
    owner = (
        getattr(parent, "owner_id", None) if isinstance(parent, models.Model) else None
    )
    if owner is not None and "owner" not in fields and "owner_id" not in fields:
        fields["owner_id"] = owner


def _chunks(items: list[Any], size: int | None) -> Iterator[list[Any]]:
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


# purge()'s batches: at most this many runs, sized to last about this many seconds.
PURGE_BATCH_SIZE = 10_000
PURGE_BATCH_SECONDS = 0.1

# failure_groups() groups every failure of a window up to this many: that aggregate is
# then as quick as reading the newest failures first (1M runs: a week's 18,700 failures
# 5.8 ms at once, 5.0 the other way; a day's 2,700, 2.5 against 4.9).
GROUPED_AT_ONCE = 20_000
# Past that, it looks for the newest groups among the newest failures: this many a group
# asked for, at most GROUP_SCAN_MAX.
GROUP_SCAN = 50
GROUP_SCAN_MAX = 2_000


def _newest_groups(failures: Any, limit: int) -> set[tuple[str, str]] | None:
    """The (job, cause) of the ``limit`` groups whose last failure is newest, with any tied
    with the last of them, read from the newest of ``failures``; None when those newest
    failures do not settle it (too few groups in them, or the window read whole).
    """
    size = min(limit * GROUP_SCAN, GROUP_SCAN_MAX)
    rows = failures.order_by("-finished_at").values_list(
        "job_name", "error_fingerprint", "finished_at"
    )[:size]
    found: set[tuple[str, str]] = set()
    cut = None
    for job_name, cause, finished_at in rows:
        if cut is not None and finished_at < cut:
            return found
        found.add((job_name, cause))
        if cut is None and len(found) >= limit:
            cut = finished_at
    return None


def values_table(
    connection: Any, values: list[Any], alias: str, db_type: str
) -> tuple[str, Any]:
    """SQL reading ``values`` as a table ``alias`` of one column, ``value``, and its one
    parameter: no placeholder per value, so one plan whatever their number (and no cap:
    SQLite's on query parameters). ``db_type``: the values' PostgreSQL type.
    """
    if connection.vendor == "postgresql":
        return f"unnest(%s::{db_type}[]) AS {alias}(value)", values
    # SQLite's JSON1 (built in wherever Django's JSONField works).
    return f"json_each(%s) AS {alias}", json.dumps(values)


def job_names_sql(table: str, *, limited: bool = True) -> str:
    """Distinct job names by skipping through the (job_name, created_at) index; ``limited``:
    one ``%s``, the most names.

    A plain ``SELECT DISTINCT`` reads every row; this recursive query (a "loose index
    scan") does one index probe per name, so its cost follows the number of names.
    ``table`` must be quoted already.
    """
    return (
        f"WITH RECURSIVE names(name) AS ("  # noqa: S608 - only the quoted table name is formatted in
        f" SELECT MIN(job_name) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN(job_name) FROM {table} WHERE job_name > names.name) FROM names WHERE names.name IS NOT NULL"
        f") SELECT name FROM names WHERE name IS NOT NULL{' LIMIT %s' if limited else ''}"
    )


def distinct_job_names(model: Any, using: str, limit: int | None = None) -> list[str]:
    """The distinct job names of ``model``'s table (up to ``limit``), in order, without reading the table."""
    connection = connections[using]
    sql = job_names_sql(
        connection.ops.quote_name(model._meta.db_table), limited=limit is not None
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [] if limit is None else [limit])
        return [row[0] for row in cursor.fetchall()]


def _whole(name: str, value: Any, minimum: int) -> int:
    """``value``, a whole number from ``minimum`` to BIGINT_MAX (the SQL bound it goes to)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= BIGINT_MAX
    ):
        raise ValueError(
            f"{name} must be a whole number from {minimum} to {BIGINT_MAX}, not {value!r}"
        )
    return value


def _job_names(names: Iterable[str]) -> list[str]:
    """``names``, sorted and each once; a ValueError for one name passed alone (a string
    is an iterable of its letters: each letter was looked up as a job)."""
    if isinstance(names, str):
        raise ValueError(f"names must be a list of job names, not the string {names!r}")
    return sorted(set(names))


# Fields a kill never reads: not loaded for it.
_UNUSED_BY_KILL = ("params", "data", "result", "traceback", "attempts")

_KILLED_BY_FORCE = _("Killed by force.")


# Reads of a run a forced kill makes when the run keeps moving under it.
_KILL_TRIES = 3


def _killed(
    run: JobRun, message: str | None, *, however_active: bool = False, **fields: Any
) -> bool:
    """End ``run`` killed now (with ``fields``); False when it finished (or was deleted) first.

    ``however_active`` (a forced kill): a run that moved on meanwhile to another active
    status or attempt (its worker retried it, or restarted it) is read again and killed
    there. The move was refused, and taken for an end: the kill said nothing went wrong
    and the retry ran.
    """
    for _try in range(_KILL_TRIES):
        try:
            run.mark_killed(message=message or str(_KILLED_BY_FORCE), **fields)
        except run.DoesNotExist:
            return False
        except InvalidTransition:
            if not however_active:
                return False
            try:
                # All of it: the task system is told with its worker and start (a run
                # started meanwhile is running, and may be one nothing can stop).
                run.refresh_from_db(using=run._state.db)
            except run.DoesNotExist:
                return False
            if run.is_finished:
                return False
        else:
            return True
    return False


def _killed_batch(run: JobRun, message: str | None) -> bool:
    """A forced kill of a batch's parent: ``_killed()`` while a run under it is active (or
    its ``batch()`` block is open); once every run under it has ended, it ends as they add
    up instead (``refresh_batch()``), and counts as no kill.

    ``settle_ended()`` settles such parents before the kill, but a last child may end in
    between: the kill then ended ``killed`` a batch whose every run had succeeded. The
    parent's row is locked while its children are read, so a child that ends after the
    read finds the parent killed, as a kill made while it ran leaves it.
    """
    from django_jobstatus.batches import _OPEN, refresh_batch  # they import this module

    db = write_database(run._state.db)
    runs = type(run)._default_manager.using(db)
    # SQLite: BEGIN IMMEDIATE, or a worker's write committed after the reads below failed
    # the kill's write at once ("database is locked").
    with statements.write_transaction(db):
        list(runs.select_for_update().filter(pk=run.pk).values_list("pk", flat=True))
        if (
            runs.filter(_OPEN, pk=run.pk).exists()
            or runs.filter(parent=run.pk, status__in=sorted(Status.ACTIVE)).exists()
        ):
            return _killed(run, message, however_active=True)
    refresh_batch(run)
    return False


class JobRunQuerySet(models.QuerySet["JobRun"]):
    # States.

    def queued(self) -> Self:
        """Runs waiting for a worker."""
        return self.filter(status=Status.QUEUED)

    def running(self) -> Self:
        """Runs a worker is executing now."""
        return self.filter(status=Status.RUNNING)

    def retrying(self) -> Self:
        """Runs whose attempt failed and that wait for another."""
        return self.filter(status=Status.RETRYING)

    def active(self) -> Self:
        """Runs not finished yet: queued, running or retrying."""
        return self.filter(status__in=sorted(Status.ACTIVE))

    def still(self, status: str, attempt: int | None = None) -> Self:
        """The runs the other filters find (by primary key) that are ``status`` (at ``attempt``).

        The check is made on the rows found, never through an index: PostgreSQL would
        otherwise walk an index that begins with ``status`` whenever its statistics are
        stale, and a conditional move by primary key then read every queued run (5 ms a
        task start with 300 queued, issue 12) instead of one row.
        """
        runs = self.filter(Exact(Concat(F("status"), Value("")), status))
        return runs if attempt is None else runs.filter(attempt=attempt)

    def finished(self) -> Self:
        """Runs in a terminal state: succeeded, failed, killed or lost."""
        return self.filter(status__in=sorted(Status.TERMINAL))

    def succeeded(self) -> Self:
        """Runs that finished without error."""
        return self.filter(status=Status.SUCCEEDED)

    def failed(self) -> Self:
        """Runs that finished with an error and no retry left."""
        return self.filter(status=Status.FAILED)

    def killed(self) -> Self:
        """Runs stopped on request."""
        return self.filter(status=Status.KILLED)

    def lost(self) -> Self:
        """Runs whose worker stopped sending heartbeats."""
        return self.filter(status=Status.LOST)

    def failed_or_lost(self) -> Self:
        """Runs that ended without reaching their end: failed, or lost with their worker."""
        return self.filter(status__in=sorted({Status.FAILED, Status.LOST}))

    # Other predicates.

    def with_errors(self) -> Self:
        """Runs that logged an error, whatever their state."""
        return self.filter(has_errors=True)

    def for_job(self, name: str) -> Self:
        """Runs of one job (a ValueError for what is not a job name: a list was looked up
        as its text, and matched nothing)."""
        if not isinstance(name, str):
            raise ValueError(f"name must be a job name (a string), not {name!r}")
        return self.filter(job_name=name)

    def older_than(self, days: float | timedelta = 30) -> Self:
        """Runs created before ``days`` ago (a number of days or a timedelta)."""
        return self.filter(created_at__lt=timezone.now() - as_timedelta("days", days))

    def recent(self, limit: int = 100) -> Self:
        """The newest ``limit`` runs, newest first."""
        return self.order_by("-created_at", "-id")[: _whole("limit", limit, 0)]

    def stale(self, timeout: float | timedelta | None = None) -> Self:
        """Running runs with no heartbeat (or start, if they never beat) for ``timeout``
        seconds (default HEARTBEAT_TIMEOUT; at least two heartbeat intervals, stale_timeout())."""
        return self.filter(stale_condition(stale_timeout(timeout)))

    def stale_queued(self, timeout: float | timedelta | None = None) -> Self:
        """Runs waiting for a worker that none started for ``timeout`` seconds (default
        ``QUEUED_TIMEOUT``): queued, or retrying (the next attempt's message on its way).

        A first attempt waits from ``queued_at``; a later one from its retry, the move into
        ``retrying`` or back into ``queued`` (``updated_at``): ``queued_at`` stays the first
        attempt's, and a retrying run has no other stamp. A run scheduled for later waits
        from when it is due (``due_at``), if that is later still. A batch's parent waits
        for no worker but for its children: not while one is active, and from the last
        time one moved (an open ``batch()`` block's enqueues included), probed per run by
        the children's index.
        """
        if timeout is None:
            timeout = settings.QUEUED_TIMEOUT
        if timeout is None:
            raise ValueError(
                "stale_queued() needs a timeout: pass one, or set JOBSTATUS['QUEUED_TIMEOUT']"
            )
        cutoff = timezone.now() - queued_wait(timeout)
        first = Q(status=Status.QUEUED, attempt=1) & (
            Q(queued_at__lt=cutoff) | Q(queued_at__isnull=True, created_at__lt=cutoff)
        )
        later = Q(
            status__in=[Status.QUEUED, Status.RETRYING],
            attempt__gt=1,
            updated_at__lt=cutoff,
        )
        due = Q(due_at__isnull=True) | Q(due_at__lt=cutoff)
        moving = self.model.objects.filter(parent=OuterRef("pk")).filter(
            Q(status__in=sorted(Status.ACTIVE)) | Q(updated_at__gte=cutoff)
        )
        return self.filter(first | later, due).exclude(Exists(moving))

    def held_by_batch(self) -> Self:
        """Runs a batch still gathering its children holds, its parent and children: not
        to be deleted before the batch ends, which still counts them
        (``held_by_batch_condition()``)."""
        every = self.model._base_manager.using(self.db).order_by()
        return self.filter(held_by_batch_condition(every))

    def kill_requested(self) -> Self:
        """Runs someone asked to stop."""
        return self.filter(kill_requested_at__isnull=False)

    def not_kill_requested(self) -> Self:
        """Runs nobody asked to stop."""
        return self.filter(kill_requested_at__isnull=True)

    def count_by_status(self) -> dict[str, int]:
        """How many of these runs are in each status (statuses with none left out), in one query."""
        return dict(self.order_by().values_list("status").annotate(n=Count("pk")))

    # Reading one run.

    def latest_for(self, name: str) -> JobRun | None:
        """The newest run of job ``name``, or None."""
        return self.for_job(name).order_by("-created_at", "-id").first()

    def latest_for_each(self, names: Iterable[str]) -> dict[str, JobRun]:
        """The newest run of each job in ``names`` that has one, by name: one query.

        One subquery, an index probe of (job_name, created_at), run for each name of a
        list passed as one parameter: planned once whatever the number of names.
        """
        wanted = _job_names(names)
        if not wanted:
            return {}
        newest = self._newest_of_each(wanted, 1)
        return {run.job_name: run for run in self.filter(pk__in=newest)}

    def newest_ids(self, names: Iterable[str], count: int) -> list[Any]:
        """The ids of the newest ``count`` runs of each job in ``names``.

        One query on PostgreSQL (and anywhere for ``count`` 1), as latest_for_each();
        elsewhere one query a job.
        """
        wanted = _job_names(names)
        if not wanted or _whole("count", count, 0) < 1:
            return []
        if count == 1 or connections[self.db].vendor == "postgresql":
            newest = self._newest_of_each(wanted, count)
            return list(self.filter(pk__in=newest).values_list("pk", flat=True))
        ids: list[Any] = []
        for name in wanted:
            newest_first = self.for_job(name).order_by("-created_at", "-id")
            ids += newest_first.values_list("pk", flat=True)[:count]
        return ids

    def _newest_of_each(
        self, wanted: list[str], count: int
    ) -> models.expressions.RawSQL:
        """A subquery of the ids of the newest ``count`` runs of each job in ``wanted``
        (``count`` above 1: PostgreSQL only)."""
        connection = connections[self.db]
        # The probe is compiled with a marker for the name, which becomes the list's column.
        marker = "\x00jobstatus-name"
        probe = self.for_job(marker).order_by("-created_at", "-id").values("pk")[:count]
        sql, params = probe.query.get_compiler(using=self.db).as_sql()
        pieces, kept = [], []
        for piece, param in _placeholders(sql, params):
            pieces.append(piece)
            if param is _NO_PARAM:
                continue
            if param == marker:
                pieces.append("names.value")
            else:
                pieces.append("%s")
                kept.append(param)
        names_sql, names_param = values_table(connection, wanted, "names", "text")
        # A scalar subquery for one run a job, an array of them for more.
        each = "({})" if count == 1 else "unnest(ARRAY({}))"
        # Fifty probes OR-ed (the former query) took 3-4 ms to plan on PostgreSQL, this 0.3.
        return models.expressions.RawSQL(  # noqa: S611 - compiled SQL; the names are a parameter
            f"SELECT {each.format(''.join(pieces))} FROM {names_sql}",  # noqa: S608
            [*kept, names_param],
        )

    # Creating runs.

    @staticmethod
    def _checked(name: str, status: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The field values of the run to record, checked and storable."""
        check_job_name(name)
        for field in ("job_name", "status", "finished_at", "error_fingerprint"):
            # Named here or set by the run's moves (mark_*()): status="bogus" was stored.
            if field in fields:
                raise ValueError(
                    f"{field} is not given when a run is recorded: the job is named by "
                    "the first argument, and the run's moves (mark_*()) set the rest."
                )
        for field in ("params", "data", "result"):
            if field in fields:
                check_json(field, fields[field])
        if "progress_current" in fields or "progress_total" in fields:
            # As the handle and set_progress() refuse them: the database's CHECK
            # constraint raised IntegrityError, which breaks the caller's transaction.
            current, total = check_progress(
                fields.get("progress_current", 0), fields.get("progress_total")
            )
            fields |= {"progress_current": current, "progress_total": total}
        now = timezone.now()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        return storable({"job_name": name, "status": status, **fields})

    def _build(self, name: str, status: str, fields: dict[str, Any]) -> JobRun:
        """The run to record, checked, not saved yet."""
        return self.model(**self._checked(name, status, fields))

    def _create(self, name: str, status: str, fields: dict[str, Any]) -> JobRun:
        self._for_write = True
        alias = self.db
        if statements.usable(alias) and not statements.observed():
            # One INSERT from SQL text made once: no model save, no ORM compiler (issue 12).
            return statements.insert(alias, self._checked(name, status, fields))
        run = self._build(name, status, fields)
        run.save(force_insert=True, using=alias)
        return run

    def enqueue(self, name: str, **fields: Any) -> JobRun:
        """Record a run waiting for a worker."""
        return self._create(name, Status.QUEUED, self._queued(fields))

    def queued_values(self, name: str, **fields: Any) -> dict[str, Any]:
        """The field values of the run ``enqueue()`` would record, checked (for a caller that inserts it its own way)."""
        return self._checked(name, Status.QUEUED, self._queued(fields))

    @staticmethod
    def _queued(fields: dict[str, Any]) -> dict[str, Any]:
        fields.setdefault("queued_at", timezone.now())
        inherit_owner(fields)
        return fields

    def start(self, name: str, **fields: Any) -> JobRun:
        """Record a run that starts now, in this process (never before its ``queued_at``,
        when one is given: the enqueuer's clock may be ahead of this one)."""
        now = timezone.now()
        queued = fields.get("queued_at")
        fields.setdefault("started_at", max(now, queued) if queued else now)
        inherit_owner(fields)
        fields.setdefault("heartbeat_at", database_now(now))
        fields.setdefault("worker", default_worker())
        return self._create(name, Status.RUNNING, fields)

    # Bulk writes.

    def update_returning(
        self, fields: Iterable[str] = (), **values: Any
    ) -> list[JobRun] | None:
        """UPDATE these runs with ``values`` and return them as the UPDATE left them, in one
        statement (``UPDATE … RETURNING``); only ``fields`` (and the id) are loaded when given.

        None where the database cannot return rows from an UPDATE (SQLite before 3.35,
        MySQL): the caller then updates and reads.
        """
        connection = connections[self.db]
        if not connection.features.can_return_columns_from_insert:
            return None
        query = cast("UpdateQuery", self.query.chain(UpdateQuery))
        query.add_update_values(values)
        sql, params = query.get_compiler(self.db).as_sql()
        meta = self.model._meta
        chosen = (
            [meta.pk, *(meta.get_field(name) for name in fields)]
            if fields
            else meta.concrete_fields
        )
        columns = ", ".join(
            connection.ops.quote_name(str(field.column))  # type: ignore[union-attr]
            for field in chosen
        )
        return list(
            self.model.objects.raw(f"{sql} RETURNING {columns}", params, using=self.db)
        )

    def writing(self) -> Self:
        """These runs on the database writes go to: everything a write reads decides what it
        changes, and a router may send plain reads to a replica (``READ_DATABASE``)."""
        if self._db is not None:  # type: ignore[attr-defined]
            return self
        return self.using(router.db_for_write(self.model))

    def request_kill(
        self,
        *,
        force: bool = False,
        message: str | None = None,
        among: JobRunQuerySet | None = None,
    ) -> KillResult:
        """Ask every active run here to stop, and tell the task systems running them.

        The kill request is recorded first (``kill_requested_at``; the job sees it at its
        next progress call or ``check_kill()``). Then each active run that an enabled
        integration recorded is handed to it: Celery revokes (and terminates) the task,
        RQ stops or cancels the job. With ``force=True`` every active run here also ends
        ``killed`` at once (with ``message``), stopped where its task system can, and the
        runs nothing can stop are listed with the reason. A task system's error (its
        broker down) never loses the request: it is logged and listed in
        ``not_stopped``. Returns a :class:`KillResult`: the number of runs newly asked
        (forced: ended killed).

        A batch's parent here takes the active runs under it along (``_under_batches()``,
        counted apart in ``in_batches``): no worker runs a parent, so none would ever
        read its request, and the batch would run on to its end. A parent still active
        though every child has ended (its refresh after the last one not made yet) is
        neither asked nor killed: it ends first as its children add up
        (``batches.settle_ended()``), and counts as a run already finished.

        ``among`` (default: every run) is what the caller may act on: the runs under the
        batches are taken from it alone, and reached through it alone (the runs here are
        the caller's own pick). A batch may hold runs of other owners (a child of
        ``start_batch()`` may name its own): a user the API scopes to their own runs
        (``API_OWNER_SCOPED``) asked, killed and counted them along with their batch. A
        forced kill then only asks a batch's parent that holds an active run outside
        ``among``: it ends as its runs do (``_holding_others()``).

        A batch's parent is never handed to its task system: it runs nowhere, its runs
        are asked and killed themselves, and a forced kill listed it in ``not_stopped``
        ("no enabled integration can stop…") though it and its runs ended killed.
        """
        if (runs := self.writing()) is not self:
            return runs.request_kill(force=force, message=message, among=among)
        # It imports this module.
        from django_jobstatus.batches import BATCH_PARENT, settle_ended

        now = timezone.now()
        sources = contrib.sources()
        # Read before any write: the writes must not change what the selection means.
        under = self._under_batches(among)
        spared = self._holding_others(under, among) if force else set()
        every = self.model.objects.using(self.db)
        # The runs under the selection first: a batch inside a batch ends before the one
        # around it.
        settle_ended(
            *(
                every.filter(pk__in=part)
                for part in _chunks(under, _chunk_size(self.db))
            ),
            self,
        )
        if not force and not sources:
            asked = (
                self.active()
                .not_kill_requested()
                .update(kill_requested_at=now, updated_at=now)
            )
            in_batches = sum(
                every.filter(pk__in=part)
                .active()
                .not_kill_requested()
                .update(kill_requested_at=now, updated_at=now)
                for part in _chunks(under, _chunk_size(self.db))
            )
            return KillResult(asked=asked, in_batches=in_batches, requested_at=now)
        ids = list(self.active().order_by().values_list("pk", flat=True))
        picked = set(ids)
        # The runs picked first: a batch's parent killed after its children would have
        # ended already, as they add up.
        groups = [ids, [pk for pk in under if pk not in picked]]
        newly_asked, ended = [0, 0], [0, 0]
        not_stopped: list[NotStopped] = []
        # A run no worker runs is a batch's parent once it has children: a queued run has
        # no worker either, and its task system may have to drop it.
        batch_parent = ExpressionWrapper(
            Q(BATCH_PARENT, Exists(every.filter(parent=OuterRef("pk")))),
            output_field=models.BooleanField(),
        )
        for group, group_ids in enumerate(groups):
            for part in _chunks(group_ids, _chunk_size(self.db)):
                newly_asked[group] += (
                    every.filter(pk__in=part)
                    .active()
                    .not_kill_requested()
                    .update(kill_requested_at=now, updated_at=now)
                )
                runs = (
                    every.filter(pk__in=part)
                    .active()
                    .defer(*_UNUSED_BY_KILL)
                    .annotate(batch_parent=batch_parent)
                )
                if not force:
                    runs = runs.filter(source__in=sources)
                chosen = _parents_first(list(runs))
                if force:
                    chosen = [
                        run
                        for run in chosen
                        if run.pk not in spared
                        and (
                            _killed_batch(run, message)
                            if run.batch_parent  # type: ignore[attr-defined]
                            else _killed(run, message, however_active=True)
                        )
                    ]
                    ended[group] += len(chosen)
                not_stopped += contrib.stop(
                    [run for run in chosen if not run.batch_parent],  # type: ignore[attr-defined]
                    force=force,
                )
        return KillResult(
            asked=newly_asked[0],
            killed=ended[0],
            in_batches=ended[1] if force else newly_asked[1],
            force=force,
            not_stopped=not_stopped,
            requested_at=now,
        )

    def _under_batches(self, among: JobRunQuerySet | None = None) -> list[Any]:
        """The ids of the active runs of ``among`` (default: every run) under the batches'
        parents among the active runs here (``batches.BATCH_PARENT``), through the nested
        batches of ``among``: a query a level, most often two (the children; none of them
        a batch).

        No worker runs a batch's parent, so none reads a kill request made to it (an open
        ``batch()`` block asks its children, but only while it runs): its runs must be
        asked themselves, or the batch runs on to its end.
        """
        from django_jobstatus.batches import BATCH_PARENT  # it imports this module

        every = (
            (self.model.objects.all() if among is None else among)
            .using(self.db)
            .order_by()
            .active()
        )
        found: dict[Any, None] = {}
        level = self.active().filter(BATCH_PARENT).order_by()
        while True:
            level = every.filter(parent__in=level.values("pk"))
            new = [pk for pk in level.values_list("pk", flat=True) if pk not in found]
            if not new:
                return list(found)
            found.update(dict.fromkeys(new))
            level = level.filter(BATCH_PARENT)

    def _holding_others(
        self, under: list[Any], among: JobRunQuerySet | None
    ) -> set[Any]:
        """The ids of the batches' parents that hold active runs ``among`` leaves out
        (``under``: the runs under the batches it takes along), at any depth: a forced
        kill asks them, and they end as their runs do. Ended killed, a batch would say its
        work had stopped while a run the caller may not act on went on, and that run's end
        could no longer move it. Nothing without ``among``: every run is taken along."""
        if among is None:
            return set()
        taken = set(under)
        level = [pk for pk in self._under_batches() if pk not in taken]
        every = self.model.objects.using(self.db).order_by()
        spared: set[Any] = set()
        while level:
            parents = {
                pk
                for part in _chunks(level, _chunk_size(self.db))
                for pk in every.filter(pk__in=part, parent__isnull=False).values_list(
                    "parent_id", flat=True
                )
            } - spared
            spared |= parents
            level = list(parents)
        return spared

    def purge(
        self,
        *,
        days: float | timedelta | None = None,
        retention: Mapping[str, float | timedelta] | None = None,
        keep_last: int | None = None,
        statuses: Iterable[str] | None = None,
        include_active: bool = False,
        batch_size: int = PURGE_BATCH_SIZE,
        batch_seconds: float = PURGE_BATCH_SECONDS,
        dry_run: bool = False,
        progress: Callable[[PurgeResult], None] | None = None,
        now: datetime | None = None,
        jobs: int = 1,
    ) -> PurgeResult:
        """Delete the old runs here with their log lines, in short batches; the counts.

        A run goes when it was created longer ago than its status's retention: ``days``
        for every status when given, else ``JOBSTATUS["RETENTION"][status]`` or
        ``RETENTION_DAYS`` (``retention`` replaces ``JOBSTATUS["RETENTION"]``). Only
        finished runs go unless ``include_active``; ``statuses`` narrows further. The
        newest ``keep_last`` runs of every job name (default ``KEEP_LAST``, counted over
        all its runs) stay whatever their age. Each batch is one short transaction that
        takes the write lock up front, sized to last about ``batch_seconds`` and holding
        at most ``batch_size`` runs (on PostgreSQL, a batch waiting for a lock longer than
        twice ``batch_seconds`` is rolled back and tried again at half the size): log lines are
        deleted in SQL, never loaded, with their runs. ``progress(result)`` is called after each batch. ``dry_run`` deletes nothing
        and returns the same counts per job name and status (pass the same ``now``, the
        time the retention counts back from, to both calls for exactly the same runs).

        ``jobs`` above 1 (PostgreSQL only, outside any transaction; at most 16) deletes
        with that many connections at once, each taking the next slice of the runs (cut
        by time and by the database's statistics): a long backlog goes faster, for as
        many of the database's cores.
        ``progress`` is then called from their threads, one at a time. The engine lives
        in ``django_jobstatus.retention``.
        """
        # Imported here: retention.py builds on this module's helpers and imports it.
        from django_jobstatus import retention as engine

        return engine.purge(
            self,
            days=days,
            retention=retention,
            keep_last=keep_last,
            statuses=statuses,
            include_active=include_active,
            batch_size=batch_size,
            batch_seconds=batch_seconds,
            dry_run=dry_run,
            progress=progress,
            now=now,
            jobs=jobs,
        )

    def reap(
        self,
        timeout: float | timedelta | None = None,
        *,
        queued_timeout: float | timedelta | None = None,
        batch_size: int = 100,
        dry_run: bool = False,
    ) -> ReapResult:
        """Mark the stale running runs here ``lost``, each with a message and a log line.

        ``timeout`` is in seconds (default ``HEARTBEAT_TIMEOUT``), as for ``stale()``. Each
        batch locks its runs (``SKIP LOCKED`` where the database has it), so reapers running
        at once never reap a run twice, and ``mark_lost()`` is a conditional UPDATE: a job
        finishing at the same instant either wins (counted in ``finished``) or gets
        ``InvalidTransition``, never both.

        With ``queued_timeout`` (seconds; default ``QUEUED_TIMEOUT``, which is off), runs
        queued longer than that also end: ``killed``, with a message saying why, and
        their task systems are told to drop them (Celery's revoke, RQ's cancel), so a
        message the broker lost leaves no run waiting for ever (counted in ``expired``).

        ``dry_run`` changes nothing: the result counts the runs that would be reaped and
        expired, and lists them (``stale_runs``, ``queued_runs``). The engine lives in
        ``django_jobstatus.retention``, with the purge's.
        """
        from django_jobstatus import retention

        return retention.reap(
            self,
            timeout,
            queued_timeout=queued_timeout,
            batch_size=batch_size,
            dry_run=dry_run,
        )

    # Numbers.

    def failure_groups(
        self,
        since: datetime,
        limit: int = 200,
        retry_sources: Iterable[str] = (),
        *,
        window_failures: int = 0,
    ) -> list[dict[str, Any]]:
        """Failed and lost runs finished since ``since``, one row per job and error fingerprint.

        Each row: ``job_name``, ``error_fingerprint``, ``count``, ``first_seen`` and
        ``last_seen`` (finish times), ``lost`` (how many were lost) and ``retryable`` (how
        many come from ``retry_sources``), the ``limit`` newest groups, newest first.

        One aggregate of the window's failures, from the index ``jobstatus_run_failure_idx``
        alone: its cost follows their number. ``window_failures``, about how many there are
        (the dashboard knows from its roll-ups): past GROUPED_AT_ONCE, a read of the newest
        of them comes first and tells which groups are the newest, then only those are
        counted, a range of ``jobstatus_run_group_idx`` each (two queries; one aggregate
        still, when that read does not settle it).
        """
        failures = self.failed_or_lost().filter(finished_at__gte=since).order_by()
        newest = (
            _newest_groups(failures, limit)
            if window_failures > GROUPED_AT_ONCE
            else None
        )
        if newest is not None:
            names, causes = zip(*newest, strict=True)
            # Each of the names with each of the causes: a pair that is not one of the
            # newest groups was last seen before all of them, so the LIMIT leaves it out.
            failures = failures.filter(
                job_name__in=sorted(set(names)),
                error_fingerprint__in=sorted(set(causes)),
            )
        rows = (
            failures.values("job_name", "error_fingerprint")
            .annotate(
                # Columns of the index only (no id): an index-only scan.
                count=Count("*"),
                lost=Count("status", filter=Q(status=Status.LOST)),
                retryable=Count("source", filter=Q(source__in=list(retry_sources))),
                first_seen=Min("finished_at"),
                last_seen=Max("finished_at"),
            )
            .order_by("-last_seen", "job_name", "error_fingerprint")
        )
        return [dict(row) for row in rows[:limit]]

    def finished_buckets(
        self,
        size: str,
        *by: str,
        durations: bool = False,
        tzinfo: tzinfo | None = None,
    ) -> list[dict[str, Any]]:
        """Finished runs per ``size`` ("minute", "hour" or "day" of ``finished_at``), oldest first.

        Each row: ``start``, the fields named in ``by`` (a field, or ``"duration_bucket"``
        for the histogram bucket of duration_bucket()), ``finished`` and one count per
        terminal status; with ``durations``, ``seconds``: the sum of their durations.
        ``tzinfo`` is the buckets' time zone (default: the current one): a day is a local
        day, a minute or an hour a real one that starts on the local clock (the hour a
        DST fall-back repeats is two buckets). One aggregate:
        the dashboard's chart and hourly figures and the API's stats buckets.
        """
        zone = tzinfo or timezone.get_current_timezone()
        rows = [
            dict(row)
            for row in self.finished_buckets_query(
                size, *by, durations=durations, tzinfo=zone
            ).order_by("start")
        ]
        if not any("offset" in row for row in rows):
            return rows
        for row in rows:
            # The local wall-clock start at the offset in force: its moment, in UTC.
            wall = row["start"].replace(tzinfo=None)
            row["start"] = (wall - row.pop("offset")).replace(tzinfo=UTC)
        # Sorted in UTC: the two 02:00 of a fall-back compare equal in their zone.
        rows.sort(key=lambda row: row["start"])
        for row in rows:
            row["start"] = row["start"].astimezone(zone)
        return rows

    def finished_buckets_query(
        self,
        size: str | None,
        *by: str,
        durations: bool = False,
        tzinfo: tzinfo | None = None,
    ) -> models.QuerySet[Any]:
        """finished_buckets() as an unordered ``values()`` queryset (to insert from, for one).

        ``size`` None: no ``start``, the counts of the whole range per the fields of ``by``.
        A minute or an hour in a zone whose offset changes (not UTC or a fixed offset)
        has its local wall-clock ``start`` and the UTC ``offset`` in force (see
        _time_groups()): finished_buckets() makes them one moment.
        """
        if size is not None and size not in TIME_BUCKETS:
            raise ValueError(
                f"size must be one of {', '.join(TIME_BUCKETS)} (or None), not {size!r}"
            )
        groups: dict[str, Any] = {} if size is None else _time_groups(size, tzinfo)
        if "duration_bucket" in by:
            groups["duration_bucket"] = duration_bucket()
        counts: dict[str, Any] = {
            status: Count("pk", filter=Q(status=status))
            for status in sorted(Status.TERMINAL)
        }
        if durations:
            timed = Q(started_at__isnull=False)
            counts["seconds"] = models.Sum(_EpochSeconds(DURATION), filter=timed)
        rows: models.QuerySet[Any] = (
            self.finished()
            .order_by()
            .annotate(**groups)
            .values(*groups, *(name for name in by if name not in groups))
            .annotate(finished=Count("pk"), **counts)
        )
        return rows

    def stats(self) -> list[dict[str, Any]]:
        """Per job name: total, a count per status, failure rate and duration figures in seconds.

        ``failure_rate`` is failed / finished. Percentiles are exact on PostgreSQL
        (``percentile_cont``); elsewhere they are computed in Python from the durations.
        """
        statuses = Status.values
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
        with aggregating(self.db):
            # django-stubs types the rows by the values() keys only, not the annotations.
            fetched = list(cast("Iterable[Mapping[str, Any]]", rows))
        for row in fetched:
            finished = sum(row[status] for status in Status.TERMINAL)
            entry: dict[str, Any] = {
                "job_name": row["job_name"],
                "total": row["total"],
                "counts": {status: row[status] for status in statuses},
                "failure_rate": row[Status.FAILED] / finished if finished else None,
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


_JobRunManagerBase = models.Manager.from_queryset(JobRunQuerySet)


class JobRunManager(_JobRunManagerBase["JobRun"]):
    """JobRunQuerySet's manager: a query first waits for the queued runs this process handed to its writer.

    An integration writes a queued run behind the enqueue (``writebehind``): this
    process reads its own writes all the same.
    """

    def get_queryset(self) -> JobRunQuerySet:
        writebehind.catch_up()
        return cast("JobRunQuerySet", super().get_queryset())

    def queued_values(self, name: str, **fields: Any) -> dict[str, Any]:
        """``JobRunQuerySet.queued_values()``, which reads nothing: it does not wait for the writer."""
        return JobRunQuerySet(self.model, using=self._db).queued_values(name, **fields)


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


_NO_PARAM = object()


def _placeholders(sql: str, params: Sequence[Any]) -> Iterator[tuple[str, Any]]:
    """``sql`` cut at each ``%s``: each piece with the parameter that follows it (the last with none)."""
    values = iter(params)
    piece: list[str] = []
    for part in re.split(r"(%%|%s)", sql):
        if part == "%s":
            yield "".join(piece), next(values)
            piece = []
        else:
            piece.append(part)
    yield "".join(piece), _NO_PARAM
