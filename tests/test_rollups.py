"""The dashboard's hourly roll-ups: the same figures as the runs, closed hours read once, p50/p95 within 5 %."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus import rollups
from django_jobstatus.models import JobRun, JobRunHour, Status
from django_jobstatus.querysets import UNTIMED, bucket_seconds, percentile

DASHBOARD = "/admin/django_jobstatus/jobrun/dashboard/"

STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST)


@pytest.fixture
def week(make_run):
    """Runs finished over the last 7 days (and one 8 days ago): every terminal status, some untimed."""
    now = timezone.now()
    for i in range(150):
        finished = now - timedelta(minutes=67 * i + 3)
        status = STATUSES[i % 4]
        make_run(
            f"job.{i % 5}",
            status=status,
            created_at=finished - timedelta(seconds=i + 1),
            started_at=None if i % 7 == 0 else finished - timedelta(seconds=i + 1),
            finished_at=finished,
        )
    make_run("job.active")  # running: not a finished run
    return now


def exact(since, now) -> Counter:
    rows = JobRun.objects.finished().filter(
        finished_at__gte=since, finished_at__lte=now
    )
    return Counter(rows.values_list("status", flat=True))


@pytest.mark.parametrize("days", [1, 7])
def test_figures_match_the_runs_and_stay_so_once_rolled_up(
    week, days, django_assert_max_num_queries
):
    since = week - timedelta(days=days)
    first = rollups.figures(since, week, rollups.HOUR)
    start = rollups.floor(since, rollups.HOUR)
    assert first.counts() == exact(start, week)
    chart = Counter()
    for values in first.buckets.values():
        chart.update(values)
    assert +chart == exact(start, week)
    assert len(first.buckets) == days * 24 + 1
    # Every closed hour of the window is marked rolled up, the current one is not.
    closed = rollups.floor(week - rollups.GRACE, rollups.HOUR)
    marked = set(JobRunHour.objects.filter(job_name="").values_list("hour", flat=True))
    assert marked == set(rollups._hours(start, closed))
    # Then two queries: the roll-ups and the runs since the last closed hour.
    cache.clear()
    with django_assert_max_num_queries(2):
        again = rollups.figures(since, week, rollups.HOUR)
    assert again.counts() == first.counts()
    assert again.buckets == first.buckets
    assert {name: job.histogram for name, job in again.jobs.items()} == {
        name: job.histogram for name, job in first.jobs.items()
    }


def by_job(found) -> dict:
    return {name: (+job.counts, job.histogram) for name, job in found.jobs.items()}


def exact_by_job(since, now) -> Counter:
    runs = JobRun.objects.finished().filter(
        finished_at__gte=since, finished_at__lte=now
    )
    return Counter(runs.values_list("job_name", "status"))


def test_a_week_is_read_from_its_own_roll_up_and_moves_on_by_an_hour(week):
    """The window's sums per job are rows of their own (no sums over 168 hours' rows to read),
    derived from the window an hour earlier once the next hour closes."""
    start = rollups.floor(week - timedelta(days=7), rollups.HOUR)
    end = rollups.floor(week - rollups.GRACE, rollups.HOUR)
    span = rollups._span(start, end)
    first = rollups.figures(week - timedelta(days=7), week, rollups.HOUR)
    assert Counter(
        {
            (name, status): count
            for name, job in first.jobs.items()
            for status, count in job.counts.items()
            if count
        }
    ) == exact_by_job(start, week)
    assert JobRunHour.objects.filter(hours=span, hour=start, job_name="").exists()

    # A mark on the earlier window (a thousand runs more of job.0) shows the next one is
    # derived from it: its rows, plus the hour that closed, minus the hour that left.
    JobRunHour.objects.filter(
        hours=span, hour=start, job_name="job.0", duration_bucket=UNTIMED
    ).update(succeeded=F("succeeded") + 1000)
    later = week + rollups.HOUR
    cache.clear()
    moved = rollups.figures(later - timedelta(days=7), later, rollups.HOUR)
    assert sorted(
        JobRunHour.objects.filter(hours=span, job_name="").values_list(
            "hour", flat=True
        )
    ) == [start + rollups.HOUR]
    JobRunHour.objects.filter(hours=span).delete()
    cache.clear()
    from_hours = rollups.figures(later - timedelta(days=7), later, rollups.HOUR)
    assert moved.jobs["job.0"].counts[Status.SUCCEEDED] == (
        from_hours.jobs["job.0"].counts[Status.SUCCEEDED] + 1000
    )
    moved.jobs["job.0"].counts[Status.SUCCEEDED] -= 1000
    assert by_job(moved) == by_job(from_hours)
    assert moved.buckets == from_hours.buckets

    # The hours' own rows are not read again: the window's rows and each hour's marker
    # (with its totals) give the same figures.
    JobRunHour.objects.filter(hours=1).exclude(job_name="").delete()
    cache.clear()
    again = rollups.figures(later - timedelta(days=7), later, rollups.HOUR)
    assert by_job(again) == by_job(from_hours)
    assert again.buckets == from_hours.buckets


def test_a_window_reaches_python_as_a_row_per_job_and_its_histogram_is_the_runs(week):
    """A closed window is read as a row per job (its counts, its histogram as lists) and a
    row per hour: its rows of a job and duration bucket are summed by the database."""
    since = week - timedelta(days=7)
    start = rollups.floor(since, rollups.HOUR)
    end = rollups.floor(week - rollups.GRACE, rollups.HOUR)
    rolled = rollups.figures(since, week, rollups.HOUR)
    found = rollups.Figures(buckets={}, jobs={})
    with CaptureQueriesContext(connection) as queries:
        rollups._add_closed(found, start, end)
    (query,) = queries.captured_queries
    with connection.cursor() as cursor:
        cursor.execute(query["sql"])
        rows = cursor.fetchall()
    # Each hour's marker, the window's marker and its five jobs; the jobs hold 130
    # timed runs of some 60 durations, each a row of its own before.
    assert len(rows) == rollups._span(start, end) + 1 + 5

    live = rollups.Figures(buckets={}, jobs={})
    rollups._add_live(live, start, rollups.HOUR)
    assert {name: job.histogram for name, job in rolled.jobs.items()} == {
        name: job.histogram for name, job in live.jobs.items()
    }
    assert by_job(rolled) == by_job(live)


def test_a_refresh_reads_only_the_current_hour_and_a_closing_hour_is_seen(
    week, make_run, django_assert_num_queries
):
    since = week - timedelta(days=1)
    first = rollups.figures(since, week, rollups.HOUR)
    # The closed hours' sums are cached: a refresh reads the runs of the current hour only.
    with django_assert_num_queries(1):
        again = rollups.figures(since, week, rollups.HOUR)
    assert again.counts() == first.counts() and again.buckets == first.buckets
    # A run finishing now is counted live, then in its rolled-up hour once that closes.
    make_run("tests.late", status=Status.FAILED, finished_at=week, started_at=week)
    assert rollups.figures(since, week, rollups.HOUR).counts()[Status.FAILED] == (
        first.counts()[Status.FAILED] + 1
    )
    later = week + rollups.HOUR + rollups.GRACE
    closed = rollups.figures(later - timedelta(days=1), later, rollups.HOUR)
    assert closed.jobs["tests.late"].counts[Status.FAILED] == 1
    assert JobRunHour.objects.filter(job_name="tests.late").exists()


def test_closed_hours_are_read_from_the_roll_ups(week):
    since = week - timedelta(days=7)
    before = rollups.figures(since, week, rollups.HOUR)
    closed = rollups.floor(week - rollups.GRACE, rollups.HOUR)
    later = week + rollups.HOUR
    moved = exact(rollups.floor(later - timedelta(days=7), rollups.HOUR), later)
    JobRun.objects.filter(finished_at__lt=closed).delete()
    # What finished in a closed hour stays counted (and no query reads those runs again):
    # read from the roll-ups, not the cache,
    cache.clear()
    assert rollups.figures(since, week, rollups.HOUR).counts() == before.counts()
    # in the window moved on by an hour (the hour that left is subtracted from its rows),
    assert rollups.figures(later - timedelta(days=7), later, rollups.HOUR).counts() == (
        moved
    )
    # and in a window made afresh from its hours.
    JobRunHour.objects.exclude(hours=1).delete()
    cache.clear()
    assert rollups.figures(later - timedelta(days=7), later, rollups.HOUR).counts() == (
        moved
    )


def test_two_fills_of_one_hour_count_it_once(week):
    hours = rollups._hours(
        rollups.floor(week - timedelta(days=2), rollups.HOUR),
        rollups.floor(week - rollups.GRACE, rollups.HOUR),
    )
    start, end = hours[0], hours[-1] + rollups.HOUR
    rollups._fill(start, end, hours, derive=False)
    rows = sorted(
        JobRunHour.objects.values_list("hour", "job_name", "duration_bucket", *STATUSES)
    )
    rollups._fill(
        start, end, hours, derive=False
    )  # a second request filling the same hours at once
    assert (
        sorted(
            JobRunHour.objects.values_list(
                "hour", "job_name", "duration_bucket", *STATUSES
            )
        )
        == rows
    )
    assert JobRunHour.objects.filter(hours=1, job_name="").count() == len(hours)


class _Killed(Exception):  # noqa: N818 - what happened, not an error to handle
    """Stands for a worker killed mid-request (a timeout)."""


def test_a_roll_up_cut_short_keeps_the_hours_it_finished(week, monkeypatch):
    """The missing hours are rolled up FILL_AT_ONCE a transaction: a request that dies
    midway keeps the hours it finished, and the next one rolls up only the others. In one
    transaction, a week at ten million runs took 9.9 s: a request killed at its worker's
    timeout lost it all, and so did every request after it."""
    since = week - timedelta(days=7)
    start = rollups.floor(since, rollups.HOUR)
    end = rollups.floor(week - rollups.GRACE, rollups.HOUR)
    monkeypatch.setattr(rollups, "FILL_AT_ONCE", 24)
    fill_hours, filled = rollups._fill_hours, []

    def killed_in_the_third(db, hours):
        filled.append(hours)
        fill_hours(db, hours)
        if len(filled) == 3:
            raise _Killed

    monkeypatch.setattr(rollups, "_fill_hours", killed_in_the_third)
    with pytest.raises(_Killed):
        rollups.figures(since, week, rollups.HOUR)
    done = set(
        JobRunHour.objects.filter(hours=1, job_name="").values_list("hour", flat=True)
    )
    assert [len(hours) for hours in filled] == [24, 24, 24]
    assert done == set(filled[0] + filled[1])
    assert not JobRunHour.objects.filter(hours__gt=1).exists()

    filled.clear()
    monkeypatch.setattr(
        rollups,
        "_fill_hours",
        lambda db, hours: filled.append(hours) or fill_hours(db, hours),
    )
    found = rollups.figures(since, week, rollups.HOUR)
    assert filled[0][0] == start + 48 * rollups.HOUR
    assert sum(len(hours) for hours in filled) == rollups._span(start, end) - 48
    assert found.counts() == exact(start, week)
    cache.clear()
    assert rollups.figures(since, week, rollups.HOUR).counts() == exact(start, week)


def test_untimed_runs_are_counted_but_have_no_duration(make_run):
    now = timezone.now()
    make_run("lost.job", status=Status.LOST, started_at=None, finished_at=now)
    found = rollups.figures(now - timedelta(hours=1), now, timedelta(minutes=5))
    job = found.jobs["lost.job"]
    assert job.counts[Status.LOST] == 1
    assert job.histogram == Counter()
    assert job.percentile(0.5) is None
    assert UNTIMED not in job.histogram


def test_percentiles_of_one_pass_are_each_percentile():
    """percentiles() walks the histogram once for all its fractions: the same as one by one."""
    job = rollups.JobFigures(
        histogram=Counter({-3: 2, 0: 0, 4: 5, 9: 1, 30: 12, 31: 0})
    )

    # Every duration at its bucket's value, interpolated as stats() does (percentile_cont).
    values = sorted(bucket_seconds(b) for b in job.histogram.elements())

    def alone(fraction: float) -> float | None:
        return percentile(values, fraction)

    fractions = (0.0, 0.05, 0.1, 0.35, 0.4, 0.5, 0.95, 1.0)
    assert job.percentiles(*fractions) == pytest.approx([alone(f) for f in fractions])
    assert job.percentile(0.5) == pytest.approx(alone(0.5))
    assert rollups.JobFigures().percentiles(0.5, 0.95) == [None, None]


def test_percentiles_are_within_five_percent(make_run):
    now = timezone.now()
    durations = [1.7**i / 10 for i in range(25)] * 3 + [42.0] * 20
    for seconds in durations:
        make_run(
            "timed.job",
            status=Status.SUCCEEDED,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    job = rollups.figures(now - timedelta(hours=1), now, timedelta(minutes=5)).jobs[
        "timed.job"
    ]
    ordered = sorted(durations)
    for fraction in (0.5, 0.95):
        wanted = percentile(ordered, fraction)
        assert wanted is not None
        found = job.percentile(fraction)
        assert found is not None
        assert abs(found - wanted) / wanted < 0.05, (fraction, found, wanted)


@pytest.mark.django_db(transaction=True)
def test_the_window_migration_reverses_with_roll_ups_in_the_table(week):
    """A week's roll-ups (the hours' rows and the window's, which share hour, job and
    bucket) are forgotten before the old unique constraint comes back, not after."""
    from django.core.management import call_command

    rollups.figures(week - timedelta(days=7), week, rollups.HOUR)
    assert JobRunHour.objects.exclude(hours=1).exists()
    call_command("migrate", "django_jobstatus", "0010", verbosity=0)
    try:
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(JobRunHour._meta.db_table)
            cursor.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 (a quoted name)
            assert cursor.fetchone()[0] == 0
    finally:
        call_command("migrate", "django_jobstatus", verbosity=0)
    cache.clear()
    assert rollups.figures(week - timedelta(days=1), week, rollups.HOUR).counts() == (
        exact(rollups.floor(week - timedelta(days=1), rollups.HOUR), week)
    )


def _runs_every_37_minutes(make_run):
    """300 runs finished every 37 minutes back from now (a week), every terminal status; now."""
    now = timezone.now()
    for i in range(300):
        finished = now - timedelta(minutes=37 * i + 3)
        make_run(
            f"job.{i % 5}",
            status=STATUSES[i % 4],
            created_at=finished - timedelta(seconds=i + 1),
            started_at=finished - timedelta(seconds=i + 1),
            finished_at=finished,
        )
    return now


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("days", [1, 7])
def test_processes_rolling_up_the_same_window_at_once_agree(make_run, days):
    """The dashboard's requests and reap_jobstatus roll up the hour that closed at once: each
    derives the window from the one an hour earlier, which the first to commit deletes.
    The others read it gone (PostgreSQL: a statement's snapshot) and subtracted the hour
    that left from nothing: a negative count, refused by the table (IntegrityError)."""
    now = _runs_every_37_minutes(make_run)
    since = now - timedelta(days=days)
    rollups.figures(since - rollups.HOUR, now - rollups.HOUR, rollups.HOUR)
    barrier = threading.Barrier(4)
    found: list[Counter] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait(timeout=30)
            found.append(rollups.figures(since, now, rollups.HOUR).counts())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    with mock.patch.object(cache, "get", return_value=None):  # none reads another's
        threads = [threading.Thread(target=request) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    expected = exact(rollups.floor(since, rollups.HOUR), now)
    assert found == [expected] * 4
    cache.clear()
    assert rollups.figures(since, now, rollups.HOUR).counts() == expected


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("paused_at", ["read_back", "move_on"])
def test_a_process_rolling_up_a_later_window_meanwhile_leaves_the_figures_whole(
    make_run, paused_at
):
    """A request rolls up its window while a process whose "now" is an hour on (a later
    request, reap_jobstatus) rolls up the next one, which deletes the earlier windows:
    the window the first had just made ("read_back": before it read it back), or the one
    it was to move on from ("move_on": before it did). The first read no window back and
    counted none of its closed hours' runs."""
    now = _runs_every_37_minutes(make_run)
    since = now - timedelta(days=1)
    end = rollups.floor(now - rollups.GRACE, rollups.HOUR)
    # The window an hour earlier, and every hour of this one: this request makes only
    # its window (the later one would wait on an hour it is rolling up).
    rollups.figures(since - rollups.HOUR, now - rollups.HOUR, rollups.HOUR)
    with transaction.atomic():
        rollups._fill_hours("default", [end - rollups.HOUR])
    add_closed, fill_window = rollups._add_closed, rollups._fill_window
    paused, go = threading.Event(), threading.Event()
    derived: list[bool] = []
    stops: list[str] = []

    def pause(here: str) -> None:
        if here == paused_at and threading.current_thread() is first:
            stops.append(here)
            paused.set()
            assert go.wait(timeout=30)

    def read_back(result, start, end, using=None, **kwargs):
        if using is not None and not kwargs:
            pause("read_back")
        return add_closed(result, start, end, using=using, **kwargs)

    def move_on(db, start, end, *, derive):
        if threading.current_thread() is first:
            derived.append(derive)
        pause("move_on")
        return fill_window(db, start, end, derive=derive)

    found: list[rollups.Figures] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            found.append(rollups.figures(since, now, rollups.HOUR))
        except BaseException as exc:
            errors.append(exc)
        finally:
            paused.set()
            connections.close_all()

    first = threading.Thread(target=request)
    with (
        mock.patch.object(rollups, "_add_closed", read_back),
        mock.patch.object(rollups, "_fill_window", move_on),
    ):
        first.start()
        try:
            assert paused.wait(timeout=30)
            later = rollups.figures(
                since + rollups.HOUR, now + rollups.HOUR, rollups.HOUR
            )
        finally:
            go.set()
            first.join(timeout=30)
    assert not first.is_alive()
    assert errors == []
    assert stops == [paused_at]
    assert derived == [True]
    assert [figures.counts() for figures in found] == [
        exact(rollups.floor(since, rollups.HOUR), now)
    ]
    assert later.counts() == exact(
        rollups.floor(since + rollups.HOUR, rollups.HOUR), now + rollups.HOUR
    )
    # Each job's counts and durations too: those of the window made afresh.
    cache.clear()
    again = rollups.figures(since, now, rollups.HOUR)
    assert by_job(found[0]) == by_job(again)
    assert found[0].buckets == again.buckets


@pytest.mark.parametrize("days", [1, 7])
def test_a_window_deleted_before_it_is_read_back_is_read_from_its_hours(
    week, days, monkeypatch
):
    """What a process rolling up a later window may do meanwhile (see the test above): the
    window is gone when the request that made it reads it back, which then sums its hours."""
    since = week - timedelta(days=days)
    made = rollups.figures(since, week, rollups.HOUR)
    JobRunHour.objects.exclude(hours=1).delete()
    cache.clear()
    fill = rollups._fill

    def and_deleted(start, end, hours, *, derive):
        fill(start, end, hours, derive=derive)
        JobRunHour.objects.exclude(hours=1).delete()

    monkeypatch.setattr(rollups, "_fill", and_deleted)
    found = rollups.figures(since, week, rollups.HOUR)
    assert not JobRunHour.objects.exclude(hours=1).exists()
    assert found.counts() == made.counts()
    assert by_job(found) == by_job(made)
    assert found.buckets == made.buckets


@pytest.mark.parametrize("minutes", [30, 90, 150])
def test_a_range_of_an_hour_or_less_keeps_the_hours_rows(week, minutes):
    """A range whose closed hours are one hour or none has no window of its own: the hour's
    rows are it. Made as a window, its fill deleted every hour's rows before it."""
    rollups.figures(week - timedelta(days=7), week, rollups.HOUR)
    hours = JobRunHour.objects.filter(hours=1).count()
    since = week - timedelta(minutes=minutes)
    found = rollups.figures(since, week, rollups.HOUR)
    assert JobRunHour.objects.filter(hours=1).count() == hours
    assert found.counts() == exact(rollups.floor(since, rollups.HOUR), week)


@pytest.mark.engine_agnostic  # SQLite: PostgreSQL refuses DATABASES' TIME_ZONE
def test_the_closed_hours_count_every_run_on_a_database_that_stores_local_time(
    database_stores_local_time, make_run, admin_client
):
    """One run finished in each of the last 30 hours, 25 in the 24-hour window: the tabs,
    the chart and the jobs table said 16, and 9 closed hours showed empty. The hours were
    rolled up by an ``INSERT … SELECT`` writing the UTC hour as text, which the ORM then
    read (and filtered) as local time: each hour's rows landed 9 hours away."""
    now = timezone.now()
    for i in range(30):
        finished = now - timedelta(hours=i, minutes=10)
        make_run(
            f"job.{i % 3}",
            status=Status.FAILED if i % 2 else Status.SUCCEEDED,
            created_at=finished - timedelta(seconds=3),
            started_at=finished - timedelta(seconds=3),
            finished_at=finished,
        )
    since = rollups.floor(now - timedelta(hours=24), rollups.HOUR)
    runs = JobRun.objects.finished().filter(finished_at__gte=since)
    expected = Counter(runs.values_list("status", flat=True))
    context = admin_client.get(DASHBOARD, {"window": "24h"}).context
    assert {status: context["counts"][status] for status in expected} == expected
    assert context["chart"]["totals"]["succeeded"] == expected[Status.SUCCEEDED]
    assert sum(job["total"] for job in context["jobs"]) == runs.count()


def test_the_dashboard_s_p95_is_the_one_of_stats_within_its_histogram_s_error(
    make_run,
):
    """19 runs of 1 s and one of 100 s: ``stats()`` (the API, the metrics) gives a p95 of
    5.95 s; the dashboard, which took the lower nearest rank, showed 1.0 s, although its
    note says its p50 and p95 are within about 5 %."""
    now = timezone.now()
    for seconds in [1.0] * 19 + [100.0]:
        make_run(
            "reports.build",
            status=Status.SUCCEEDED,
            created_at=now - timedelta(seconds=seconds),
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    [exact] = JobRun.objects.stats()
    assert exact["p95_duration"] == pytest.approx(5.95)
    job = rollups.figures(now - timedelta(hours=24), now, rollups.HOUR).jobs[
        "reports.build"
    ]
    p50, p95 = job.percentiles(0.5, 0.95)
    assert p95 == pytest.approx(exact["p95_duration"], rel=0.05)
    assert p50 == pytest.approx(exact["p50_duration"], rel=0.05)
