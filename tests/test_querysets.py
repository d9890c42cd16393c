"""JobRunQuerySet / JobLogQuerySet: scopes, creation, bulk kill requests and stats()."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.querysets import percentile

pytestmark = pytest.mark.django_db

SCOPES = {
    "queued": {Status.QUEUED},
    "running": {Status.RUNNING},
    "retrying": {Status.RETRYING},
    "active": set(Status.ACTIVE),
    "finished": set(Status.TERMINAL),
    "succeeded": {Status.SUCCEEDED},
    "failed": {Status.FAILED},
    "killed": {Status.KILLED},
    "lost": {Status.LOST},
}


@pytest.fixture
def one_of_each(make_run) -> dict[str, JobRun]:
    return {
        status: make_run(f"job.{status}", status=status) for status in Status.values
    }


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_state_scopes(one_of_each, scope: str) -> None:
    runs = getattr(JobRun.objects, scope)()
    assert {run.status for run in runs} == SCOPES[scope]
    assert runs.count() == len(SCOPES[scope])
    # Chainable, both ways round and on a queryset.
    assert set(
        getattr(JobRun.objects.all(), scope)().for_job(f"job.{Status.RUNNING}")
    ) == ({one_of_each[Status.RUNNING]} if Status.RUNNING in SCOPES[scope] else set())
    assert set(getattr(JobRun.objects.for_job(f"job.{Status.LOST}"), scope)()) == (
        {one_of_each[Status.LOST]} if Status.LOST in SCOPES[scope] else set()
    )


def test_scopes_chain_into_each_other(make_run) -> None:
    target = make_run("a", status=Status.FAILED, has_errors=True)
    make_run("a", status=Status.FAILED)
    make_run("b", status=Status.FAILED, has_errors=True)
    make_run("a", status=Status.RUNNING, has_errors=True)
    assert list(JobRun.objects.finished().failed().with_errors().for_job("a")) == [
        target
    ]
    assert list(JobRun.objects.for_job("a").with_errors().finished()) == [target]


def test_with_errors_and_for_job(make_run) -> None:
    bad = make_run("a", has_errors=True)
    make_run("a")
    other = make_run("b")
    assert list(JobRun.objects.with_errors()) == [bad]
    assert set(JobRun.objects.for_job("b")) == {other}
    assert not JobRun.objects.for_job("c").exists()


def test_latest_for(make_run) -> None:
    now = timezone.now()
    make_run("a", created_at=now - timedelta(days=2))
    newest = make_run("a", created_at=now - timedelta(days=1))
    make_run("b", created_at=now)
    assert JobRun.objects.latest_for("a") == newest
    assert JobRun.objects.latest_for("missing") is None
    assert JobRun.objects.failed().latest_for("a") is None


def test_latest_for_breaks_ties_by_id(make_run) -> None:
    now = timezone.now()
    first = make_run("a", created_at=now)
    second = make_run("a", created_at=now)
    assert second.pk > first.pk
    assert JobRun.objects.latest_for("a") == second


def test_latest_for_each_in_one_query(make_run, django_assert_num_queries) -> None:
    now = timezone.now()
    make_run("a", created_at=now - timedelta(days=2))
    a = make_run("a", created_at=now - timedelta(days=1))
    tied = make_run("b", created_at=now)
    b = make_run("b", created_at=now)
    with django_assert_num_queries(1):
        latest = JobRun.objects.latest_for_each(["a", "b", "missing", "a"])
    assert latest == {"a": a, "b": max(tied, b, key=lambda run: run.pk)}
    assert JobRun.objects.failed().latest_for_each(["a"]) == {}
    assert JobRun.objects.latest_for_each([]) == {}


def test_latest_for_each_plans_one_probe_whatever_the_number_of_names(
    make_run,
) -> None:
    """The dashboard asks for fifty jobs: fifty probes OR-ed took longer to plan than to run."""
    now = timezone.now()
    older = make_run("a", status=Status.SUCCEEDED, created_at=now - timedelta(hours=1))
    make_run("a", status=Status.FAILED, created_at=now)
    names = [f"job.{n}" for n in range(50)]
    for name in names[:3]:
        make_run(name)
    statements = []

    def record(execute, sql, *args):
        statements.append(sql)
        return execute(sql, *args)

    with connection.execute_wrapper(record):
        few = JobRun.objects.latest_for_each(names[:2])
        many = JobRun.objects.latest_for_each(names)
        # The queryset's own filters hold inside the probe.
        succeeded = JobRun.objects.succeeded().latest_for_each(["a", "%s", "x'y"])
    assert len(statements[0]) == len(statements[1])
    assert sorted(few) == names[:2]
    assert sorted(many) == sorted(names[:3])
    assert succeeded == {"a": older}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_newest_ids_of_each_job(make_run, count) -> None:
    """The purge's kept runs: the newest ``count`` of each job, the queryset's filters held."""
    now = timezone.now()
    made = {
        name: [
            make_run(name, status=Status.SUCCEEDED, created_at=now - timedelta(hours=h))
            for h in range(4)
        ]
        for name in ("a", "b", "x'y")
    }
    make_run("a", status=Status.FAILED, created_at=now + timedelta(hours=1))
    expected = {run.pk for runs in made.values() for run in runs[:count]}
    found = JobRun.objects.succeeded().newest_ids(["a", "b", "x'y", "missing"], count)
    assert sorted(found) == sorted(expected)
    assert JobRun.objects.newest_ids([], count) == []
    assert JobRun.objects.newest_ids(["a"], 0) == []


@pytest.mark.postgres
def test_newest_ids_of_each_job_in_one_query_on_postgresql(
    make_run, django_assert_num_queries
) -> None:
    for name in ("a", "b", "c"):
        make_run(name)
        make_run(name)
    with django_assert_num_queries(1):
        assert len(JobRun.objects.newest_ids(["a", "b", "c"], 5)) == 6


@pytest.mark.parametrize("age", [7, 7.0, timedelta(days=7)])
def test_older_than(make_run, age: Any) -> None:
    now = timezone.now()
    old = make_run(created_at=now - timedelta(days=8))
    make_run(created_at=now - timedelta(days=6))
    assert list(JobRun.objects.older_than(age)) == [old]
    assert list(JobRun.objects.older_than(days=age).finished()) == []


def test_older_than_defaults_to_30_days(make_run) -> None:
    now = timezone.now()
    old = make_run(created_at=now - timedelta(days=31))
    make_run(created_at=now - timedelta(days=29))
    assert list(JobRun.objects.older_than()) == [old]
    assert JobRun.objects.older_than(0).count() == 2


@pytest.mark.parametrize(
    "bad",
    [-1, timedelta(days=-1), "7", None, True, math.nan, math.inf, 9_999_999, 1e308],
)
def test_older_than_rejects_bad_values(bad: Any) -> None:
    with pytest.raises(ValueError, match="days"):
        JobRun.objects.older_than(bad)


def test_recent(make_run) -> None:
    now = timezone.now()
    runs = [make_run(created_at=now - timedelta(minutes=i)) for i in range(5)]
    assert list(JobRun.objects.recent(3)) == runs[:3]
    assert list(JobRun.objects.running().recent()) == runs
    assert list(JobRun.objects.recent(0)) == []


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True, 2**63, 2**64])
def test_recent_rejects_bad_limits(bad: Any) -> None:
    """Past BIGINT_MAX too: the query failed in the driver (DataError: bigint out of range
    on PostgreSQL, IntegrityError on SQLite)."""
    with pytest.raises(ValueError, match="limit"):
        list(JobRun.objects.recent(bad))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda runs: runs.latest_for_each("a.job"), "string"),
        (lambda runs: runs.newest_ids("a.job", 2), "string"),
        (lambda runs: runs.newest_ids(["a.job"], "2"), "count"),
        (lambda runs: runs.finished_buckets("week"), "size"),
    ],
    ids=["latest_for_each-str", "newest_ids-str", "newest_ids-count", "buckets-week"],
)
def test_scopes_refuse_arguments_they_cannot_use(call: Any, match: str) -> None:
    """A ValueError that names the argument: one job name passed as a string was read as
    its letters (latest_for_each("a") answered for a job "a"), a count as text raised a
    TypeError, an unknown bucket size a KeyError."""
    with pytest.raises(ValueError, match=match):
        call(JobRun.objects)


def test_stale_uses_heartbeat_then_start(make_run, settings) -> None:
    now = timezone.now()
    old, new = now - timedelta(seconds=600), now - timedelta(seconds=10)
    silent = make_run(heartbeat_at=old, started_at=old)
    never_beat = make_run(heartbeat_at=None, started_at=old)
    make_run(
        heartbeat_at=new, started_at=old
    )  # beats: alive, although it started long ago
    make_run(heartbeat_at=None, started_at=new)  # just started
    make_run(status=Status.QUEUED, heartbeat_at=old)  # not running
    make_run(status=Status.SUCCEEDED, heartbeat_at=old, started_at=old)  # finished
    assert set(JobRun.objects.stale(300)) == {silent, never_beat}
    assert set(JobRun.objects.stale(timedelta(seconds=300))) == {silent, never_beat}
    assert JobRun.objects.stale(3600).count() == 0
    settings.JOBSTATUS = {"HEARTBEAT_TIMEOUT": 6}  # workers beat every 2 s
    assert JobRun.objects.stale(5).count() == 4


def test_stale_defaults_to_heartbeat_timeout(make_run, settings) -> None:
    now = timezone.now()
    run = make_run(heartbeat_at=now - timedelta(seconds=100))
    assert not JobRun.objects.stale().exists()  # default 300 s
    settings.JOBSTATUS = {"HEARTBEAT_TIMEOUT": 50}
    assert list(JobRun.objects.stale()) == [run]


@pytest.mark.parametrize("bad", [-5, "300", math.nan, 1e12, 1e308])
def test_stale_rejects_bad_timeouts(bad: Any) -> None:
    with pytest.raises(ValueError, match="seconds"):
        JobRun.objects.stale(bad)


def test_kill_requested_scope_and_bulk_request_kill(make_run) -> None:
    queued = make_run("a", status=Status.QUEUED)
    running = make_run("a")
    asked = make_run("a", kill_requested_at=timezone.now() - timedelta(minutes=1))
    make_run("a", status=Status.SUCCEEDED)
    make_run("b")
    assert list(JobRun.objects.kill_requested()) == [asked]
    assert set(JobRun.objects.not_kill_requested().for_job("a")) == {
        queued,
        running,
    } | set(JobRun.objects.for_job("a").succeeded())
    assert (
        JobRun.objects.for_job("a").request_kill() == 2
    )  # finished and already-asked runs are left alone
    assert set(JobRun.objects.kill_requested()) == {queued, running, asked}
    assert JobRun.objects.get(pk=asked.pk).kill_requested_at == asked.kill_requested_at
    assert set(JobRun.objects.kill_requested().running()) == {running, asked}
    assert JobRun.objects.for_job("a").request_kill() == 0
    assert (
        set(JobRun.objects.kill_requested().values_list("status", flat=True))
        <= Status.ACTIVE
    )


def test_count_by_status_counts_each_status_in_one_query(
    make_run, django_assert_num_queries
) -> None:
    parent = make_run("batch")
    for status in (Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED, Status.QUEUED):
        make_run("child", status=status, parent=parent)
    make_run("child", status=Status.FAILED)  # not a child
    with django_assert_num_queries(1):
        counts = parent.children.order_by("-created_at").count_by_status()
    assert counts == {Status.SUCCEEDED: 2, Status.FAILED: 1, Status.QUEUED: 1}
    assert JobRun.objects.none().count_by_status() == {}


def test_enqueue(django_assert_num_queries) -> None:
    with django_assert_num_queries(1):
        run = JobRun.objects.enqueue(
            "tests.job", params={"a": 1}, queue="low", priority=5
        )
    run.refresh_from_db()
    assert (run.status, run.params, run.queue, run.priority) == (
        Status.QUEUED,
        {"a": 1},
        "low",
        5,
    )
    assert run.queued_at is not None
    assert run.started_at is None
    assert run.attempt == 1


def test_start(settings) -> None:
    settings.JOBSTATUS = {"WORKER_NAME": "box:7"}
    run = JobRun.objects.start("tests.job", subject="auth.User:7", source="command")
    run.refresh_from_db()
    assert (run.status, run.subject, run.source, run.worker) == (
        Status.RUNNING,
        "auth.User:7",
        "command",
        "box:7",
    )
    assert run.started_at is not None
    assert run.heartbeat_at is not None


@pytest.mark.parametrize("create", ["start", "enqueue"])
@pytest.mark.parametrize(
    ("progress", "match"),
    [
        ({"progress_total": -1}, "progress total must be a finite number"),
        ({"progress_current": -1}, "progress current must be a finite number"),
        ({"progress_current": 5, "progress_total": 3}, "greater than total"),
    ],
)
def test_start_and_enqueue_refuse_a_bad_progress_with_value_error(
    create: str, progress: dict[str, int], match: str
) -> None:
    """A negative total, a negative current or a current above the total, which the
    handle and ``set_progress()`` refuse with a ValueError, reached the database and came
    back as an IntegrityError from its CHECK constraint (on PostgreSQL one that breaks
    the caller's transaction)."""
    with pytest.raises(ValueError, match=match):
        getattr(JobRun.objects, create)("tests.job", **progress)
    assert not JobRun.objects.exists()


@pytest.mark.parametrize("create", ["start", "enqueue"])
@pytest.mark.parametrize(
    "field", ["status", "finished_at", "error_fingerprint", "job_name"]
)
def test_start_and_enqueue_refuse_the_fields_they_and_the_moves_set(
    create: str, field: str
) -> None:
    """``JobRun.objects.start("x", status="bogus")`` stored a run whose status is
    ``bogus``: the fields given went over the ones the run is recorded with."""
    value = {
        "status": "bogus",
        "finished_at": timezone.now(),
        "error_fingerprint": "x",
        "job_name": "tests.other",
    }[field]
    with pytest.raises(ValueError, match=f"^{field} is not given"):
        getattr(JobRun.objects, create)("tests.job", **{field: value})
    assert not JobRun.objects.exists()


def test_start_default_worker_is_host_and_pid() -> None:
    import os
    import socket

    assert (
        JobRun.objects.start("tests.job").worker
        == f"{socket.gethostname()}:{os.getpid()}"
    )


def test_joblog_scopes(make_run) -> None:
    run, other = make_run(), make_run()
    info = run.log(20, "info")
    error = run.log(40, "error")
    critical = run.log(50, "critical")
    other.log(40, "other")
    JobLog.objects.filter(pk=info.pk).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    assert set(JobLog.objects.for_run(run)) == {info, error, critical}
    assert set(JobLog.objects.for_run(run.pk).errors()) == {error, critical}
    assert set(JobLog.objects.for_run(run).at_least(50)) == {critical}
    assert list(JobLog.objects.older_than(30)) == [info]
    assert list(JobLog.objects.older_than(timedelta(days=50))) == []


# stats().


def test_percentile_matches_percentile_cont() -> None:
    # Hand-computed: linear interpolation between closest ranks, as PostgreSQL's percentile_cont.
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile([10.0, 20.0, 30.0], 0.5) == 20.0


def _finished(make_run, name: str, status: str, seconds: float, now: Any) -> JobRun:
    return make_run(
        name,
        status=status,
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
    )


def test_stats(make_run, django_assert_max_num_queries) -> None:
    now = timezone.now()
    # job "a": durations 10, 20, 30, 40 s (succeeded, succeeded, failed, killed), one running, one queued.
    for seconds, status in [
        (10, Status.SUCCEEDED),
        (20, Status.SUCCEEDED),
        (30, Status.FAILED),
        (40, Status.KILLED),
    ]:
        _finished(make_run, "a", status, seconds, now)
    make_run("a", started_at=now - timedelta(seconds=1000))  # running: no duration yet
    make_run("a", status=Status.QUEUED)
    # job "b": one failed run of 1.5 s, one lost without a start (no duration).
    _finished(make_run, "b", Status.FAILED, 1.5, now)
    make_run("b", status=Status.LOST, started_at=None)
    JobRun.objects.filter(job_name="b", status=Status.LOST).update(started_at=None)

    # SQLite: the rows, then the durations. PostgreSQL: one query, plus the sort memory's
    # setting and its reset.
    with django_assert_max_num_queries(3):
        stats = JobRun.objects.stats()
    assert [entry["job_name"] for entry in stats] == ["a", "b"]
    a, b = stats
    assert a["total"] == 6
    assert a["counts"] == {
        "queued": 1,
        "running": 1,
        "retrying": 0,
        "succeeded": 2,
        "failed": 1,
        "killed": 1,
        "lost": 0,
    }
    assert a["failure_rate"] == 0.25  # 1 failed of 4 finished
    assert a["min_duration"] == pytest.approx(10)
    assert a["avg_duration"] == pytest.approx(25)
    assert a["max_duration"] == pytest.approx(40)
    assert a["p50_duration"] == pytest.approx(25)  # between 20 and 30
    assert a["p95_duration"] == pytest.approx(38.5)  # 30 + 0.85 * 10
    assert b["total"] == 2
    assert b["failure_rate"] == 0.5
    assert (
        b["min_duration"]
        == b["max_duration"]
        == b["avg_duration"]
        == pytest.approx(1.5)
    )
    assert b["p50_duration"] == b["p95_duration"] == pytest.approx(1.5)


def test_stats_of_a_filtered_queryset(make_run) -> None:
    now = timezone.now()
    for seconds in (1, 2, 3, 4, 5, 6, 7, 8, 9, 100):
        _finished(make_run, "a", Status.SUCCEEDED, seconds, now)
    _finished(make_run, "a", Status.FAILED, 1000, now - timedelta(days=60))
    JobRun.objects.filter(status=Status.FAILED).update(
        created_at=now - timedelta(days=60)
    )
    [entry] = JobRun.objects.exclude(pk__in=JobRun.objects.older_than(30)).stats()
    assert entry["total"] == 10
    assert entry["failure_rate"] == 0.0
    assert entry["max_duration"] == pytest.approx(100)
    assert entry["p50_duration"] == pytest.approx(5.5)
    assert entry["p95_duration"] == pytest.approx(9 + 0.55 * 91)


def test_stats_without_finished_runs(make_run) -> None:
    make_run("a", status=Status.QUEUED)
    [entry] = JobRun.objects.stats()
    assert entry["failure_rate"] is None
    assert (
        entry["min_duration"] is entry["avg_duration"] is entry["max_duration"] is None
    )
    assert entry["p50_duration"] is entry["p95_duration"] is None
    assert JobRun.objects.none().stats() == []


def test_stats_query_is_one_grouped_query_on_postgres(make_run) -> None:
    from django.test.utils import CaptureQueriesContext

    make_run("a", status=Status.SUCCEEDED)
    expected = 1 if connection.vendor == "postgresql" else 2
    with CaptureQueriesContext(connection) as queries:
        JobRun.objects.stats()
    table = JobRun._meta.db_table
    # Besides the sort memory's setting (PostgreSQL), the runs are read this many times.
    assert len([q for q in queries.captured_queries if table in q["sql"]]) == expected


@pytest.mark.parametrize(
    ("zone", "finished", "starts"),
    [
        # Berlin's fall-back: 02:30 CEST, then 02:30 CET an hour later.
        (
            "Europe/Berlin",
            ["2024-10-27T00:30Z", "2024-10-27T01:30Z"],
            ["2024-10-27T02:00+02:00", "2024-10-27T02:00+01:00"],
        ),
        # Local hours start at half past UTC's: 10:00 and 10:59 IST are one hour.
        (
            "Asia/Kolkata",
            ["2024-03-01T04:30Z", "2024-03-01T05:29Z", "2024-03-01T05:30Z"],
            ["2024-03-01T10:00+05:30", "2024-03-01T11:00+05:30"],
        ),
        (
            "Asia/Kathmandu",
            ["2024-03-01T04:15Z", "2024-03-01T05:14Z", "2024-03-01T05:15Z"],
            ["2024-03-01T10:00+05:45", "2024-03-01T11:00+05:45"],
        ),
        # UTC and a fixed offset have no hour twice: truncated as they are.
        (
            "UTC",
            ["2024-03-01T04:15Z", "2024-03-01T05:14Z"],
            ["2024-03-01T04:00Z", "2024-03-01T05:00Z"],
        ),
    ],
    ids=["berlin-fall-back", "kolkata", "kathmandu", "utc"],
)
def test_hour_buckets_are_real_hours_that_start_on_the_local_clock(
    make_run, zone: str, finished: list[str], starts: list[str]
) -> None:
    """An hour bucket was the truncation of the local wall clock: the two 02:00 hours of
    a DST fall-back made one bucket. Truncated in UTC instead, a local hour of India or
    Nepal would start at half past (or a quarter to)."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    for at in finished:
        make_run(status=Status.SUCCEEDED, finished_at=datetime.fromisoformat(at))
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    buckets = JobRun.objects.finished_buckets("hour", tzinfo=tz)
    # As text: an ambiguous local time never equals one of another zone (PEP 495).
    assert [b["start"].isoformat() for b in buckets] == [
        datetime.fromisoformat(at).isoformat() for at in starts
    ]
    assert sum(b["finished"] for b in buckets) == len(finished)


def test_minute_buckets_keep_a_minute_of_a_dst_fall_back_twice(make_run) -> None:
    """02:30 CEST and 02:30 CET are an hour apart: two minute buckets, not one of 2."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    for hour in (0, 1):
        make_run(
            status=Status.SUCCEEDED,
            finished_at=datetime(2024, 10, 27, hour, 30, 10, tzinfo=UTC),
        )
    buckets = JobRun.objects.finished_buckets(
        "minute", "job_name", tzinfo=ZoneInfo("Europe/Berlin")
    )
    assert [
        (b["start"].isoformat(), b["job_name"], b["finished"]) for b in buckets
    ] == [
        ("2024-10-27T02:30:00+02:00", "tests.job", 1),
        ("2024-10-27T02:30:00+01:00", "tests.job", 1),
    ]


@pytest.mark.postgres
def test_stats_sort_in_memory_and_put_the_settings_back(make_run) -> None:
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from django_jobstatus.querysets import AGGREGATE_WORK_MEM, aggregating

    def show(name: str) -> str:
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW {name}")
            return str(cursor.fetchone()[0])

    make_run("a", status=Status.SUCCEEDED)
    before = show("work_mem"), show("jit")
    with transaction.atomic():  # inside a request's transaction, too
        with aggregating("default"):
            assert show("work_mem") == AGGREGATE_WORK_MEM
            assert show("jit") == "off"
            with aggregating("default"):  # nested: shares the outer setting
                pass
            assert show("work_mem") == AGGREGATE_WORK_MEM
        assert (show("work_mem"), show("jit")) == before
        with CaptureQueriesContext(connection) as queries:
            JobRun.objects.stats()
    sql = [q["sql"] for q in queries.captured_queries]
    assert any("set_config('work_mem'" in q for q in sql)
    assert any("percentile_cont" in q for q in sql)


def test_failure_groups_count_runs_per_job_and_cause(
    make_run, django_assert_num_queries
):
    from datetime import timedelta

    from django.utils import timezone

    from django_jobstatus.models import JobRun

    now = timezone.now()
    for user in (1, 2, 3):
        make_run("mail.send", status="running").mark_failed(
            ConnectionError(f"smtp refused user {user}")
        )
    make_run("mail.send", status="running").mark_failed(KeyError("template"))
    make_run("report.build", status="running").mark_failed(
        ConnectionError("smtp refused user 9")
    )
    make_run("report.build", status="running").mark_lost()
    old = make_run("mail.send", status="running")
    old.mark_failed(ConnectionError("smtp refused user 4"))
    JobRun.objects.filter(pk=old.pk).update(finished_at=now - timedelta(days=2))
    make_run("mail.send", status="succeeded")
    with django_assert_num_queries(1):
        groups = JobRun.objects.failure_groups(now - timedelta(hours=1))
    found = {
        (g["job_name"], g["error_fingerprint"]): (g["count"], g["lost"]) for g in groups
    }
    assert found == {
        ("mail.send", "ConnectionError: smtp refused user <n>"): (3, 0),
        ("mail.send", "KeyError: '…'"): (1, 0),
        ("report.build", "ConnectionError: smtp refused user <n>"): (1, 0),
        ("report.build", "Lost: the worker process running it died."): (1, 1),
    }
    assert all(g["first_seen"] <= g["last_seen"] for g in groups)


@pytest.mark.parametrize(
    ("window_failures", "scan"), [(0, 50), (10**6, 50), (10**6, 1)]
)
def test_failure_groups_are_the_newest_groups_of_the_whole_window(
    monkeypatch, window_failures, scan
):
    """Counted from the newest groups' own failures (a window said to hold many, and the
    newest failures settle which groups are newest) or from every failure of the window,
    the groups are those of a count done by hand: the newest ``limit`` by last failure
    (ties by name), with their counts, lost, retryable, first and last seen."""
    import random
    from collections import defaultdict
    from datetime import timedelta

    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from django_jobstatus import querysets
    from django_jobstatus.models import JobRun, Status, uuid7

    monkeypatch.setattr(querysets, "GROUP_SCAN", scan)
    now = timezone.now().replace(microsecond=0)
    pick = random.Random(7)
    runs = []
    for _ in range(600):
        status = pick.choice([Status.FAILED] * 4 + [Status.LOST, Status.SUCCEEDED])
        # Whole seconds over ten days: many failures share a finish time, groups tie.
        finished = now - timedelta(seconds=pick.randrange(0, 10 * 86400, 600))
        runs.append(
            JobRun(
                id=uuid7(),
                job_name=f"job{pick.randrange(12)}",
                status=status,
                source=pick.choice(["celery", "rq", "manual"]),
                error_fingerprint=pick.choice(["", "KeyError: '…'", "Timeout", "Boom"])
                if status != Status.SUCCEEDED
                else "",
                created_at=finished - timedelta(seconds=5),
                finished_at=finished,
            )
        )
    JobRun.objects.bulk_create(runs)
    since = now - timedelta(days=7)
    by_hand: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"count": 0, "lost": 0, "retryable": 0, "at": []}
    )
    for run in runs:
        if run.status in (Status.FAILED, Status.LOST) and run.finished_at >= since:
            group = by_hand[(run.job_name, run.error_fingerprint)]
            group["count"] += 1
            group["lost"] += run.status == Status.LOST
            group["retryable"] += run.source in ("celery", "rq")
            group["at"].append(run.finished_at)
    expected = sorted(
        (
            {
                "job_name": name,
                "error_fingerprint": cause,
                "count": g["count"],
                "lost": g["lost"],
                "retryable": g["retryable"],
                "first_seen": min(g["at"]),
                "last_seen": max(g["at"]),
            }
            for (name, cause), g in by_hand.items()
        ),
        key=lambda g: (
            -g["last_seen"].timestamp(),
            g["job_name"],
            g["error_fingerprint"],
        ),
    )
    assert len(expected) > 30
    for limit in (1, 2, 3, 10, 25, 200):
        with CaptureQueriesContext(connection) as queries:
            groups = JobRun.objects.failure_groups(
                since,
                limit=limit,
                retry_sources=("celery", "rq"),
                window_failures=window_failures,
            )
        assert groups == expected[:limit], limit
        # Only the newest groups counted, or (too few failures read) every group.
        only_newest = '"error_fingerprint" IN' in queries.captured_queries[-1]["sql"]
        settled = window_failures and scan == 50 and limit < len(expected)
        assert only_newest == bool(settled), limit
        assert len(queries.captured_queries) == (2 if window_failures else 1)


def test_a_forced_kill_of_a_run_started_meanwhile_says_what_could_not_stop_it(
    monkeypatch: Any,
) -> None:
    """Read queued, started by its worker before the kill's write: killed at its new
    status, but told to the task systems with the copy read before (no start, no
    worker), so the answer said nothing was left running while the job ran on."""
    from django_jobstatus import querysets

    run = JobRun.objects.enqueue("tests.child")
    original = querysets._killed

    def started_meanwhile(found: JobRun, *args: Any, **kwargs: Any) -> bool:
        JobRun.objects.get(pk=found.pk).mark_running(worker="host:1")
        return original(found, *args, **kwargs)

    monkeypatch.setattr(querysets, "_killed", started_meanwhile)
    result = JobRun.objects.filter(pk=run.pk).request_kill(force=True)
    run.refresh_from_db()
    assert (run.status, result.killed) == (Status.KILLED, 1)
    assert [entry.run_id for entry in result.not_stopped] == [run.pk]


def test_wait_takes_one_status_passed_alone(make_run):
    """``run.wait(Status.RUNNING)``: a status passed alone was read as its letters, so the
    call waited out the whole timeout and said the run "is still running"."""
    run = make_run(status=Status.RUNNING)
    assert run.wait(Status.RUNNING, timeout=5, interval=0.05).status == Status.RUNNING


def test_wait_refuses_a_status_that_does_not_exist(make_run):
    """``run.wait(["finished"])`` (a scope's name, not a status) could never match."""
    run = make_run(status=Status.SUCCEEDED)
    with pytest.raises(ValueError, match="statuses .* not finished"):
        run.wait(["finished"], timeout=5)


@pytest.mark.parametrize(
    "call",
    [
        lambda runs: list(runs.for_job(["a.job", "b.job"])),
        lambda runs: runs.latest_for(["a.job"]),
        lambda runs: runs.latest_for(None),
    ],
    ids=["for_job-list", "latest_for-list", "latest_for-None"],
)
def test_for_job_and_latest_for_refuse_what_is_not_a_job_name(make_run, call):
    """``for_job(["a.job", "b.job"])`` looked up a job named "['a.job', 'b.job']", and
    ``latest_for(["a.job"])`` answered None although a.job has a run."""
    make_run("a.job", status=Status.SUCCEEDED)
    with pytest.raises(ValueError, match="name must be a job name"):
        call(JobRun.objects)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda runs: runs.older_than(10**400), "days"),
        (lambda runs: runs.stale(10**400), "seconds"),
    ],
    ids=["older_than", "stale"],
)
def test_a_whole_number_too_big_for_a_float_is_a_value_error(call, name):
    """It was a bare ``OverflowError: int too large to convert to float``."""
    with pytest.raises(ValueError, match=f"{name} must be at most 1000 years"):
        call(JobRun.objects)
