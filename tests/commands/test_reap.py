"""reap_jobstatus and JobRun.objects.reap(): stale running runs become lost, with a message and a log line."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from django_jobstatus import rollups
from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, JobRunHour, Status
from tests.commands.conftest import manage

pytestmark = pytest.mark.django_db


def ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


@pytest.fixture
def reap(command: Any) -> Any:
    return lambda *args: command("reap_jobstatus", *args)


def status(run: JobRun) -> str:
    run.refresh_from_db()
    return run.status


@pytest.fixture
def runs(make_run: Any) -> dict[str, JobRun]:
    return {
        "silent": make_run("tests.job", heartbeat_at=ago(600), started_at=ago(900)),
        "never beat": make_run("tests.job", heartbeat_at=None, started_at=ago(600)),
        "fresh": make_run("tests.job", heartbeat_at=ago(10), started_at=ago(900)),
        "young": make_run("tests.job", heartbeat_at=None, started_at=ago(10)),
        "queued": make_run("tests.job", status=Status.QUEUED, created_at=ago(9000)),
        "retrying": make_run(
            "tests.job", status=Status.RETRYING, heartbeat_at=ago(9000), started_at=None
        ),
        "finished": make_run(
            "tests.job", status=Status.SUCCEEDED, heartbeat_at=ago(9000)
        ),
    }


def test_default_timeout_reaps_silent_running_runs_only(
    runs: dict[str, JobRun], reap: Any
) -> None:
    out = reap()  # HEARTBEAT_TIMEOUT 300

    assert {name for name, run in runs.items() if status(run) == Status.LOST} == {
        "silent",
        "never beat",
    }
    assert "Marked 2 runs lost; 0 finished before they could be." in out
    silent = runs["silent"]
    assert silent.message.startswith("Lost: no heartbeat since")
    assert silent.finished_at is not None
    lines = list(JobLog.objects.for_run(silent))
    assert [(line.level, line.message) for line in lines] == [(30, silent.message)]
    assert not JobLog.objects.for_run(runs["fresh"]).exists()


def test_timeout_option(runs: dict[str, JobRun], reap: Any) -> None:
    reap("--timeout", "1000")
    assert {name for name, run in runs.items() if status(run) == Status.LOST} == set()


def test_timeout_default_comes_from_settings(
    runs: dict[str, JobRun], reap: Any
) -> None:
    with override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": 700}):
        reap()
    assert {name for name, run in runs.items() if status(run) == Status.LOST} == set()
    with override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": 30}):
        reap()
    assert {name for name, run in runs.items() if status(run) == Status.LOST} == {
        "silent",
        "never beat",
    }


def test_dry_run_changes_nothing(runs: dict[str, JobRun], reap: Any) -> None:
    out = reap("--dry-run")
    assert "Dry run: 2 runs would be marked lost" in out
    assert str(runs["silent"].pk) in out
    assert not JobRun.objects.lost().exists()


def test_verbosity_0_prints_nothing(runs: dict[str, JobRun], reap: Any) -> None:
    assert reap("--verbosity", "0") == ""
    assert JobRun.objects.lost().count() == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "-1"], "0 or more"),
        (["--timeout", "soon"], "not a number"),
        (["--timeout", "inf"], "0 or more"),
        (["--timeout", "1e12"], "at most 1000 years"),
        (["--timeout", "1e308"], "at most 1000 years"),
        (["--database", "nope"], "not a database alias"),
    ],
)
def test_bad_arguments_are_command_errors(
    runs: dict[str, JobRun], args: list[str], message: str, reap: Any
) -> None:
    with pytest.raises(CommandError, match=message):
        reap(*args)
    assert not JobRun.objects.lost().exists()


def test_a_run_that_comes_back_cannot_overwrite_lost(
    runs: dict[str, JobRun], reap: Any
) -> None:
    worker_copy = JobRun.objects.get(
        pk=runs["silent"].pk
    )  # what the worker still holds
    reap()
    with pytest.raises(InvalidTransition):
        worker_copy.mark_succeeded({"late": True})
    with pytest.raises(InvalidTransition):
        worker_copy.mark_failed(RuntimeError("late"))
    assert status(runs["silent"]) == Status.LOST


def test_database_option(runs: dict[str, JobRun], reap: Any) -> None:
    reap("--database", "default")
    assert JobRun.objects.lost().count() == 2


def test_python_api_counts_and_batches(make_run: Any) -> None:
    stale = [make_run("tests.job", heartbeat_at=ago(600)) for _ in range(5)]
    result = JobRun.objects.reap(300, batch_size=2)
    assert (result.reaped, result.finished) == (5, 0)
    assert all(status(run) == Status.LOST for run in stale)
    assert (
        JobRun.objects.reap(timedelta(seconds=300)).reaped == 0
    )  # nothing left to reap


@pytest.mark.parametrize("batch_size", [0, 2**63])
def test_python_api_checks_the_batch_size(make_run: Any, batch_size: int) -> None:
    run = make_run("tests.job", heartbeat_at=ago(600))
    with pytest.raises(ValueError, match="batch_size"):
        JobRun.objects.reap(300, batch_size=batch_size)
    assert status(run) == Status.RUNNING


def test_python_api_dry_run_lists_and_changes_nothing(make_run: Any) -> None:
    stale = make_run("tests.job", heartbeat_at=ago(600), worker="w:1")
    make_run("tests.job", heartbeat_at=ago(1))
    waiting = make_run("tests.waiting", status=Status.QUEUED, queued_at=ago(600))

    result = JobRun.objects.reap(300, queued_timeout=120, dry_run=True)

    assert (result.reaped, result.expired, result.dry_run) == (1, 1, True)
    assert result.stale_runs == [(stale.pk, "tests.job", "w:1")]
    assert result.queued_runs == [(waiting.pk, "tests.waiting")]
    assert (status(stale), status(waiting)) == (Status.RUNNING, Status.QUEUED)


def test_the_queued_timeout_counts_a_later_attempt_s_wait_from_its_retry(
    make_run: Any,
) -> None:
    """A retry whose message the broker lost left its run ``retrying`` for ever: only
    queued runs were ended. A retry queued again was ended at once: its wait was counted
    from ``queued_at``, the first attempt's, as if its new message had been lost."""
    lost_retry = make_run("tests.job", queued_at=ago(7200), started_at=ago(7100))
    lost_retry.mark_failed(RuntimeError("boom"), retry=True)
    JobRun.objects.filter(pk=lost_retry.pk).update(updated_at=ago(3600))
    requeued = make_run("tests.job", queued_at=ago(7200), started_at=ago(7100))
    requeued.mark_failed(RuntimeError("boom"), retry=True)
    requeued.mark_queued()
    recent_retry = make_run("tests.job", queued_at=ago(7200), started_at=ago(7100))
    recent_retry.mark_failed(RuntimeError("boom"), retry=True)

    assert set(JobRun.objects.stale_queued(600)) == {lost_retry}
    result = JobRun.objects.reap(300, queued_timeout=600)

    assert result.expired == 1
    assert status(lost_retry) == Status.KILLED
    assert lost_retry.message.startswith("Killed: attempt 2 waiting since ")
    assert "no worker started it" in lost_retry.message
    assert (status(requeued), status(recent_retry)) == (Status.QUEUED, Status.RETRYING)


def test_the_queued_timeout_counts_a_wait_from_when_the_run_is_due(
    make_run: Any,
) -> None:
    """A job scheduled for later (an ETA, enqueue_in, run_after, a retry's delay) was
    ended killed, "its message was probably lost", an hour after its enqueue, although it
    was due the next day: its task system was told to drop it too."""
    tomorrow = timezone.now() + timedelta(days=1)
    scheduled = make_run(
        "tests.job", status=Status.QUEUED, queued_at=ago(7200), due_at=tomorrow
    )
    retry_later = make_run("tests.job", queued_at=ago(7200), started_at=ago(7100))
    retry_later.mark_failed(RuntimeError("boom"), retry=True, due_at=tomorrow)
    JobRun.objects.filter(pk=retry_later.pk).update(updated_at=ago(3600))
    overdue = make_run(
        "tests.job", status=Status.QUEUED, queued_at=ago(7200), due_at=ago(3600)
    )
    assert set(JobRun.objects.stale_queued(600)) == {overdue}
    assert JobRun.objects.reap(300, queued_timeout=600).expired == 1
    overdue.refresh_from_db()
    assert overdue.status == Status.KILLED
    assert f"queued since {ago(3600).isoformat()[:13]}" in overdue.message
    assert (status(scheduled), status(retry_later)) == (Status.QUEUED, Status.RETRYING)


def test_a_run_ended_for_waiting_too_long_is_recorded_as_asked_to_stop(
    make_run: Any,
) -> None:
    """As a forced kill records the request first: a worker that takes the task later
    refuses it (the integrations read the request), or its job sees it at once."""
    waiting = make_run("tests.job", status=Status.QUEUED, queued_at=ago(7200))
    asked = make_run("tests.job", status=Status.QUEUED, queued_at=ago(7200))
    assert JobRun.objects.filter(pk=asked.pk).request_kill() == 1
    first_request = JobRun.objects.get(pk=asked.pk).kill_requested_at
    assert JobRun.objects.reap(300, queued_timeout=600).expired == 2
    waiting.refresh_from_db()
    asked.refresh_from_db()
    assert (waiting.status, asked.status) == (Status.KILLED, Status.KILLED)
    assert waiting.kill_requested_at is not None
    assert asked.kill_requested_at == first_request  # the first request stays


def test_a_batch_whose_children_all_ended_is_settled_not_lost(
    make_run: Any, reap: Any
) -> None:
    """No worker beats for a batch's parent: once its children have all ended (and its
    refresh was missed), the reaper ends it as they add up, and says so."""
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.a"])
    (child,) = parent.children.all()
    child.mark_running()
    child.mark_failed(RuntimeError("boom"))
    JobRun.objects.filter(pk=parent.pk).update(
        status=Status.RUNNING, heartbeat_at=ago(3600), started_at=ago(3600)
    )
    out = reap("--dry-run")
    assert "Dry run: 0 runs would be marked lost" in out
    assert "Dry run: 1 batch whose children have all ended would be ended" in out
    assert status(parent) == Status.RUNNING
    out = reap()
    assert "Marked 0 runs lost" in out
    assert "Ended 1 batch whose children had all ended, as they add up." in out
    parent.refresh_from_db()
    assert (parent.status, parent.error) == (Status.FAILED, "1 of 1 child run failed.")


def test_a_dead_job_with_a_finished_step_of_its_own_is_lost_not_settled(
    make_run: Any,
) -> None:
    """A worker running a job whose run has a child (a step it tracked as a run of its
    own, ``track("step", parent=job.run)``, or a job it enqueued with ``parent=job.run``)
    died. The reaper did not mark the job lost: it took the run for a batch's parent and
    ended it as its children added up, ``succeeded``, counted as settled. A run a worker
    runs is no batch's parent: silent, it is lost like any run."""
    dead = make_run(
        "tests.job", worker="host:1", started_at=ago(3600), heartbeat_at=ago(3600)
    )
    make_run("tests.step", status=Status.SUCCEEDED, parent=dead)

    dry = JobRun.objects.reap(300, dry_run=True)
    result = JobRun.objects.reap(300)

    assert (dry.reaped, dry.settled, result.reaped, result.settled) == (1, 0, 1, 0)
    assert status(dead) == Status.LOST


def test_a_dead_job_whose_own_child_still_waits_is_lost(make_run: Any) -> None:
    """The same dead job, with a task it enqueued (``parent=job.run``) still queued: the
    reaper left it ``running`` until the task ended, as a batch's parent waits for its
    children, though its worker was gone."""
    dead = make_run(
        "tests.job", worker="host:1", started_at=ago(3600), heartbeat_at=ago(3600)
    )
    make_run("tests.sub", status=Status.QUEUED, parent=dead)

    result = JobRun.objects.reap(300)

    assert (result.reaped, result.settled) == (1, 0)
    assert status(dead) == Status.LOST


def test_a_lost_retry_of_a_job_with_a_finished_step_of_its_own_is_expired_not_settled(
    make_run: Any,
) -> None:
    """The same job, its retry's message lost: the reaper took the waiting run for a
    batch's parent, started it and ended it ``succeeded`` from its first attempt's step,
    a retry that never ran."""
    waiting = make_run("tests.job", status=Status.RETRYING, worker="host:1", attempt=2)
    make_run("tests.step", status=Status.SUCCEEDED, parent=waiting)
    JobRun.objects.update(updated_at=ago(7200))

    result = JobRun.objects.reap(300, queued_timeout=3600)

    assert (result.expired, result.settled) == (1, 0)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.result) == (Status.KILLED, None)
    assert waiting.message.startswith("Killed: attempt 2 waiting since")


def test_a_batch_whose_children_are_due_later_is_not_killed_as_queued_too_long(
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Imports scheduled for tonight (each child due in 3 hours), QUEUED_TIMEOUT one hour:
    the reaper left the children alone but ended their parent ``killed``, "no worker
    started it (its message was probably lost)". No worker starts a parent: it waits for
    its children. When they ran and succeeded, the batch stayed killed for good."""
    from django_jobstatus import track
    from django_jobstatus.batches import start_batch

    due = timezone.now() + timedelta(hours=3)
    parent = start_batch(
        "tests.batch", [{"job_name": "tests.a", "due_at": due} for _ in range(2)]
    )
    JobRun.objects.update(
        created_at=ago(7200), queued_at=ago(7200), updated_at=ago(7200)
    )
    assert list(JobRun.objects.stale_queued(3600)) == []
    assert JobRun.objects.reap(300, queued_timeout=3600).expired == 0
    with django_capture_on_commit_callbacks(execute=True):
        for child in parent.children.all():  # tonight
            with track(child.job_name, run=child):
                pass
    parent.refresh_from_db()
    assert (parent.status, parent.message) == (Status.SUCCEEDED, "")


def test_a_queued_batch_whose_children_all_ended_is_settled_not_expired(
    make_run: Any,
) -> None:
    """Its refresh after the last child was missed: the reaper ends the parent as its
    children add up, not as a run whose message was lost. One whose ``batch()`` block
    never ended (its process died) has no known total: it is killed, and says why."""
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.a"])
    parent.children.get().mark_killed()  # dropped while queued; no refresh
    unclosed = JobRun.objects.enqueue("tests.batch")  # as batch() records it
    make_run("tests.a", status=Status.SUCCEEDED, parent=unclosed)
    JobRun.objects.update(
        created_at=ago(7200), queued_at=ago(7200), updated_at=ago(7200)
    )

    dry = JobRun.objects.reap(300, queued_timeout=3600, dry_run=True)
    assert (dry.expired, dry.settled) == (1, 1)
    assert [pk for pk, _name in dry.queued_runs] == [unclosed.pk]
    result = JobRun.objects.reap(300, queued_timeout=3600)

    assert (result.expired, result.settled) == (1, 1)
    parent.refresh_from_db()
    assert (parent.status, parent.message) == (Status.KILLED, "Killed.")
    assert parent.result == {"children": {Status.KILLED: 1}}
    unclosed.refresh_from_db()
    assert unclosed.status == Status.KILLED
    assert "its batch() block never ended" in unclosed.message
    assert unclosed.result == {"children": {Status.SUCCEEDED: 1}}


def test_narrowed_queryset_reaps_only_its_runs(make_run: Any) -> None:
    mine = make_run("tests.mine", heartbeat_at=ago(600))
    other = make_run("tests.other", heartbeat_at=ago(600))
    JobRun.objects.for_job("tests.mine").reap(300)
    assert (status(mine), status(other)) == (Status.LOST, Status.RUNNING)


def test_a_timeout_live_runs_cannot_meet_is_refused(make_run: Any, reap: Any) -> None:
    """With HEARTBEAT_TIMEOUT 300 the workers beat every 100 s: a run that beat 90 s ago
    lives, and a timeout below two beats (200 s) would mark it lost."""
    live = make_run("tests.job", heartbeat_at=ago(90))
    message = r"at least 200 s, two heartbeat intervals.*every 100 s"
    with pytest.raises(CommandError, match=message):
        reap("--timeout", "60")
    with pytest.raises(ValueError, match=message):
        JobRun.objects.reap(timeout=60)
    with pytest.raises(ValueError, match=message):
        JobRun.objects.stale(timedelta(seconds=199))
    assert status(live) == Status.RUNNING
    assert JobRun.objects.reap(timeout=200).reaped == 0
    with override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": 90}):  # beats every 30 s
        assert JobRun.objects.reap(timeout=60).reaped == 1


def test_a_queued_timeout_of_zero_is_a_usage_error_not_a_kill_of_every_queued_run(
    make_run: Any, reap: Any
) -> None:
    """QUEUED_TIMEOUT must be above 0 (check jobstatus.E003); ``--queued-timeout 0`` was
    taken, and ended killed a run enqueued a moment ago ("no worker started it (its
    message was probably lost)"), revoking it in its task system."""
    run = make_run("tests.job", status=Status.QUEUED)  # enqueued just now

    with pytest.raises(CommandError, match="--queued-timeout"):
        reap("--queued-timeout", "0")
    with pytest.raises(ValueError, match="queued timeout must be above 0"):
        JobRun.objects.reap(queued_timeout=0)
    with pytest.raises(ValueError, match="queued timeout must be above 0"):
        JobRun.objects.reap(queued_timeout=timedelta(0), dry_run=True)
    with pytest.raises(ValueError, match="queued timeout must be above 0"):
        JobRun.objects.stale_queued(0)

    run.refresh_from_db()
    assert (run.status, run.kill_requested_at) == (Status.QUEUED, None), run.message


@pytest.mark.parametrize("timeout", ["1e12", "1e308"])
def test_a_timeout_too_long_is_a_usage_error_from_the_command_line(
    timeout: str,
) -> None:
    done = manage("reap_jobstatus", "--timeout", timeout)
    assert done.returncode == 2, done.stderr
    assert "at most 1000 years" in done.stderr
    assert "Traceback" not in done.stderr


def test_each_reap_rolls_up_the_dashboards_hours_which_its_next_request_only_reads(
    make_run: Any, reap: Any, admin_client: Any
) -> None:
    """A dashboard opened after a quiet week would roll the week up in that request
    (seconds on a busy site): the reaper, run every few minutes, does it instead."""
    for i in range(40):
        finished = ago(3600 * 4 * i + 420)
        make_run(
            f"tests.job{i % 3}",
            status=Status.FAILED if i % 4 == 0 else Status.SUCCEEDED,
            started_at=finished - timedelta(seconds=i + 1),
            finished_at=finished,
        )

    def windows() -> set[tuple[Any, int]]:
        """The dashboard's 24 h and 7 d windows now: (first hour, hours)."""
        now = timezone.now()
        end = rollups.floor(now - rollups.GRACE, rollups.HOUR)
        starts = [
            rollups.floor(now - timedelta(hours=hours), rollups.HOUR)
            for hours in (24, 24 * 7)
        ]
        return {(start, rollups._span(start, end)) for start in starts}

    for _ in range(2):  # once more if an hour closed meanwhile
        expected = windows()
        reap()
        made = set(
            JobRunHour.objects.filter(job_name="", hours__gt=1).values_list(
                "hour", "hours"
            )
        )
        cache.clear()
        with CaptureQueriesContext(connection) as done:
            page = admin_client.get(
                "/admin/django_jobstatus/jobrun/dashboard/?window=7d"
            )
        if windows() == expected:
            break
    assert made == expected
    assert page.status_code == 200
    writes = [q["sql"] for q in done if not q["sql"].lstrip("( ").startswith("SELECT")]
    assert writes == []


def test_a_dry_run_rolls_nothing_up(make_run: Any, reap: Any) -> None:
    make_run("tests.job", status=Status.SUCCEEDED, finished_at=ago(7200))
    reap("--dry-run")
    assert not JobRunHour.objects.exists()


def test_the_reaper_rolls_up_the_dashboards_windows() -> None:
    from django_jobstatus.admin.dashboard import BAR
    from django_jobstatus.admin.windows import DASHBOARD_WINDOWS, WINDOWS

    assert set(rollups.WINDOWS) == {
        WINDOWS[key].delta for key in DASHBOARD_WINDOWS if key not in BAR
    }


@pytest.mark.django_db(
    transaction=True
)  # each child's end refreshes its parent on commit
def test_a_live_batch_block_older_than_the_queued_timeout_is_not_killed() -> None:
    """A block enqueuing for two hours (QUEUED_TIMEOUT one hour), its quick workers ending
    each child a moment after its enqueue: a reap between two enqueues found no child
    active and killed the batch ("its batch() block never ended"); it still read killed
    once the block ended with every child succeeded. The parent waits from the last time
    a child moved."""
    from django_jobstatus import track
    from django_jobstatus.batches import batch
    from django_jobstatus.contrib._execution import record_queued

    with batch("imports.all") as parent:
        JobRun.objects.filter(pk=parent.pk).update(
            created_at=ago(7200), queued_at=ago(7200)
        )
        first = JobRun.objects.get(pk=record_queued("rq", "job-1", "imports.one"))
        with track(first.job_name, run=first):
            pass
        reaped = JobRun.objects.reap(300, queued_timeout=3600)
        second = JobRun.objects.get(pk=record_queued("rq", "job-2", "imports.one"))
        with track(second.job_name, run=second):
            pass
    parent.refresh_from_db()
    assert reaped.expired == 0, parent.message
    assert (parent.status, parent.result) == (
        Status.SUCCEEDED,
        {"children": {Status.SUCCEEDED: 2}},
    )


def test_a_batch_whose_block_died_waits_a_timeout_after_its_last_child(
    make_run: Any,
) -> None:
    """The machine running a batch() block and its one child died: the reap marks the
    child lost, and the dry run says the same of the parent as the reap does (it said
    nothing of the parent, which the reap then killed). The parent is killed one
    timeout after its child last moved."""
    parent = JobRun.objects.enqueue("tests.batch")  # as batch() records it
    child = make_run(
        "tests.a", parent=parent, heartbeat_at=ago(7200), started_at=ago(7200)
    )
    JobRun.objects.filter(pk=parent.pk).update(
        created_at=ago(7200), queued_at=ago(7200)
    )

    dry = JobRun.objects.reap(300, queued_timeout=3600, dry_run=True)
    done = JobRun.objects.reap(300, queued_timeout=3600)
    assert (dry.reaped, dry.expired, dry.settled) == (1, 0, 0)
    assert (done.reaped, done.expired, done.settled) == (1, 0, 0)
    assert status(child) == Status.LOST
    assert status(parent) == Status.QUEUED

    JobRun.objects.filter(pk=child.pk).update(updated_at=ago(3700))
    assert JobRun.objects.reap(300, queued_timeout=3600).expired == 1
    parent.refresh_from_db()
    assert parent.status == Status.KILLED
    assert "its batch() block never ended" in parent.message
