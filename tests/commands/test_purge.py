"""purge_jobstatus and JobRun.objects.purge(): retention, keep-last, narrowing, batches, dry run."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, load_command_class
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from django_jobstatus.models import JobLog, JobRun, Status
from tests.commands.conftest import manage

pytestmark = pytest.mark.django_db

NOT_UTF8 = b"nightly-\xff".decode("utf-8", "surrogateescape")


def ago(days: float) -> Any:
    return timezone.now() - timedelta(days=days)


@pytest.fixture
def purge(command: Any) -> Any:
    return lambda *args: command("purge_jobstatus", *args)


@pytest.fixture
def aged(make_run: Any) -> Any:
    """A run of ``job`` created ``days`` ago, in ``status``, with ``logs`` log lines."""

    def make(
        job: str = "tests.job",
        days: float = 100,
        status: str = Status.SUCCEEDED,
        logs: int = 0,
        **fields: Any,
    ) -> JobRun:
        run = make_run(job, status=status, created_at=ago(days), **fields)
        for n in range(logs):
            run.log(20, "line %d", n)
        return run

    return make


def alive(*runs: JobRun) -> list[bool]:
    return [JobRun.objects.filter(pk=run.pk).exists() for run in runs]


def test_defaults_keep_young_runs_failed_runs_active_runs_and_the_newest(
    aged: Any, purge: Any
) -> None:
    newest_old = aged("tests.old", days=40)
    older = aged("tests.old", days=50)
    young = aged("tests.job", days=10)
    old = aged("tests.job", days=31)
    failed_60 = aged("tests.job", days=60, status=Status.FAILED)
    failed_100 = aged("tests.job", days=100, status=Status.FAILED)
    running = aged("tests.job", days=400, status=Status.RUNNING)
    queued = aged("tests.job", days=400, status=Status.QUEUED)
    retrying = aged("tests.job", days=400, status=Status.RETRYING)

    out = purge()

    # RETENTION_DAYS 30, RETENTION {"failed": 90}, KEEP_LAST 1.
    assert alive(newest_old, older, young, old, failed_60, failed_100) == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert alive(running, queued, retrying) == [True, True, True]
    assert "Deleted 3 runs and 0 log lines" in out


def test_days_applies_to_every_status(aged: Any, purge: Any) -> None:
    aged("tests.job", days=1)  # the newest, kept
    failed = aged("tests.job", days=20, status=Status.FAILED)
    succeeded = aged("tests.job", days=20)
    lost = aged("tests.job", days=8, status=Status.LOST)
    young = aged("tests.job", days=5, status=Status.KILLED)

    purge("--days", "7")

    assert alive(failed, succeeded, lost, young) == [False, False, False, True]


@override_settings(
    JOBSTATUS={
        "RETENTION_DAYS": 30,
        "RETENTION": {"succeeded": 7, "failed": 90},
        "KEEP_LAST": 0,
    }
)
def test_per_status_retention(purge: Any) -> None:
    def at(days: float, status: str) -> JobRun:
        return JobRun.objects.create(
            job_name="tests.job", status=status, created_at=ago(days)
        )

    runs = {
        "succeeded 8": at(8, Status.SUCCEEDED),
        "succeeded 6": at(6, Status.SUCCEEDED),
        "failed 89": at(89, Status.FAILED),
        "failed 91": at(91, Status.FAILED),
        "killed 29": at(29, Status.KILLED),
        "killed 31": at(31, Status.KILLED),
    }

    purge()

    assert {name for name, run in runs.items() if alive(run)[0]} == {
        "succeeded 6",
        "failed 89",
        "killed 29",
    }


def test_settings_give_the_defaults(aged: Any, purge: Any) -> None:
    runs = [aged("tests.job", days=3 + n) for n in range(4)]
    with override_settings(
        JOBSTATUS={"RETENTION_DAYS": 2, "RETENTION": {}, "KEEP_LAST": 2}
    ):
        purge()
    assert alive(*runs) == [True, True, False, False]


def test_keep_last_keeps_the_newest_runs_of_every_job_whatever_their_age(
    aged: Any, purge: Any
) -> None:
    a = [aged("tests.a", days=100 + n) for n in range(5)]
    b = [aged("tests.b", days=200 + n) for n in range(2)]

    purge("--keep-last", "3")

    assert alive(*a) == [True, True, True, False, False]
    assert alive(*b) == [True, True]


def test_keep_last_counts_every_run_of_the_job_even_outside_the_narrowing(
    aged: Any, purge: Any
) -> None:
    newest = aged("tests.job", days=50)
    failed = aged("tests.job", days=200, status=Status.FAILED)

    purge("--status", "failed", "--days", "30")

    assert alive(newest, failed) == [True, False]


def test_keep_last_is_exact_when_runs_share_a_timestamp(
    make_run: Any, purge: Any
) -> None:
    created = ago(100)
    runs = [
        make_run("tests.job", status=Status.SUCCEEDED, created_at=created)
        for _ in range(5)
    ]

    purge("--keep-last", "2")

    kept = set(JobRun.objects.values_list("pk", flat=True))
    assert kept == {run.pk for run in sorted(runs, key=lambda run: run.pk)[-2:]}


def test_keep_last_zero_deletes_everything_old(aged: Any, purge: Any) -> None:
    runs = [aged("tests.job", days=40 + n) for n in range(3)]
    purge("--keep-last", "0")
    assert alive(*runs) == [False, False, False]


def test_job_name_narrows_and_repeats(aged: Any, purge: Any) -> None:
    a, b, c = (aged(f"tests.{name}", days=100) for name in "abc")
    for name in "abc":
        aged(f"tests.{name}", days=1)  # the newest of each

    purge("--job-name", "tests.a", "--job-name", "tests.c")

    assert alive(a, b, c) == [False, True, False]


def test_status_narrows_and_repeats(aged: Any, purge: Any) -> None:
    aged("tests.job", days=1)
    runs = {
        status: aged("tests.job", days=400, status=status)
        for status in sorted(Status.TERMINAL)
    }

    purge("--status", "killed", "--status", "lost")

    assert {status for status, run in runs.items() if alive(run)[0]} == {
        Status.SUCCEEDED,
        Status.FAILED,
    }


def test_active_runs_need_include_active(aged: Any, purge: Any) -> None:
    aged("tests.job", days=1)
    running = aged("tests.job", days=400, status=Status.RUNNING)
    queued = aged("tests.job", days=400, status=Status.QUEUED)
    finished = aged("tests.job", days=400)

    with pytest.raises(CommandError, match="running runs are not finished"):
        purge("--status", "running")
    assert alive(running, queued, finished) == [True, True, True]

    purge("--status", "running", "--include-active")
    assert alive(running, queued, finished) == [False, True, True]

    purge("--include-active")
    assert alive(queued, finished) == [False, False]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "-1"], "negative"),
        (["--days", "soon"], "not a whole number"),
        (["--keep-last", "-2"], "negative"),
        (["--keep-last", str(2**63)], "too big: at most 9223372036854775807"),
        (["--keep-last", str(2**63), "--dry-run"], "too big"),
        (["--batch-size", str(2**63)], "too big"),
        (["--batch-size", "0"], "not 1 or more"),
        (["--jobs", "0"], "not 1 or more"),
        (["--jobs", "17"], "jobs must be at most 16, not 17"),
        (["--status", "done"], "not a status"),
        (["--status", "queued"], "not finished"),
        (["--database", "nope"], "not a database alias"),
        (["--days", "9999999"], "at most 1000 years"),
        (["--days", "99999999999999999999"], "at most 1000 years"),
        # PostgreSQL refused it with a DataError; SQLite matched nothing, silently.
        (["--job-name", "tests.job\x00"], "not a job name"),
        (["--job-name", " "], "not a job name"),
        # What Python puts in sys.argv for a byte that is not UTF-8 (0xff from a Latin-1
        # shell): a lone surrogate. The error was the codec's, naming neither the option
        # nor the problem.
        (["--job-name", NOT_UTF8], r"--job-name: 'nightly-\\udcff' is not valid UTF-8"),
    ],
)
def test_bad_arguments_are_command_errors(
    aged: Any, args: list[str], message: str, purge: Any
) -> None:
    run = aged("tests.job", days=400)
    aged("tests.job", days=1)
    with pytest.raises(CommandError, match=message):
        purge(*args)
    assert alive(run) == [True]


def test_logs_go_with_their_runs_without_being_loaded(aged: Any) -> None:
    aged("tests.job", days=1, logs=2)
    doomed = [aged("tests.job", days=100 + n, logs=3) for n in range(4)]
    kept_logs = set(JobLog.objects.exclude(run__in=doomed).values_list("pk", flat=True))

    with CaptureQueriesContext(connection) as queries:
        result = JobRun.objects.purge(batch_size=3)

    assert (result.runs, result.logs, result.batches) == (4, 12, 2)
    assert set(JobLog.objects.values_list("pk", flat=True)) == kept_logs
    assert not JobLog.objects.exclude(
        run_id__in=JobRun.objects.values("pk")
    ).exists()  # no orphan
    # Log lines are counted per run, never read: no query selects their message.
    message = f'"{JobLog._meta.db_table}"."message"'
    assert [q["sql"] for q in queries if message in q["sql"]] == []
    assert any("DELETE FROM" in q["sql"] for q in queries)


@pytest.mark.postgres
def test_postgresql_deletes_a_batch_of_runs_and_their_lines_in_one_statement(
    aged: Any,
) -> None:
    doomed = [aged("tests.job", days=100 + n, logs=3) for n in range(5)]
    child = aged("tests.child", days=1)
    child.parent = doomed[0]
    child.save(update_fields=["parent"])

    with CaptureQueriesContext(connection) as queries:
        result = JobRun.objects.purge(batch_size=10, keep_last=0)

    deletes = [q["sql"] for q in queries if "DELETE FROM" in q["sql"]]
    assert len(deletes) == 1  # runs and lines, one statement
    assert (result.runs, result.logs, result.batches) == (5, 15, 1)
    child.refresh_from_db()
    assert child.parent_id is None


@pytest.mark.postgres
def test_postgresql_deletes_the_lines_and_children_links_of_a_deleted_run() -> None:
    # Migration 0008: whoever deletes a run in SQL, the database takes its lines with it.
    parent = JobRun.objects.start("tests.parent")
    child = JobRun.objects.start("tests.child", parent=parent)
    parent.log(20, "one")
    parent.log(20, "two")
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {JobRun._meta.db_table} WHERE id = %s",  # noqa: S608
            [parent.pk],
        )
    assert not JobLog.objects.filter(run_id=parent.pk).exists()
    child.refresh_from_db()
    assert child.parent_id is None


@pytest.mark.postgres
def test_postgresql_purge_without_the_database_cascades_deletes_the_lines_itself(
    aged: Any,
) -> None:
    # A schema whose foreign keys lost their ON DELETE actions (0008 reversed, or a later
    # migration recreating them): the purge notices and deletes the lines and detaches.
    from importlib import import_module

    from django.apps import apps

    cascades = import_module("django_jobstatus.migrations.0008_database_cascades")
    aged("tests.job", days=1)
    doomed = [aged("tests.job", days=100 + n, logs=2) for n in range(3)]
    child = aged("tests.child", days=1, parent=doomed[0])
    with connection.cursor() as cursor:
        # No pending foreign key checks, or ALTER TABLE refuses to run.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with connection.schema_editor() as editor:
        cascades.backwards(apps, editor)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT confdeltype FROM pg_constraint WHERE confrelid = %s::regclass",
            [JobRun._meta.db_table],
        )
        assert {row[0] for row in cursor.fetchall()} == {"a"}  # NO ACTION
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")  # as they are in a transaction

    result = JobRun.objects.purge(batch_size=2)

    assert (result.runs, result.logs) == (3, 6)
    assert alive(*doomed) == [False, False, False]
    assert not JobLog.objects.filter(run__in=doomed).exists()
    child.refresh_from_db()
    assert child.parent_id is None
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred checks pass


def _pages(queries: CaptureQueriesContext) -> list[str]:
    """The statements that read (and lock) a batch's runs, one a batch."""
    return [q["sql"] for q in queries if "SKIP LOCKED" in q["sql"]]


@pytest.mark.postgres
def test_each_batch_starts_its_index_scan_where_the_last_one_ended(
    aged: Any,
) -> None:
    # The keyset is an index condition (created_at >= the last one), not a filter on a
    # scan from the oldest run, which would walk past every run deleted so far.
    for n in range(6):
        aged("tests.job", days=100 + n)
    with CaptureQueriesContext(connection) as queries:
        result = JobRun.objects.purge(batch_size=2, keep_last=0)
    pages = _pages(queries)
    assert result.batches == 3
    assert len(pages) == 4  # the last finds nothing
    column = f'"{JobRun._meta.db_table}"."created_at"'
    assert all(f"{column} >= " in sql for sql in pages[1:])


@pytest.mark.postgres
def test_the_keyset_reaches_the_planner_as_a_subquery_not_a_constant(
    aged: Any,
) -> None:
    # A constant below the lowest bound of created_at's statistics (where the keyset is
    # after an autoanalyze mid-purge) makes PostgreSQL's planner read the index's actual
    # lowest entry, walking past every entry the earlier batches deleted: tens of ms of
    # planning a batch. A one-row subquery is a parameter it does not estimate.
    for n in range(4):
        aged("tests.job", days=100 + n)
    with CaptureQueriesContext(connection) as queries:
        JobRun.objects.purge(batch_size=2, keep_last=0)
    pages = _pages(queries)
    column = f'"{JobRun._meta.db_table}"."created_at"'
    assert len(pages) == 3
    for sql in pages[1:]:
        assert re.search(rf"{re.escape(column)} >= \(+SELECT ", sql)
        assert re.search(rf"{re.escape(column)} > \(+SELECT ", sql)
        assert not re.search(rf"{re.escape(column)} >=? '", sql)  # no constant


@pytest.mark.postgres
def test_a_batch_statement_does_not_grow_with_the_number_of_jobs(aged: Any) -> None:
    """The runs each job keeps go to a batch as one array: with a placeholder each, a purge
    of one job on a table of thousands of job names sent thousands with every batch."""
    for n in range(300):
        aged(f"tests.job{n:03d}", days=1)
    for n in range(3):
        aged("tests.job000", days=100 + n)
    placeholders = []

    def count(execute, sql, params, *args):
        if "DELETE FROM" in sql or "SKIP LOCKED" in sql:
            placeholders.append(len(params))
        return execute(sql, params, *args)

    with connection.execute_wrapper(count):
        result = JobRun.objects.for_job("tests.job000").purge(keep_last=1)
    assert result.runs == 3
    # 300 runs kept (the newest of each job): one placeholder each before.
    assert placeholders
    assert max(placeholders) < 50, placeholders


def test_deleting_a_parent_keeps_its_children(aged: Any) -> None:
    aged("tests.batch", days=1)
    parent = aged("tests.batch", days=100)
    child = aged("tests.child", days=1, parent=parent)
    old_child = aged("tests.child", days=100, parent=parent)

    result = JobRun.objects.purge()

    assert alive(parent, child, old_child) == [False, True, False]
    child.refresh_from_db()
    assert child.parent is None
    assert result.runs == 2


def test_dry_run_deletes_nothing_and_reports_what_the_real_run_deletes(
    aged: Any, purge: Any
) -> None:
    aged("tests.a", days=1)
    aged("tests.b", days=1)
    for n in range(3):
        aged("tests.a", days=100 + n, logs=n)
    aged("tests.a", days=100, status=Status.KILLED, logs=2)
    aged("tests.b", days=100, status=Status.LOST)
    aged("tests.b", days=100, status=Status.RUNNING, logs=1)
    before = (JobRun.objects.count(), JobLog.objects.count())

    dry = JobRun.objects.purge(dry_run=True)
    out = purge("--dry-run")

    assert (JobRun.objects.count(), JobLog.objects.count()) == before
    assert dry.rows == [
        {"job_name": "tests.a", "status": "killed", "runs": 1, "logs": 2},
        {"job_name": "tests.a", "status": "succeeded", "runs": 3, "logs": 3},
        {"job_name": "tests.b", "status": "lost", "runs": 1, "logs": 0},
    ]
    assert "tests.a succeeded: 3 runs, 3 log lines" in out
    assert "Dry run: 5 runs and 5 log lines would be deleted" in out

    real = JobRun.objects.purge(batch_size=2)

    assert real.rows == dry.rows
    assert (real.runs, real.logs) == (dry.runs, dry.logs) == (5, 5)
    assert (JobRun.objects.count(), JobLog.objects.count()) == (
        before[0] - 5,
        before[1] - 5,
    )


def test_batches_and_progress_lines(aged: Any) -> None:
    aged("tests.job", days=1)
    for n in range(5):
        aged("tests.job", days=100 + n, logs=1)
    seen: list[tuple[int, int]] = []

    result = JobRun.objects.purge(
        batch_size=2, progress=lambda r: seen.append((r.runs, r.logs))
    )

    assert seen == [(2, 2), (4, 4), (5, 5)]
    assert result.batches == 3
    assert 0 < result.longest_batch <= result.elapsed


def test_command_prints_progress_and_a_summary(aged: Any, purge: Any) -> None:
    aged("tests.job", days=1)
    for n in range(3):
        aged("tests.job", days=100 + n)

    out = purge("--batch-size", "1", "--verbosity", "2")

    assert out.count("runs/s") == 4  # three progress lines and the summary
    assert "1 run, 0 log lines deleted" in out
    assert "Deleted 3 runs and 0 log lines in 3 batches" in out


@pytest.mark.parametrize("args", [["--verbosity", "0"], ["-v", "0", "--dry-run"]])
def test_verbosity_0_prints_nothing(aged: Any, args: list[str], purge: Any) -> None:
    aged("tests.job", days=1)
    run = aged("tests.job", days=100)
    assert purge(*args) == ""
    assert alive(run) == ["--dry-run" in args]


def test_queries_do_not_grow_with_the_runs(
    aged: Any, django_assert_max_num_queries: Any
) -> None:
    aged("tests.job", days=1)
    for n in range(60):
        aged("tests.job", days=100 + n, logs=1)
    with django_assert_max_num_queries(12):
        result = JobRun.objects.purge()
    assert result.runs == 60


def test_python_api_checks_its_arguments(aged: Any) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        JobRun.objects.purge(keep_last=-1)
    with pytest.raises(ValueError, match="keep_last .* to 9223372036854775807"):
        JobRun.objects.purge(keep_last=2**63)
    with pytest.raises(ValueError, match="batch_size"):
        JobRun.objects.purge(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        JobRun.objects.purge(batch_size=2**63)
    with pytest.raises(ValueError, match="Unknown status in retention"):
        JobRun.objects.purge(retention={"done": 3})
    with pytest.raises(ValueError, match="days"):
        JobRun.objects.purge(days=-1)
    with pytest.raises(TypeError, match="sliced"):
        JobRun.objects.recent(5).purge()
    with pytest.raises(ValueError, match="jobs must be a whole number from 1"):
        JobRun.objects.purge(jobs=0)
    with pytest.raises(ValueError, match="jobs must be a whole number from 1"):
        JobRun.objects.purge(jobs=True)
    with pytest.raises(ValueError, match="jobs must be at most 16, not 17"):
        JobRun.objects.purge(jobs=17)
    # An OverflowError (infinity), a DataError on PostgreSQL (past lock_timeout's range).
    for seconds in (float("inf"), float("nan"), 1e7, 0):
        with pytest.raises(ValueError, match="batch_seconds must be a number above 0"):
            JobRun.objects.purge(batch_seconds=seconds)


def test_more_than_one_job_is_refused_where_it_cannot_run(
    aged: Any, purge: Any
) -> None:
    """SQLite writes one transaction at a time; inside a transaction (as every test here
    runs) the connections of a parallel purge would not see it, nor be undone with it."""
    run = aged("tests.job", days=400, logs=2)
    aged("tests.job", days=1)
    message = (
        "jobs above 1 needs PostgreSQL \\(sqlite"
        if connection.vendor == "sqlite"
        else "outside this transaction"
    )
    with pytest.raises(ValueError, match=message):
        JobRun.objects.purge(jobs=2)
    with pytest.raises(CommandError, match=message):
        purge("--jobs", "2")
    assert alive(run) == [True]
    assert JobLog.objects.filter(run=run).count() == 2
    # Counting needs no connection of its own.
    assert JobRun.objects.purge(jobs=2, dry_run=True).runs == 1


def test_python_api_takes_a_timedelta_and_a_narrowed_queryset(aged: Any) -> None:
    aged("tests.job", days=0)
    mine = aged("tests.job", days=2, subject="library.Book:1")
    other = aged("tests.job", days=2, subject="library.Book:2")

    result = JobRun.objects.filter(subject="library.Book:1").purge(
        days=timedelta(days=1)
    )

    assert alive(mine, other) == [False, True]
    assert result.rows == [
        {"job_name": "tests.job", "status": "succeeded", "runs": 1, "logs": 0}
    ]


@pytest.mark.parametrize("name", ["purge_jobstatus", "reap_jobstatus"])
def test_help_renders_with_defaults(name: str) -> None:
    text = (
        load_command_class("django_jobstatus", name)
        .create_parser("manage.py", name)
        .format_help()
    )
    assert "(default: False)" in text  # --dry-run
    assert "--database" in text
    assert "--quiet" not in text  # -v 0 says it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "-1"], "negative"),
        (["--status", "queued"], "not finished"),
        (["--days", "9999999"], "at most 1000 years"),
    ],
)
def test_bad_arguments_exit_non_zero_from_the_command_line(
    args: list[str], message: str
) -> None:
    done = manage("purge_jobstatus", *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if args[0] == "--days":  # argparse's usage error
        assert done.returncode == 2


def test_now_fixes_the_time_retention_counts_back_from(aged: Any) -> None:
    aged("tests.job", days=0)
    older = aged("tests.job", days=7)
    newer = aged("tests.job", days=5)
    then = timezone.now() - timedelta(days=4)

    dry = JobRun.objects.purge(days=2, now=then, dry_run=True)
    real = JobRun.objects.purge(days=2, now=then)

    assert alive(older, newer) == [False, True]
    assert (
        real.rows
        == dry.rows
        == [{"job_name": "tests.job", "status": "succeeded", "runs": 1, "logs": 0}]
    )


@pytest.mark.django_db(transaction=True)
def test_each_batch_is_its_own_transaction(aged: Any) -> None:
    aged("tests.job", days=1)
    for n in range(5):
        aged("tests.job", days=100 + n, logs=2)

    def stop(result: Any) -> None:
        raise RuntimeError("stopped after the first batch")

    with pytest.raises(RuntimeError):
        JobRun.objects.purge(batch_size=2, progress=stop)

    # The first batch was committed before the error; the rest is untouched.
    assert JobRun.objects.count() == 4
    assert JobLog.objects.count() == 6


def test_delete_receivers_of_runs_still_run(aged: Any) -> None:
    from django.db.models.signals import post_delete

    aged("tests.job", days=1)
    doomed = [aged("tests.job", days=100 + n, logs=2) for n in range(3)]
    child = aged("tests.child", days=1, parent=doomed[0])
    seen: list[Any] = []

    def receiver(sender: Any, instance: JobRun, **kwargs: Any) -> None:
        seen.append(instance.pk)

    post_delete.connect(receiver, sender=JobRun, dispatch_uid="tests.purge.receiver")
    try:
        result = JobRun.objects.purge(batch_size=2)
    finally:
        post_delete.disconnect(dispatch_uid="tests.purge.receiver", sender=JobRun)

    assert sorted(seen) == sorted(run.pk for run in doomed)
    assert (result.runs, result.logs) == (3, 6)
    child.refresh_from_db()
    assert child.parent is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # the lock is held by another connection
def test_a_locked_run_is_stepped_over_when_a_delete_receiver_is_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a delete receiver the batches delete through the ORM; a run alone past its
    lock timeout is stepped over as on the set-based path. The step read the kept runs'
    array, which only the set-based path builds: the nightly purge died with
    AttributeError."""
    from django.db.models.signals import post_delete

    from tests.commands.test_concurrency import (
        _in_thread,
        _old_run,
        _orphans,
        _other_connection,
    )

    blocked = _old_run("tests.blocked", lines=2)
    JobRun.objects.filter(pk=blocked.pk).update(created_at=ago(200))
    others = [_old_run("tests.other", lines=1) for _ in range(5)]
    JobRun.objects.create(job_name="tests.other", status="succeeded")  # KEEP_LAST keeps
    JobRun.objects.create(job_name="tests.blocked", status="succeeded")

    def receiver(sender: Any, instance: JobRun, **kwargs: Any) -> None:
        pass

    results: list[Any] = []
    errors: list[BaseException] = []
    post_delete.connect(receiver, sender=JobRun, dispatch_uid="tests.purge.locked")
    try:
        with _other_connection() as other:
            other.execute(
                f"SELECT id FROM {JobLog._meta.db_table} WHERE run_id = %s FOR UPDATE",  # noqa: S608
                [blocked.pk],
            )
            thread = _in_thread(
                lambda: results.append(
                    JobRun.objects.purge(days=30, batch_seconds=0.05)
                ),
                threading.Barrier(1),
                errors,
            )
            thread.join(timeout=30)
            finished_under_the_lock = not thread.is_alive()
            other.rollback()
            thread.join(timeout=30)
    finally:
        post_delete.disconnect(dispatch_uid="tests.purge.locked", sender=JobRun)

    assert finished_under_the_lock
    assert not errors, errors
    assert (results[0].runs, results[0].logs) == (5, 5)
    assert not JobRun.objects.filter(pk__in=[run.pk for run in others]).exists()
    assert JobLog.objects.filter(run=blocked).count() == 2
    assert f"Purge skipped run {blocked.pk}" in caplog.text
    assert _orphans() == 0


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_a_batch_s_finished_children_stay_while_it_runs(aged: Any, purge: Any) -> None:
    """A batch's status adds its children's up: the nightly purge took a finished child
    of a batch still running (picked by its own status and age), and the batch with a
    killed child then ended succeeded. Once the batch ends, they go with it."""
    from django_jobstatus import JobKilled, track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    JobRun.objects.filter(parent=parent).update(created_at=ago(40))
    JobRun.objects.filter(pk=parent.pk).update(created_at=ago(40))
    with track("tests.child", run=first):
        raise JobKilled("stopped by an operator")
    aged("tests.child", days=1)  # what KEEP_LAST keeps
    aged("tests.batch", days=1)

    purge()
    assert alive(first) == [True]
    with track("tests.child", run=JobRun.objects.get(pk=second.pk)):
        pass
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current) == (Status.KILLED, 2)
    purge()
    assert alive(parent, first, second) == [False, False, False]


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_a_failed_batch_keeps_its_children_while_one_still_runs(purge: Any) -> None:
    """A batch's parent ends failed as soon as one child fails, and its figures follow
    the others to their end. Its succeeded child (30 days) went while a third still ran,
    the parent and the failed child staying (90 days): once the third ended, the parent
    counted 2 children, not 3."""
    from django_jobstatus import track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child", "tests.child"])
    first, second, third = parent.children.order_by("pk")
    with pytest.raises(RuntimeError), track("tests.child", run=first):
        raise RuntimeError("boom")
    with track("tests.child", run=JobRun.objects.get(pk=second.pk)):
        pass
    parent.refresh_from_db()
    assert (parent.status, parent.progress_current) == (Status.FAILED, 2)
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk, third.pk]).update(
        created_at=ago(40)
    )

    purge("--keep-last", "0")
    assert alive(parent, first, second) == [True, True, True]
    with track("tests.child", run=JobRun.objects.get(pk=third.pk)):
        pass
    parent.refresh_from_db()
    assert (parent.progress_current, parent.progress_total) == (3, 3)
    assert parent.result == {"children": {"failed": 1, "succeeded": 2}}
    purge("--keep-last", "0")
    assert alive(parent, first, second, third) == [True, True, False, False]


def test_a_job_s_own_run_with_a_child_still_queued_is_no_batch_and_goes(
    aged: Any, purge: Any
) -> None:
    """A job's own run (a worker ran it) that enqueued a sub-task with ``parent=job.run``
    is no batch: its figures never follow its children (``BATCH_PARENT``). With that
    sub-task never run (queued for good), the purge kept the run and its finished
    children for ever."""
    parent = aged("tests.nightly", worker="host:123")
    done = aged("tests.step", parent=parent)
    aged("tests.step", status=Status.QUEUED, parent=parent)
    purge("--keep-last", "0")
    assert alive(parent, done) == [False, False]


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_naming_an_active_status_keeps_the_children_of_a_batch_not_purged(
    purge: Any,
) -> None:
    """``--include-active --status killed --status retrying`` (old stuck retries, and
    killed runs) took the killed child of a running batch, whose parent is not purged:
    the batch then ended succeeded. A batch goes whole only with its parent."""
    from django_jobstatus import JobKilled, track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    with track("tests.child", run=first):
        raise JobKilled("stopped by an operator")
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk]).update(
        created_at=ago(40)
    )
    active = ["--include-active", "--keep-last", "0"]

    purge(*active, "--status", "killed", "--status", "retrying")
    assert alive(first) == [True]
    with track("tests.child", run=JobRun.objects.get(pk=second.pk)):
        pass
    assert not JobRun.objects.filter(pk=parent.pk, status=Status.SUCCEEDED).exists()

    # With its parent, the batch goes whole.
    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    with track("tests.child", run=first):
        raise JobKilled("stopped by an operator")
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk]).update(
        created_at=ago(40)
    )
    purge(*active, "--status", "killed", "--status", "running", "--status", "queued")
    assert alive(parent, first, second) == [False, False, False]


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_include_active_keeps_the_children_of_a_batch_whose_parent_keep_last_keeps(
    aged: Any, purge: Any
) -> None:
    """``--include-active --days 30`` took both children of an old running batch whose
    parent KEEP_LAST kept (its job's newest run): the parent stayed running, with no
    child left to end it, for ever. A batch goes whole only with its parent; the dry run
    counts as much."""
    from django_jobstatus import JobKilled, track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    with track("tests.child", run=first):
        raise JobKilled("stopped by an operator")
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk]).update(
        created_at=ago(40)
    )
    aged("tests.child", days=1)  # what KEEP_LAST keeps of the children's job
    parent.refresh_from_db()
    assert parent.status == Status.RUNNING  # a killed child, a queued one

    dry = JobRun.objects.purge(days=30, include_active=True, dry_run=True)
    done = JobRun.objects.purge(days=30, include_active=True)  # KEEP_LAST 1
    assert alive(parent, first, second) == [True, True, True]
    assert (dry.runs, done.runs) == (0, 0)

    purge("--include-active", "--days", "30", "--keep-last", "0")  # the parent too
    assert alive(parent, first, second) == [False, False, False]


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
def test_include_active_keeps_a_kept_failed_batch_s_children_while_one_still_runs(
    aged: Any,
) -> None:
    """A batch's parent that failed early follows its children to their end: kept by
    KEEP_LAST, it keeps them too, while one still runs, the active ones included."""
    from django_jobstatus import track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    with pytest.raises(RuntimeError), track("tests.child", run=first):
        raise RuntimeError("boom")
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk]).update(
        created_at=ago(40)
    )
    aged("tests.child", days=1)
    parent.refresh_from_db()
    assert parent.status == Status.FAILED  # a failed child, a queued one

    dry = JobRun.objects.purge(days=30, include_active=True, dry_run=True)
    done = JobRun.objects.purge(days=30, include_active=True)
    assert alive(parent, first, second) == [True, True, True]
    assert (dry.runs, done.runs) == (0, 0)


@pytest.mark.django_db(transaction=True)  # the parent follows its children on commit
@pytest.mark.parametrize(
    "jobs", [[], pytest.param(["--jobs", "2"], marks=pytest.mark.postgres)]
)
def test_a_purge_narrowed_to_the_children_s_job_keeps_them_while_their_parent_stays(
    purge: Any, jobs: list[str]
) -> None:
    """``--job-name tests.child --include-active`` (or a queryset narrowed so) took both
    children of an old running batch whose parent, of another job, it does not purge:
    the parent stayed running, with no child left to end it, for ever. The parent goes
    only when it is one of the runs purged (old, not kept, and in the narrowing); the dry
    run counts as much."""
    from django_jobstatus import JobKilled, track
    from django_jobstatus.batches import start_batch

    parent = start_batch("tests.batch", ["tests.child", "tests.child"])
    first, second = parent.children.order_by("pk")
    with track("tests.child", run=first):
        raise JobKilled("stopped by an operator")
    JobRun.objects.filter(pk__in=[parent.pk, first.pk, second.pk]).update(
        created_at=ago(40)
    )
    parent.refresh_from_db()
    assert parent.status == Status.RUNNING  # a killed child, a queued one
    active = ["--include-active", "--days", "30", "--keep-last", "0", *jobs]

    children = JobRun.objects.filter(job_name="tests.child")
    dry = children.purge(days=30, include_active=True, keep_last=0, dry_run=True)
    done = children.purge(days=30, include_active=True, keep_last=0)
    assert alive(parent, first, second) == [True, True, True], (dry.runs, done.runs)
    assert (dry.runs, done.runs) == (0, 0)
    others = JobRun.objects.exclude(pk=parent.pk)  # narrowed by another field
    assert others.purge(days=30, include_active=True, keep_last=0).runs == 0
    purge(*active, "--job-name", "tests.child")
    assert alive(parent, first, second) == [True, True, True]

    purge(*active, "--job-name", "tests.child", "--job-name", "tests.batch")
    assert alive(parent, first, second) == [False, False, False]


@pytest.mark.engine_agnostic  # SQLite: PostgreSQL stores time zones, and refuses this setting
def test_a_bulk_delete_works_on_a_database_that_stores_local_time(
    aged: Any, database_stores_local_time: None
) -> None:
    """DATABASES' TIME_ZONE (SQLite): aware datetimes are sent in that zone. The bulk
    delete (the admin's, the API's) counted back from datetime.max in UTC, which east of
    UTC overflows: every bulk delete raised OverflowError."""
    from django_jobstatus.retention import delete_finished

    done = aged("tests.job", days=1, logs=1)
    active = aged("tests.job", days=1, status=Status.RUNNING)
    result = delete_finished(JobRun.objects.all())
    assert (result.runs, result.logs) == (1, 1)
    assert alive(done, active) == [False, True]
