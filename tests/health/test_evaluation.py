"""health.assess() and health.check(): states, incidents, and the queries they cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus import health
from django_jobstatus.models import (
    JobMonitor,
    JobMonitorIncident,
    JobRun,
    MonitorState,
    Status,
)

_JANUARY = datetime(2026, 1, 1, tzinfo=UTC)  # a monitor created before the runs below


def test_a_job_that_ran_on_time_is_healthy(monitor, past_run):
    m = monitor(every=timedelta(hours=1))
    past_run(ago=timedelta(minutes=10))
    assessment = health.assess(m)
    assert assessment.state == MonitorState.HEALTHY
    assert assessment.next_expected_at is not None
    assert assessment.next_expected_at > timezone.now() + timedelta(minutes=45)


def test_no_run_within_every_plus_grace_is_late(monitor, past_run):
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5))
    JobRun.objects.all().delete()
    last = past_run(ago=timedelta(minutes=66))
    assessment = health.assess(m)
    assert assessment.state == MonitorState.LATE
    assert assessment.run_id == last.pk
    # Within the grace it is not late yet.
    assert health.assess(m, now=last.created_at + timedelta(minutes=64)).state == (
        MonitorState.HEALTHY
    )


def test_cron_lateness_counts_from_the_scheduled_time(monitor, past_run):
    m = monitor(cron="0 2 * * *", grace=timedelta(minutes=10), created_at=_JANUARY)
    JobRun.objects.all().delete()
    day = datetime(2026, 3, 10, tzinfo=UTC)
    past_run(ago=timezone.now() - (day + timedelta(hours=2, seconds=3)))
    # Next expected: the 11th at 02:00 UTC (TIME_ZONE is UTC in the tests).
    assert health.next_expected(m, day + timedelta(hours=2, seconds=3)) == day + (
        timedelta(days=1, hours=2)
    )
    at = day + timedelta(days=1, hours=2, minutes=9)
    assert health.assess(m, now=at).state == MonitorState.HEALTHY
    at = day + timedelta(days=1, hours=2, minutes=11)
    assert health.assess(m, now=at).state == MonitorState.LATE


def test_a_run_started_a_little_early_counts_for_its_cron_time(monitor):
    m = monitor(cron="0 2 * * *", grace=timedelta(minutes=10), created_at=_JANUARY)
    early = datetime(2026, 3, 10, 1, 58, tzinfo=UTC)
    assert health.next_expected(m, early) == datetime(2026, 3, 11, 2, 0, tzinfo=UTC)


def test_max_failures_in_a_row_is_failing(monitor, past_run):
    m = monitor(max_failures=2)
    past_run(ago=timedelta(minutes=3), status=Status.FAILED, error="x")
    assert health.assess(m).state == MonitorState.HEALTHY  # one failure only
    newest = past_run(
        ago=timedelta(minutes=2), status=Status.FAILED, error="ValueError: boom"
    )
    past_run(ago=timedelta(minutes=1), status=Status.RUNNING)  # running on top
    assessment = health.assess(m)
    assert assessment.state == MonitorState.FAILING
    assert assessment.run_id == newest.pk
    assert "ValueError: boom" in assessment.detail


def test_a_success_between_failures_breaks_the_streak(monitor, past_run):
    m = monitor(max_failures=2)
    past_run(ago=timedelta(minutes=3), status=Status.FAILED)
    past_run(ago=timedelta(minutes=2), status=Status.SUCCEEDED)
    past_run(ago=timedelta(minutes=1), status=Status.FAILED)
    assert health.assess(m).state == MonitorState.HEALTHY


def test_max_failures_zero_never_fails(monitor, past_run):
    m = monitor(max_failures=0)
    past_run(status=Status.FAILED)
    assert health.assess(m).state == MonitorState.HEALTHY


def test_a_run_running_over_the_limit_is_slow(monitor, past_run):
    m = monitor(max_duration=timedelta(minutes=10))
    run = past_run(ago=timedelta(minutes=11), status=Status.RUNNING)
    assessment = health.assess(m)
    assert assessment.state == MonitorState.SLOW
    assert assessment.run_id == run.pk


def test_a_last_run_that_took_too_long_is_slow(monitor, past_run):
    m = monitor(max_duration=timedelta(minutes=10))
    past_run(ago=timedelta(minutes=30), took=timedelta(minutes=12))
    assert health.assess(m).state == MonitorState.SLOW
    past_run(ago=timedelta(minutes=5), took=timedelta(minutes=2))
    assert health.assess(m).state == MonitorState.HEALTHY


def test_the_limit_may_be_a_multiple_of_the_jobs_own_p95(monitor, past_run):
    m = monitor(max_duration_p95_factor=2)
    JobRun.objects.all().delete()
    for minute in range(20, 40):
        past_run(ago=timedelta(minutes=minute), took=timedelta(seconds=60))
    assert health.recent_p95("tests.nightly") == pytest.approx(60)
    past_run(ago=timedelta(minutes=5), took=timedelta(seconds=119))
    assert health.assess(m).state == MonitorState.HEALTHY
    past_run(ago=timedelta(minutes=4), took=timedelta(seconds=500))
    assert health.assess(m).state == MonitorState.SLOW


def test_failing_comes_before_late_and_slow(monitor, past_run):
    m = monitor(every=timedelta(minutes=1), max_duration=timedelta(seconds=1))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2), took=timedelta(minutes=5), status=Status.FAILED)
    assert health.assess(m).state == MonitorState.FAILING


def test_a_disabled_monitor_costs_no_query(monitor, django_assert_num_queries):
    m = monitor(enabled=False, every=timedelta(seconds=1))
    with django_assert_num_queries(0):
        assert health.assess(m).state == MonitorState.DISABLED


def test_check_opens_one_incident_and_resolves_it(
    monitor, past_run, django_capture_on_commit_callbacks
):
    m = monitor(max_failures=1)
    failed = past_run(status=Status.FAILED, error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        first = health.check()
    assert [(c.previous, c.state) for c in first.changes] == [
        (MonitorState.HEALTHY, MonitorState.FAILING)
    ]
    incident = JobMonitorIncident.objects.get()
    assert (incident.state, incident.run_id, incident.resolved_at) == (
        MonitorState.FAILING,
        failed.pk,
        None,
    )
    # Checking again changes nothing and opens nothing.
    assert health.check().changes == []
    assert JobMonitorIncident.objects.count() == 1
    past_run(ago=timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        health.check()
    incident.refresh_from_db()
    assert incident.resolved_at is not None
    m.refresh_from_db()
    assert m.state == MonitorState.HEALTHY
    assert m.checked_at is not None


def test_a_change_another_process_made_first_is_not_applied_twice(monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED)
    stale = JobMonitor.objects.get(pk=m.pk)
    assert health.check().changes
    # This copy still says healthy: its conditional UPDATE finds nothing to change.
    assert health.apply(stale, health.assess(stale)) is None
    assert JobMonitorIncident.objects.count() == 1


def test_one_open_incident_per_monitor_is_enforced_by_the_database(monitor):
    from django.db import IntegrityError, transaction

    m = monitor()
    JobMonitorIncident.objects.create(monitor=m, state=MonitorState.LATE)
    with pytest.raises(IntegrityError), transaction.atomic():
        JobMonitorIncident.objects.create(monitor=m, state=MonitorState.FAILING)


def test_disabling_resolves_the_open_incident(monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED)
    health.check()
    JobMonitor.objects.filter(pk=m.pk).update(enabled=False)
    change = health.check().changes[0]
    assert change.state == MonitorState.DISABLED
    assert change.resolved is not None
    assert not JobMonitorIncident.objects.filter(resolved_at__isnull=True).exists()


def test_check_costs_at_most_four_queries_a_monitor(
    monitor, past_run, django_assert_max_num_queries, settings
):
    for index in range(6):
        name = f"tests.job{index}"
        monitor(
            name,
            every=timedelta(hours=1),
            max_failures=3,
            max_duration_p95_factor=3 if index % 2 else None,
            max_duration=None if index % 2 else timedelta(hours=1),
        )
        for _ in range(5):
            past_run(name)
    health.check()  # settle the states
    # One query for the monitors, then for each its row lock, its newest finished runs
    # (with its last start) and its longest running run, and the recent durations for the
    # three with a p95 limit; one UPDATE of checked_at.
    with django_assert_max_num_queries(1 + 3 * 6 + 3 + 1):
        result = health.check()
    assert result.counts[MonitorState.HEALTHY] == 6
    # With an alert target: two queries more, for the alerts that have not gone out.
    settings.JOBSTATUS = {"ALERT_EMAILS": ["ops@example.com"]}
    with django_assert_max_num_queries(1 + 3 * 6 + 3 + 1 + 2):
        result = health.check()
    assert result.counts[MonitorState.HEALTHY] == 6


def test_dry_run_stores_nothing(monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED)
    result = health.check(dry_run=True)
    assert result.assessments[m.job_name].state == MonitorState.FAILING
    m.refresh_from_db()
    assert (m.state, m.checked_at) == (MonitorState.HEALTHY, None)
    assert not JobMonitorIncident.objects.exists()


def test_a_cron_is_read_in_time_zone_not_the_active_one(monitor):
    m = monitor(cron="0 2 * * *", grace=timedelta(minutes=10), created_at=_JANUARY)
    last = datetime(2026, 3, 10, 2, 0, 3, tzinfo=UTC)
    with timezone.override("America/New_York"):  # a user's time zone, in the admin
        expected = health.next_expected(m, last)
    assert expected == datetime(2026, 3, 11, 2, 0, tzinfo=UTC)


def test_grace_across_a_dst_change_is_real_time(monitor, past_run, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    m = monitor(cron="30 1 * * *", grace=timedelta(hours=2), created_at=_JANUARY)
    JobRun.objects.all().delete()
    # 01:30 CET on the 28th of March; the 29th's 01:30 is still CET (00:30 UTC), then
    # the clocks go forward at 02:00: the grace ends at 02:30 UTC, not 01:30 UTC.
    last = datetime(2026, 3, 28, 0, 30, tzinfo=UTC)
    past_run(ago=timezone.now() - last)
    at = datetime(2026, 3, 29, 1, 45, tzinfo=UTC)
    assert health.assess(m, now=at).state == MonitorState.HEALTHY
    at = datetime(2026, 3, 29, 2, 31, tzinfo=UTC)
    assert health.assess(m, now=at).state == MonitorState.LATE


def test_a_monitor_is_not_late_at_its_creation(monitor, past_run):
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=3))
    m = monitor(every=timedelta(hours=1), created_at=timezone.now())
    assert health.assess(m).state == MonitorState.HEALTHY
    later = timezone.now() + timedelta(hours=1, minutes=6)
    assert health.assess(m, now=later).state == MonitorState.LATE


def test_a_monitor_enabled_again_is_not_late_at_once(monitor, past_run):
    """A pause is like a creation: nothing is expected before the monitor was enabled again."""
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=3))
    m = monitor(every=timedelta(hours=1))
    m.enabled = False
    m.save()
    assert health.assess(m).state == MonitorState.DISABLED
    m = JobMonitor.objects.get(pk=m.pk)  # as the admin and the API read it
    m.enabled = True
    m.save()
    assert health.assess(m).state == MonitorState.HEALTHY
    later = timezone.now() + timedelta(hours=1, minutes=6)
    assert health.assess(m, now=later).state == MonitorState.LATE


def test_a_monitor_whose_cadence_changed_is_not_late_at_once(monitor, past_run):
    """Daily to hourly, 20 hours after the last run: the new cadence counts from its
    change, as a new monitor counts from its creation. The edit made the monitor late at
    once (measured from the last run by the new cadence), and alerted on a job whose
    first run on the new cadence was not due yet."""
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=20))
    m = monitor(every=timedelta(days=1), created_at=_JANUARY)
    assert health.assess(m).state == MonitorState.HEALTHY
    m = JobMonitor.objects.get(pk=m.pk)  # as the admin and the API read it
    m.every = timedelta(hours=1)
    m.save()
    assert health.assess(m).state == MonitorState.HEALTHY
    later = timezone.now() + timedelta(hours=1, minutes=6)
    assert health.assess(m, now=later).state == MonitorState.LATE
    # From "every" to a first cron expression: the same.
    m.every, m.cron = None, "0 * * * *"
    m.save()
    assert health.assess(m).state == MonitorState.HEALTHY


def test_a_queued_run_that_never_started_does_not_hide_lateness(monitor, past_run):
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2))
    created = timezone.now() - timedelta(minutes=10)
    JobRun.objects.create(
        job_name=m.job_name, status=Status.QUEUED, created_at=created, queued_at=created
    )
    assert health.assess(m).state == MonitorState.LATE
    # Nor does one the reaper ended, killed, because no worker ever took it.
    JobRun.objects.filter(status=Status.QUEUED).update(
        status=Status.KILLED, finished_at=timezone.now()
    )
    assert health.assess(m).state == MonitorState.LATE


def test_the_last_run_to_finish_is_the_last_run(monitor, past_run):
    m = monitor(max_failures=1)
    JobRun.objects.all().delete()
    # Created first, failed last: a newer run succeeded meanwhile.
    past_run(ago=timedelta(minutes=10), took=timedelta(minutes=9), status=Status.FAILED)
    past_run(ago=timedelta(minutes=9), took=timedelta(seconds=10))
    assert health.assess(m).state == MonitorState.FAILING


@pytest.mark.parametrize(
    ("last", "others", "state"),
    [
        (Status.FAILED, Status.SUCCEEDED, MonitorState.FAILING),
        (Status.SUCCEEDED, Status.FAILED, MonitorState.HEALTHY),
    ],
)
def test_the_last_run_to_finish_decides_however_many_newer_runs_ended_first(
    monitor, past_run, last, others, state
):
    """A long run, created before many short ones that all ended before it: it is the last."""
    m = monitor(max_failures=1)
    JobRun.objects.all().delete()
    long = past_run(ago=timedelta(minutes=30), took=timedelta(minutes=29), status=last)
    for minute in range(20, 10, -1):
        past_run(
            ago=timedelta(minutes=minute), took=timedelta(seconds=10), status=others
        )
    assessment = health.assess(m)
    assert assessment.state == state
    if state == MonitorState.FAILING:
        assert assessment.run_id == long.pk


def test_the_last_runs_to_finish_are_read_from_their_index(monitor, past_run):
    """jobstatus_run_job_finished_idx (migration 0017): one range, no sort of the job's runs."""
    m = monitor(max_failures=3)
    with CaptureQueriesContext(connection) as queries:
        health.assess(m)
    sql = next(
        q["sql"] for q in queries.captured_queries if '"finished_at" DESC' in q["sql"]
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # So few rows are read quicker whole: only a plan that cannot use the index sorts.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute(f"EXPLAIN {sql}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = str(cursor.fetchall())
    assert "jobstatus_run_job_finished_idx" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_a_slow_run_is_not_judged_against_its_own_duration(monitor, past_run):
    m = monitor(max_duration_p95_factor=2)
    JobRun.objects.all().delete()
    past_run(ago=timedelta(minutes=30), took=timedelta(seconds=60))
    past_run(ago=timedelta(minutes=10), took=timedelta(seconds=500))
    assert health.assess(m).state == MonitorState.SLOW


def test_active_runs_on_top_do_not_hide_failures(monitor, past_run):
    """More active runs than the head read before: the failures behind them still count."""
    m = monitor(max_failures=2)
    JobRun.objects.all().delete()
    past_run(ago=timedelta(minutes=30), status=Status.FAILED, error="KeyError: 'x'")
    past_run(ago=timedelta(minutes=20), status=Status.FAILED, error="KeyError: 'y'")
    for _ in range(10):
        past_run(ago=timedelta(minutes=1), status=Status.RUNNING)
    for _ in range(10):
        JobRun.objects.create(job_name=m.job_name, status=Status.QUEUED)
    assessment = health.assess(m)
    assert assessment.state == MonitorState.FAILING
    assert assessment.detail.endswith("KeyError: 'y'")


def test_an_old_stuck_run_under_many_active_runs_is_slow(monitor, past_run):
    m = monitor(max_duration=timedelta(hours=1))
    JobRun.objects.all().delete()
    stuck = past_run(ago=timedelta(hours=3), status=Status.RUNNING)
    for _ in range(10):
        past_run(ago=timedelta(minutes=1), status=Status.RUNNING)
    assessment = health.assess(m)
    assert (assessment.state, assessment.run_id) == (MonitorState.SLOW, stuck.pk)


def test_a_check_that_began_before_the_stored_state_was_judged_does_not_undo_it(
    monitor, past_run
):
    """Two checks overlap (a slow one, and the next cron's): the later one finds the job
    late; the earlier one, reaching the monitor after it with its older time, judged it on
    time. It stored healthy over late, and resolved the incident before it had opened
    (announcing a recovery that did not happen)."""
    m = monitor(every=timedelta(hours=1), grace=timedelta(0))
    past_run(ago=timedelta(hours=2))  # expected an hour ago
    now = timezone.now()
    health.check(now=now)
    m.refresh_from_db()
    assert m.state == MonitorState.LATE

    earlier = health.check(now=now - timedelta(hours=1, minutes=30))
    assert earlier.assessments[m.job_name].state == MonitorState.HEALTHY
    assert earlier.changes == []
    m.refresh_from_db()
    assert (m.state, m.state_changed_at, m.checked_at) == (MonitorState.LATE, now, now)
    incident = JobMonitorIncident.objects.get()
    assert (incident.opened_at, incident.resolved_at) == (now, None)


def test_a_run_retrying_after_a_start_on_time_is_not_late(monitor, past_run):
    """A run that started on time, failed its attempt and waits for its retry has
    started: the job is not late. A retry clears ``started_at``, so the run counted as
    never started and the monitor said "No run since" the run before."""
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(minutes=70))  # expected 10 minutes ago
    retried = JobRun.objects.create(job_name=m.job_name, status=Status.QUEUED)
    retried.mark_running()
    started = retried.started_at
    retried.mark_failed(ValueError("flaky"), retry=True)
    assert retried.started_at is None and retried.status == Status.RETRYING
    assessment = health.assess(m)
    assert assessment.state == MonitorState.HEALTHY, assessment.detail
    assert assessment.next_expected_at == started + timedelta(hours=1)
    assert health.expected_at(m) == started + timedelta(hours=1)
    # The admin's list reads it in the same way.
    (listed,) = health.with_last_run(JobMonitor.objects.filter(pk=m.pk))
    assert health.expected_at(listed) == started + timedelta(hours=1)


def test_a_retry_attempt_starting_does_not_make_a_missed_hourly_run_on_time(monitor):
    """An hourly job: its only run started 100 minutes ago, failed and was retried; the
    retry began 30 minutes ago. A run's start is its first attempt's: the run due 40
    minutes ago is missed. Once the retry started, the run counted as started 30 minutes
    ago: the monitor turned healthy and expected the next run an hour past the missed one."""
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5))
    JobRun.objects.all().delete()
    run = JobRun.objects.create(job_name=m.job_name, status=Status.QUEUED)
    run.mark_running()
    run.mark_failed(ValueError("flaky"), retry=True)
    now = timezone.now()
    first_start = now - timedelta(minutes=100)
    run.refresh_from_db()
    attempts = [
        {
            **run.attempts[0],
            "started_at": first_start.isoformat(),
            "finished_at": (first_start + timedelta(seconds=5)).isoformat(),
        }
    ]
    JobRun.objects.filter(pk=run.pk).update(
        attempts=attempts, created_at=first_start, queued_at=first_start
    )
    waiting = health.assess(m, now=now)
    assert waiting.state == MonitorState.LATE, waiting
    assert waiting.next_expected_at == first_start + timedelta(hours=1)

    run.refresh_from_db()
    run.mark_running()  # the retry attempt begins, 30 minutes ago
    JobRun.objects.filter(pk=run.pk).update(started_at=now - timedelta(minutes=30))
    retrying = health.assess(m, now=now)
    assert retrying.next_expected_at == first_start + timedelta(hours=1), retrying
    assert retrying.state == MonitorState.LATE, retrying
    assert health.expected_at(m) == first_start + timedelta(hours=1)
    (listed,) = health.with_last_run(JobMonitor.objects.filter(pk=m.pk))
    assert health.expected_at(listed) == first_start + timedelta(hours=1)


def test_a_run_queued_first_and_started_last_is_the_job_s_latest_start(
    monitor, past_run
):
    """An hourly job. Run B was created 90 minutes ago and ran at once; run A was created
    100 minutes ago (behind a backlog, or for later) and started 10 minutes ago. The job
    started 10 minutes ago, yet the newest run *created* decided: "No run since" 90
    minutes ago, late, an incident and an alert."""
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5))
    JobRun.objects.all().delete()
    now = timezone.now()
    past_run(ago=timedelta(minutes=90))  # B: created and started 90 minutes ago
    a = past_run(ago=timedelta(minutes=100), status=Status.RUNNING)
    JobRun.objects.filter(pk=a.pk).update(started_at=now - timedelta(minutes=10))
    assessment = health.assess(m, now=now)
    assert assessment.state == MonitorState.HEALTHY, assessment.detail
    latest = now - timedelta(minutes=10) + timedelta(hours=1)
    assert assessment.next_expected_at == latest
    assert health.expected_at(m) == latest
    (listed,) = health.with_last_run(JobMonitor.objects.filter(pk=m.pk))
    assert health.expected_at(listed) == latest


def test_the_job_s_last_start_is_read_from_the_index_of_its_runs(monitor):
    """The newest runs that started, by creation: one range of jobstatus_run_job_id_idx
    (job_name, created_at, id), never a sort of the job's runs by their start."""
    m = monitor(every=timedelta(hours=1))
    with CaptureQueriesContext(connection) as queries:
        health.last_start(m)
    (query,) = queries.captured_queries
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Statistics of a table holding many jobs' runs, whatever earlier tests left:
            # on an empty table both indexes cost the same, and the planner may walk the
            # newest runs of every job instead (jobstatus_run_created_id_idx).
            now = timezone.now()
            JobRun.objects.bulk_create(
                JobRun(
                    job_name=f"tests.other.{i % 50}",
                    status=Status.SUCCEEDED,
                    queued_at=now,
                    started_at=now,
                    finished_at=now,
                )
                for i in range(2000)
            )
            try:
                cursor.execute("ANALYZE django_jobstatus_jobrun")
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("SET LOCAL enable_sort = off")
                cursor.execute(f"EXPLAIN {query['sql']}")
                plan = str(cursor.fetchall())
            finally:
                # ANALYZE writes its figures outside the test's transaction: reset, or
                # the next tests see a table of 2,000 runs (the changelist's paginator
                # reads that estimate: tests/admin/test_changelist.py failed after it).
                JobRun.objects.filter(job_name__startswith="tests.other.").delete()
                cursor.execute("ANALYZE django_jobstatus_jobrun")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {query['sql']}")
            plan = str(cursor.fetchall())
    assert "jobstatus_run_job_id_idx" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("started", [True, False])
def test_a_killed_run_does_not_end_a_failing_streak(monitor, past_run, started):
    """A kill is no failure, and no success either: a run killed on request (or by the
    reaper before a worker took it) said nothing of the job's health, yet it broke the
    streak, resolved the incident and announced the job "healthy again"."""
    m = monitor(max_failures=2)
    JobRun.objects.all().delete()
    past_run(ago=timedelta(minutes=30), status=Status.FAILED, error="KeyError: 'x'")
    failed = past_run(
        ago=timedelta(minutes=20), status=Status.FAILED, error="KeyError: 'y'"
    )
    killed = past_run(ago=timedelta(minutes=10), status=Status.KILLED)
    if not started:
        JobRun.objects.filter(pk=killed.pk).update(started_at=None)
    assessment = health.assess(m)
    assert (assessment.state, assessment.run_id) == (MonitorState.FAILING, failed.pk)
    # A success after it does end the streak.
    past_run(ago=timedelta(minutes=5))
    assert health.assess(m).state == MonitorState.HEALTHY


@pytest.mark.parametrize("error", ["\n", "   ", " \n\t"])
def test_a_failure_whose_error_is_blank_is_failing_with_no_reason(
    monitor, past_run, error
):
    """An error of blanks only (a task system's empty message): the detail took the last
    of no lines, and the check raised IndexError for every monitor after this one."""
    m = monitor(max_failures=1)
    JobRun.objects.all().delete()
    failed = past_run(status=Status.FAILED, error=error)
    assert JobRun.objects.get(pk=failed.pk).error == error
    assessment = health.assess(m)
    assert (assessment.state, assessment.run_id) == (MonitorState.FAILING, failed.pk)
    assert assessment.detail == "The last run failed."


def test_a_daily_run_on_time_on_the_fall_back_night_is_not_late(
    monitor, past_run, settings
):
    """A job at 01:30 New York time, grace 45 minutes. On the night the clocks go back
    (1 November 2026, 01:00-02:00 happens twice) it runs on time at 01:30 EDT. Twenty
    minutes into the repeated hour (01:20 EST), the monitor says *late*: "one was
    expected by 01:30 EDT", a time before the run that it just saw, and it stays late
    (with an alert) until the next day's run. The next cron time is looked up from
    the run's start plus grace, 01:15 EST (fold=1), and cronsim answers 01:30 EDT,
    an hour *before* that start."""
    settings.TIME_ZONE = "America/New_York"
    m = monitor(cron="30 1 * * *", grace=timedelta(minutes=45), created_at=_JANUARY)
    JobRun.objects.all().delete()
    ran = datetime(2026, 11, 1, 5, 30, 2, tzinfo=UTC)  # 01:30:02 EDT
    past_run(ago=timezone.now() - ran)
    expected = health.next_expected(m, ran)
    assert expected > ran, f"next expected {expected} is before the run at {ran}"
    at = datetime(2026, 11, 1, 6, 20, tzinfo=UTC)  # 01:20 EST, second 01:xx
    assessment = health.assess(m, now=at)
    assert assessment.state == MonitorState.HEALTHY, assessment.detail


def test_a_monitor_created_in_the_repeated_hour_is_not_late_at_once(
    monitor, past_run, settings
):
    """Berlin, a job every day at 02:30. A monitor created at 02:10 CET on the night the
    clocks go back (the second 02:10) is *late* at its first check, five minutes later:
    it expects a run at 02:30 CEST, 40 minutes before it was created, though the docs
    say nothing is expected before a monitor's creation."""
    settings.TIME_ZONE = "Europe/Berlin"
    created = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET (second 02:10)
    m = monitor(cron="30 2 * * *", grace=timedelta(minutes=5), created_at=created)
    JobRun.objects.all().delete()
    past_run(ago=timezone.now() - datetime(2026, 10, 24, 0, 30, tzinfo=UTC))
    expected = health.next_expected(m, datetime(2026, 10, 24, 0, 30, tzinfo=UTC))
    assert expected > created, f"next expected {expected} is before {created}"
    at = created + timedelta(minutes=5)
    assessment = health.assess(m, now=at)
    assert assessment.state == MonitorState.HEALTHY, assessment.detail


def test_a_job_every_five_minutes_is_late_ten_minutes_after_its_missed_run(
    monitor, past_run
):
    """A job every 5 minutes ("*/5 * * * *"), grace 10 minutes ("how long after the
    expected time a missing run is still not late"). It last ran at 10:00:01; the
    10:05 run never comes, nor the 10:10 and 10:15 ones. At 10:16 the 10:05 run is
    11 minutes overdue, yet the monitor says healthy and shows 10:15 as the next
    expected run; it turns late only at 10:25, after three missed runs. ``next_expected()``
    looks for the first cron time after *start + grace*, so one run "counts" for every
    cron time within the grace after it (10:05 and 10:10 here), not only for the one
    it started a little early for."""
    m = monitor(cron="*/5 * * * *", grace=timedelta(minutes=10), created_at=_JANUARY)
    JobRun.objects.all().delete()
    ran = datetime(2026, 3, 10, 10, 0, 1, tzinfo=UTC)
    past_run(ago=timezone.now() - ran)
    assert health.next_expected(m, ran) == datetime(2026, 3, 10, 10, 5, tzinfo=UTC)
    at = datetime(2026, 3, 10, 10, 16, tzinfo=UTC)
    assert health.assess(m, now=at).state == MonitorState.LATE


def test_a_run_stuck_after_the_jobs_first_success_is_slow(monitor, past_run):
    """A job has run once, in 1 second; its monitor's limit is 3 × p95. The second run
    has been running for an hour: the monitor says *healthy*. The docs say a p95 limit
    is "the p95 of the other runs, never including the run it judges", but ``_slow()``
    leaves out the run that finished last (``excluding=newest.pk``) also when it judges
    the run running now: here that is the only success, so there is no limit at all
    and a run stuck for ever is never slow."""
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2), took=timedelta(seconds=1))
    m = monitor(max_duration_p95_factor=3)
    stuck = past_run(ago=timedelta(hours=1), status=Status.RUNNING)
    assessment = health.assess(m)
    assert assessment.state == MonitorState.SLOW, assessment
    assert assessment.run_id == stuck.pk


def test_a_slow_sub_second_run_says_how_long_it_took(monitor, past_run):
    """A job whose runs take 0.1 s, watched with a limit of 3 × p95 (0.3 s). A run takes
    0.45 s: the monitor turns slow, and the incident, the admin and the alert say "The
    last run took 0s, longer than 0s." - a sentence that is false on its face and says
    nothing of what happened. ``_seconds()`` rounds both figures to whole seconds."""
    JobRun.objects.all().delete()
    for minutes in range(10, 2, -1):
        past_run(ago=timedelta(minutes=minutes), took=timedelta(milliseconds=100))
    m = monitor(max_duration_p95_factor=3)
    past_run(ago=timedelta(minutes=1), took=timedelta(milliseconds=450))
    assessment = health.assess(m)
    assert assessment.state == MonitorState.SLOW
    assert "took 0s, longer than 0s" not in assessment.detail, assessment.detail


def test_a_slow_run_s_detail_gives_figures_that_show_it_was_over_the_limit(
    monitor, past_run
):
    """A limit of 30 s and a run that took 30.4 s: the detail said "The last run took
    30s, longer than 30s.", figures that contradict the claim (``_seconds()`` rounds to
    whole seconds from 10 s up)."""
    m = monitor(max_duration=timedelta(seconds=30), max_failures=0)
    past_run(ago=timedelta(minutes=2), took=timedelta(seconds=30.4))
    assessment = health.assess(m)
    assert assessment.state == MonitorState.SLOW
    assert assessment.detail != "The last run took 30s, longer than 30s."
    assert assessment.detail == "The last run took 30.4s, longer than 30.0s."
