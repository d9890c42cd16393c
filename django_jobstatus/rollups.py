"""The dashboard's figures of finished runs: hourly roll-ups for closed hours, the rest live.

A run finishes at "now", so once an hour is over (plus GRACE for a transaction that
commits late) the runs that finished in it never change: its counts per job, status and
duration bucket are computed once, on the first request that needs them, and kept in
``JobRunHour`` (an ``INSERT … SELECT``, nothing added to a task's own writes). A window's
figures are then a sum over at most 168 hours of roll-ups plus the runs that finished
since the last closed hour: two queries, whatever the number of runs.

What is approximate: the 24 h and 7 d windows start on a whole hour (up to an hour
more than the window), and p50/p95 come from a log-scale histogram (within about 4.4 %,
see ``querysets.DURATION_STEPS``). Runs deleted after their hour was rolled up stay
counted.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connections, models, router, transaction
from django.db.models import Sum, Value

from django_jobstatus.models import JobRun, JobRunHour, Status
from django_jobstatus.querysets import UNTIMED, aggregating, bucket_seconds

HOUR = timedelta(hours=1)
# How long after an hour ends its runs are taken as final (a finish committed late).
GRACE = timedelta(minutes=5)
# Roll-ups older than this are deleted when an hour is filled (the dashboard reads 7 days).
KEEP = timedelta(days=8)
# The terminal statuses, in the roll-up's column order.
FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST)


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
        timed = sum(self.histogram.values())
        if not timed:
            return None
        rank = fraction * timed
        seen = 0
        for bucket in sorted(self.histogram):
            seen += self.histogram[bucket]
            if seen >= rank:
                return bucket_seconds(bucket)
        return bucket_seconds(max(self.histogram))


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

    def add(
        self, start: datetime, job_name: str, bucket: int, row: dict[str, Any]
    ) -> None:
        self.buckets.setdefault(start, Counter()).update(
            {status: row[status] for status in FINISHED}
        )
        job = self.jobs.setdefault(job_name, JobFigures())
        job.counts.update({status: row[status] for status in FINISHED})
        if bucket != UNTIMED:
            job.histogram[bucket] += sum(row[status] for status in FINISHED)


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
        missing = _add_closed(found, start, end)
        if missing:
            _fill(missing)
            found = Figures(buckets={}, jobs={})
            _add_closed(found, start, end)
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


def _add_live(result: Figures, since: datetime, size: timedelta) -> None:
    """The runs finished since ``since``, read from the runs (one query)."""
    rows = JobRun.objects.filter(finished_at__gte=since).finished_buckets_query(
        "minute" if size < HOUR else "hour", "job_name", "duration_bucket", tzinfo=UTC
    )
    for row in rows:
        result.add(
            floor(row["start"], size), row["job_name"], row["duration_bucket"], row
        )


def _add_closed(result: Figures, start: datetime, end: datetime) -> list[datetime]:
    """Add the roll-ups of the hours from ``start`` to ``end`` (one query); the hours not rolled up yet.

    One UNION ALL of two sums: per hour (the chart; each rolled-up hour has its marker
    row, so an hour absent here is not rolled up yet) and per job and duration bucket.
    """
    sums: dict[str, Any] = {status: Sum(status) for status in FINISHED}
    hours = JobRunHour.objects.filter(hour__gte=start, hour__lt=end).order_by()
    per_hour = (
        hours.values("hour")
        .annotate(
            name=Value("", output_field=models.CharField()),
            bucket=Value(UNTIMED, output_field=models.IntegerField()),
            **sums,
        )
        .values_list("hour", "name", "bucket", *FINISHED)
    )
    per_job = (
        hours.exclude(job_name="")
        .values("job_name", "duration_bucket")
        .annotate(
            at=Value(None, output_field=models.DateTimeField()),
            **sums,
        )
        .values_list("at", "job_name", "duration_bucket", *FINISHED)
    )
    seen = set()
    for at, job_name, bucket, *counts in per_hour.union(per_job, all=True):
        row = dict(zip(FINISHED, counts, strict=True))
        if at is not None:
            seen.add(at)
            result.buckets.setdefault(at, Counter()).update(row)
        else:
            job = result.jobs.setdefault(job_name, JobFigures())
            job.counts.update(row)
            if bucket != UNTIMED:
                job.histogram[bucket] += sum(counts)
    return [hour for hour in _hours(start, end) if hour not in seen]


def _fill(hours: list[datetime]) -> None:
    """Roll up the runs that finished in ``hours`` (closed), then mark each hour done.

    One ``INSERT … SELECT … ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite (elsewhere
    the rows pass through Python): two requests filling the same hour insert it once.
    """
    db = router.db_for_write(JobRunHour)
    first, end = min(hours), max(hours) + HOUR
    runs = JobRun.objects.using(db).filter(finished_at__gte=first, finished_at__lt=end)
    query = runs.finished_buckets_query(
        "hour", "job_name", "duration_bucket", durations=True, tzinfo=UTC
    ).values_list("start", "job_name", "duration_bucket", *FINISHED, "seconds")
    table = JobRunHour._meta.db_table
    columns = ("hour", "job_name", "duration_bucket", *FINISHED, "seconds")
    connection = connections[db]
    quote = connection.ops.quote_name
    with transaction.atomic(using=db), aggregating(db):
        if connection.vendor in ("postgresql", "sqlite"):
            sql, params = query.query.get_compiler(using=db).as_sql()
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) "
                    f"{sql} ON CONFLICT DO NOTHING",
                    params,
                )
        else:
            JobRunHour.objects.using(db).bulk_create(
                [JobRunHour(**dict(zip(columns, row, strict=True))) for row in query],
                ignore_conflicts=True,
            )
        JobRunHour.objects.using(db).bulk_create(
            [
                JobRunHour(hour=hour, job_name="", duration_bucket=UNTIMED)
                for hour in hours
            ],
            ignore_conflicts=True,
        )
        JobRunHour.objects.using(db).filter(hour__lt=end - KEEP).delete()
        if connection.vendor == "postgresql":
            # Fresh statistics, or the planner takes the new rows for a few dozen and
            # sorts them on disk instead of hashing them (a week: 40,000 rows).
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {quote(table)}")


def by_job(result: Figures) -> dict[str, JobFigures]:
    """The window's jobs, busiest first."""
    return dict(sorted(result.jobs.items(), key=lambda item: (-item[1].total, item[0])))
