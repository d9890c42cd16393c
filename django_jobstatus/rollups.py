"""The dashboard's figures of finished runs: hourly roll-ups for closed hours, the rest live.

A run finishes at "now", so once an hour is over (plus GRACE for a transaction that
commits late) the runs that finished in it never change: its counts per job, status and
duration bucket are computed once, on the first request that needs them, and kept in
``JobRunHour`` (an ``INSERT … SELECT``, nothing added to a task's own writes); each hour's
marker row holds its totals (the chart). A window (24 h, 7 d) has rows of its own too: its
sums per job and duration bucket, made once from its hours, then moved on by an hour
each hour (the earlier window's rows, plus the hour that closed, minus the hour that
left). A window's figures are then its rows, its hours' markers and the runs finished
since the last closed hour: two queries, whatever the number of runs (the window's
rows are summed per job by the database: some 220 rows for a busy week).

What is approximate: the 24 h and 7 d windows start on a whole hour (up to an hour
more than the window), and p50/p95 come from a log-scale histogram (within about 4.4 %,
see ``querysets.DURATION_STEPS``). Runs deleted after their hour was rolled up stay
counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connections, models, router, transaction
from django.db.models import Case, Exists, F, Q, Sum, Value, When

from django_jobstatus.models import JobRun, JobRunHour, Status
from django_jobstatus.querysets import UNTIMED, aggregating, bucket_seconds

HOUR = timedelta(hours=1)
# How long after an hour ends its runs are taken as final (a finish committed late).
GRACE = timedelta(minutes=5)
# Roll-ups older than this are deleted when an hour is filled (the dashboard reads 7 days).
KEEP = timedelta(days=8)
# The terminal statuses, in the roll-up's column order.
FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST)
# The dashboard's windows read from the roll-ups (its last hour is read live), which
# ``reap_jobstatus`` keeps rolled up (``roll_up()``).
WINDOWS = (timedelta(hours=24), timedelta(days=7))
# Missing hours are rolled up this many at a time, each batch in a transaction of its own:
# a request that dies meanwhile (a worker timeout) keeps the hours it finished, and the
# next one goes on from there (a week in one transaction: 9.9 s at ten million runs).
FILL_AT_ONCE = 24


@dataclasses.dataclass
class JobFigures:
    """One job's finished runs in a window: a count per terminal status, a duration histogram."""

    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    histogram: Counter[int] = dataclasses.field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, fraction: float) -> float | None:
        """The duration (seconds) below which ``fraction`` of the timed runs lie, from the histogram."""
        return self.percentiles(fraction)[0]

    def percentiles(self, *fractions: float) -> list[float | None]:
        """percentile() of each of ``fractions`` (ascending), in one pass over the histogram.

        Interpolated between the two nearest ranks, as ``stats()`` (``percentile_cont``)
        does: the lower nearest rank showed a p95 of 1 s for 19 runs of 1 s and one of
        100 s, where ``stats()``, the API and the metrics say 5.95 s.
        """
        timed = sum(self.histogram.values())
        if not timed:
            return [None] * len(fractions)
        ordered = sorted(self.histogram)
        # ends[k]: how many durations lie in the buckets up to ordered[k], it included.
        ends = list(itertools.accumulate(self.histogram[b] for b in ordered))

        def bucket_of(rank: int, k: int) -> int:
            """The bucket holding the ``rank``-th duration (from 0), searched from ``k`` on."""
            while ends[k] <= rank:
                k += 1
            return k

        found: list[float | None] = []
        k = 0
        for fraction in fractions:
            position = (timed - 1) * fraction
            low = math.floor(position)
            k = bucket_of(low, k)
            above = bucket_of(min(low + 1, timed - 1), k)
            low_value = bucket_seconds(ordered[k])
            high_value = bucket_seconds(ordered[above])
            found.append(low_value + (high_value - low_value) * (position - low))
        return found


@dataclasses.dataclass
class Figures:
    """A window's finished runs: per time bucket and status (the chart), per job (the table)."""

    buckets: dict[datetime, Counter[str]]
    jobs: dict[str, JobFigures]

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for job in self.jobs.values():
            total.update(job.counts)
        return total

    def merge(self, other: Figures) -> None:
        """Add ``other``'s figures to these (``other`` is left as it is)."""
        for start, counts in other.buckets.items():
            self.buckets.setdefault(start, Counter()).update(counts)
        for name, figures in other.jobs.items():
            job = self.jobs.setdefault(name, JobFigures())
            job.counts.update(figures.counts)
            job.histogram.update(figures.histogram)

    def add_bar(self, start: datetime, counts: list[int]) -> None:
        """Add a count per FINISHED status to the bar starting at ``start``."""
        self.buckets.setdefault(start, Counter()).update(
            dict(zip(FINISHED, counts, strict=True))
        )


def floor(moment: datetime, size: timedelta) -> datetime:
    """``moment`` (aware) down to a whole ``size`` in UTC: an hour, or a number of minutes."""
    utc = moment.astimezone(UTC).replace(second=0, microsecond=0)
    minutes = int(size.total_seconds() // 60)
    if minutes >= 60:
        return utc.replace(minute=0)
    return utc.replace(minute=utc.minute - utc.minute % minutes)


def figures(since: datetime, now: datetime, size: timedelta) -> Figures:
    """Finished runs from ``since`` to ``now`` in buckets of ``size`` (an hour, or less: all live).

    One query (the runs since the last closed hour) while the closed hours' sums are in
    the cache, two once they are rolled up, a few more for the first request after an
    hour ends (it rolls the hour up).
    """
    result = _empty(since, now, size)
    if size < HOUR:
        _add_live(result, floor(since, size), size)
        return result
    start, closed = floor(since, HOUR), floor(now - GRACE, HOUR)
    result.merge(_closed(start, closed))
    _add_live(result, closed, size)
    return result


def roll_up(now: datetime) -> None:
    """Roll up the closed hours and the rows of each of the dashboard's WINDOWS ending at
    ``now``, as the dashboard's first request at ``now`` would.

    ``reap_jobstatus`` calls this each time it runs, so the dashboard never rolls up
    more than the hour that closed since: opened after a week nobody looked, it would
    roll the week up in that request (1.9 s on a million runs, 10 s on ten million).
    """
    end = floor(now - GRACE, HOUR)
    for window in WINDOWS:
        _closed(floor(now - window, HOUR), end)


def _closed(start: datetime, end: datetime) -> Figures:
    """The roll-ups of the closed hours from ``start`` to ``end``, rolling up the missing ones.

    Kept in Django's default cache until the next hour closes: the hours of a range never
    change once rolled up, and the key names the range (a refresh of the page reads only
    the runs of the current hour).
    """
    key = f"django_jobstatus.rollups:{start.isoformat()}:{end.isoformat()}"
    found: Figures | None = cache.get(key)
    if found is None:
        found = Figures(buckets={}, jobs={})
        hours, windows = _add_closed(found, start, end)
        # One hour is its own window: its rows are the window's.
        if hours or (start not in windows and _span(start, end) > 1):
            _fill(start, end, hours, derive=start - HOUR in windows)
            # Read back where they were written: a replica (READ_DATABASE) may lag.
            db = router.db_for_write(JobRunHour)
            found = Figures(buckets={}, jobs={})
            _missing, windows = _add_closed(found, start, end, using=db)
            if start not in windows:
                # Deleted by a process rolling up a later window (its "now" an hour on)
                # since this one made it, or never made: that process deleted the window
                # this one was to move on from. The sums of its hours instead.
                found = Figures(buckets={}, jobs={})
                _add_closed(found, start, end, using=db, from_hours=True)
        cache.set(key, found, timeout=int((HOUR + GRACE).total_seconds()))
    return found


def _empty(since: datetime, now: datetime, size: timedelta) -> Figures:
    result = Figures(buckets={}, jobs={})
    moment = floor(since, size)
    while moment <= now:
        result.buckets[moment] = Counter()
        moment += size
    return result


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours = []
    while start < end:
        hours.append(start)
        start += HOUR
    return hours


def _span(start: datetime, end: datetime) -> int:
    """How many hours from ``start`` to ``end`` (whole hours)."""
    return int((end - start) / HOUR)


def _add_live(result: Figures, since: datetime, size: timedelta) -> None:
    """The runs finished since ``since``, read from the runs (one query).

    A UNION ALL of the totals per bar (few rows with a datetime) and the sums per job
    and duration bucket (no datetime: Django's psycopg loader parses each in Python).
    """
    runs = JobRun.objects.filter(finished_at__gte=since)
    per_bar = (
        runs.finished_buckets_query("minute" if size < HOUR else "hour", tzinfo=UTC)
        .annotate(
            name=Value("", output_field=models.CharField()),
            bucket=Value(UNTIMED, output_field=models.IntegerField()),
        )
        .values_list("start", "name", "bucket", *FINISHED)
    )
    per_job = (
        runs.finished_buckets_query(None, "job_name", "duration_bucket")
        .annotate(at=Value(None, output_field=models.DateTimeField()))
        .values_list("at", "job_name", "duration_bucket", *FINISHED)
    )
    jobs = []
    # Ordered by a column of the union: Django 6.1 would order it by JobRun's Meta.ordering,
    # which names no column of it.
    for at, job_name, bucket, *row in per_bar.union(per_job, all=True).order_by(
        "start"
    ):
        if at is None:
            jobs.append((job_name, bucket, row))
        else:
            result.add_bar(floor(at, size), row)
    _add_jobs(result, jobs)


def _add_jobs(result: Figures, rows: Iterable[tuple[str, int, list[int]]]) -> None:
    """Add rows of a job, a duration bucket and a count per FINISHED status to the figures.

    Grouped by job first, then summed column by column (the runs of the current hour).
    """
    by_job: dict[str, list[tuple[int, list[int]]]] = {}
    for job_name, bucket, row in rows:
        by_job.setdefault(job_name, []).append((bucket, row))
    for job_name, items in by_job.items():
        job = result.jobs.setdefault(job_name, JobFigures())
        columns = zip(*(row for _bucket, row in items), strict=True)
        job.counts.update(dict(zip(FINISHED, map(sum, columns), strict=True)))
        histogram = job.histogram
        for bucket, row in items:
            if bucket != UNTIMED:
                histogram[bucket] += sum(row)


class _ListField(models.Field):  # type: ignore[type-arg]
    """An aggregate's list: an array from PostgreSQL, JSON text from SQLite."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class _Listed(models.Aggregate):
    """A group's values as a list (ARRAY_AGG on PostgreSQL, JSON_GROUP_ARRAY on SQLite).

    Two of one group list its rows in the same order: each row passes through every
    aggregate of the query in turn.
    """

    function = "JSON_ARRAYAGG"
    output_field = _ListField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="ARRAY_AGG", **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="JSON_GROUP_ARRAY", **extra)


def _add_closed(
    result: Figures,
    start: datetime,
    end: datetime,
    using: str | None = None,
    *,
    from_hours: bool = False,
) -> tuple[list[datetime], set[datetime]]:
    """Add the roll-ups from ``start`` to ``end`` (one query); the hours not rolled up yet, and
    the starts of the windows of this length there (this one, the one an hour earlier).

    One query: each hour's marker (its totals, for the chart), the windows' markers, and
    the window's rows summed per job (a count per status, the duration histogram);
    ``from_hours``: its hours' rows summed per job and duration bucket instead.
    """
    hours = _span(start, end)
    table = JobRunHour.objects.using(using).order_by()
    none = {
        "buckets": Value(None, output_field=_ListField()),
        "runs": Value(None, output_field=_ListField()),
    }
    markers = (
        table.filter(
            Q(hours=1, hour__gte=start, hour__lt=end)
            | Q(hours=hours, hour__in=(start, start - HOUR)),
            job_name="",
        )
        .annotate(**none)
        .values_list("hour", "hours", "job_name", *FINISHED, "buckets", "runs")
    )
    # Summed per job apart from the markers: read in the unique index's order, they need
    # no sort (grouped with the markers, PostgreSQL sorted the week's rows first).
    everyone = F(FINISHED[0]) + F(FINISHED[1]) + F(FINISHED[2]) + F(FINISHED[3])
    own = (
        table.filter(hours=1, hour__gte=start, hour__lt=end)
        if from_hours
        else table.filter(hours=hours, hour=start)
    )
    jobs = (
        own.exclude(job_name="")
        .values("job_name", *(["duration_bucket"] if from_hours else []))
        .annotate(
            at=Value(None, output_field=models.DateTimeField()),
            span=Value(hours),
            **{f"n_{status}": Sum(status) for status in FINISHED},
            # The histogram: its buckets and their runs, as two lists (a week's 5,000
            # rows of a job and bucket were a third of a cold dashboard's time in Python).
            buckets=_Listed("duration_bucket"),
            runs=_Listed(everyone),
        )
        .values_list(
            "at",
            "span",
            "job_name",
            *(f"n_{status}" for status in FINISHED),
            "buckets",
            "runs",
        )
    )
    rows = markers.union(jobs, all=True)
    seen: set[datetime] = set()
    windows: set[datetime] = set()
    for at, span, job_name, *row, buckets, runs in rows:
        if job_name:
            job = result.jobs.setdefault(job_name, JobFigures())
            job.counts.update(dict(zip(FINISHED, row, strict=True)))
            if from_hours:  # a row per duration bucket, listed once per hour
                job.histogram[buckets[0]] += sum(row)
            else:
                job.histogram.update(dict(zip(buckets, runs, strict=True)))
            job.histogram.pop(UNTIMED, None)
        elif span == 1:
            seen.add(at)
            result.add_bar(at, row)
        else:
            windows.add(at)
    return [hour for hour in _hours(start, end) if hour not in seen], windows


COLUMNS = ("hour", "hours", "job_name", "duration_bucket", *FINISHED, "seconds")


def _fill(
    start: datetime, end: datetime, hours: list[datetime], *, derive: bool
) -> None:
    """Roll up the missing ``hours`` (closed, ascending), then the window from ``start`` to
    ``end`` (``derive``: from the window an hour earlier).

    FILL_AT_ONCE hours a transaction, the last of them in the window's, which also deletes
    the earlier window and the roll-ups older than KEEP: the usual fill (the hour that
    closed) is one transaction.
    """
    db = router.db_for_write(JobRunHour)
    with aggregating(db):
        while len(hours) > FILL_AT_ONCE:
            with transaction.atomic(using=db):
                _fill_hours(db, hours[:FILL_AT_ONCE])
            hours = hours[FILL_AT_ONCE:]
        with transaction.atomic(using=db):
            if hours:
                _fill_hours(db, hours)
            old = Q(hour__lt=end - KEEP)
            if _span(start, end) > 1:
                # A single hour is its own window (its rows are the window's): made as
                # one, its earlier "windows" deleted were every hour's rows before it.
                _fill_window(db, start, end, derive=derive)
                old |= Q(hours=_span(start, end), hour__lt=start)
            JobRunHour.objects.using(db).filter(old).delete()


def _insert(db: str, query: models.QuerySet[Any]) -> None:
    """Insert the rows of ``query`` (a ``values_list`` in ``COLUMNS``' order), skipping those there.

    ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite; elsewhere the rows
    pass through Python): two requests filling the same rows insert them once.
    """
    connection = connections[db]
    # SQLite stores datetimes as text in the connection's time zone: an hour made by SQL
    # in UTC would be stored as UTC text and read as local time (DATABASES' TIME_ZONE).
    if connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and connection.timezone_name == "UTC"
    ):
        quote = connection.ops.quote_name
        sql, params = query.query.get_compiler(using=db).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quote(JobRunHour._meta.db_table)} "
                f"({', '.join(map(quote, COLUMNS))}) {sql} ON CONFLICT DO NOTHING",
                params,
            )
    else:
        JobRunHour.objects.using(db).bulk_create(
            [JobRunHour(**dict(zip(COLUMNS, row, strict=True))) for row in query],
            ignore_conflicts=True,
        )


def _fill_hours(db: str, hours: list[datetime]) -> None:
    """Roll up the runs that finished in ``hours``, then mark each hour done.

    A marker (an empty ``job_name``) holds its hour's totals, for the chart; an hour
    without runs gets one too.
    """
    first, end = min(hours), max(hours) + HOUR
    runs = JobRun.objects.using(db).filter(finished_at__gte=first, finished_at__lt=end)
    _insert(
        db,
        runs.finished_buckets_query(
            "hour", "job_name", "duration_bucket", durations=True, tzinfo=UTC
        )
        .annotate(span=Value(1))
        .values_list(
            "start", "span", "job_name", "duration_bucket", *FINISHED, "seconds"
        )
        # Grouped and inserted in the unique index's order, each row after the last:
        # a week's first roll-up (169,000 rows) inserted in a quarter less time.
        .order_by("start", "job_name", "duration_bucket"),
    )
    sums = {status: Sum(status) for status in FINISHED}
    _insert(
        db,
        JobRunHour.objects.using(db)
        .filter(hours=1, hour__gte=first, hour__lt=end)
        .exclude(job_name="")
        .values("hour")
        .annotate(
            span=Value(1),
            name=Value(""),
            bucket=Value(UNTIMED),
            total=Sum("seconds"),
            **sums,
        )
        .values_list("hour", "span", "name", "bucket", *FINISHED, "total"),
    )
    JobRunHour.objects.using(db).bulk_create(
        [JobRunHour(hour=hour, job_name="", duration_bucket=UNTIMED) for hour in hours],
        ignore_conflicts=True,
    )


def _fill_window(db: str, start: datetime, end: datetime, *, derive: bool) -> None:
    """Roll the hours from ``start`` to ``end`` (all rolled up) into the window's own rows.

    From the window an hour earlier when it is there (its rows, plus the hour that
    closed, minus the hour that left: some 7,000 rows for a week), else from the hours'
    rows (170,000 for a week of a busy site).
    """
    hours = _span(start, end)
    sign: Case | Value
    table = JobRunHour.objects.using(db)
    if derive:
        left = Q(hours=1, hour=start - HOUR)
        rows = table.filter(
            Q(hours=hours, hour=start - HOUR) | left | Q(hours=1, hour=end - HOUR)
        ).filter(
            # Read in the statement's own snapshot: a process that made this window
            # meanwhile deleted the earlier one, and the hour that left, subtracted
            # from nothing, would be a negative count. Then this one inserts nothing.
            Exists(table.filter(hours=hours, hour=start - HOUR, job_name=""))
        )
        sign = Case(When(left, then=Value(-1)), default=Value(1))
    else:
        rows = table.filter(hours=1, hour__gte=start, hour__lt=end)
        sign = Value(1)
    sums: dict[str, Any] = {
        status: Sum(F(status) * sign, output_field=models.IntegerField())
        for status in FINISHED
    }
    everyone = Sum(
        (F(FINISHED[0]) + F(FINISHED[1]) + F(FINISHED[2]) + F(FINISHED[3])) * sign,
        output_field=models.IntegerField(),
    )
    _insert(
        db,
        rows.values("job_name", "duration_bucket")
        .annotate(at=Value(start), span=Value(hours), n=everyone, **sums)
        .annotate(total=Sum(F("seconds") * sign, output_field=models.FloatField()))
        # A job and bucket that left with the hour (the marker always stays).
        .filter(Q(n__gt=0) | Q(job_name=""))
        .values_list("at", "span", "job_name", "duration_bucket", *FINISHED, "total"),
    )


def by_job(result: Figures) -> dict[str, JobFigures]:
    """The window's jobs, busiest first."""
    return dict(sorted(result.jobs.items(), key=lambda item: (-item[1].total, item[0])))
