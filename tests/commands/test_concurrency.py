"""PostgreSQL: reaping races a finishing job; purging runs while other processes write runs and logs."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.core.management import call_command
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.db.models import Count
from django.utils import timezone

from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.retention import PurgeResult, _Parallel
from tests.commands.seeding import seed
from tests.waiting import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _in_thread(
    target: Any, barrier: threading.Barrier, errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            barrier.wait(timeout=30)
            target()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_reapers_and_a_finishing_job_race_with_exactly_one_outcome_per_run() -> None:
    old = timezone.now() - timedelta(hours=1)
    runs = [
        JobRun.objects.start("tests.race", started_at=old, heartbeat_at=old)
        for _ in range(150)
    ]
    job_won: set[Any] = set()
    reaper_won: set[Any] = set()
    results: list[Any] = []
    errors: list[BaseException] = []

    def finish_jobs() -> None:
        for run in reversed(runs):  # meets the reapers (which go by pk) in the middle
            try:
                run.mark_succeeded({"ok": True})
                job_won.add(run.pk)
            except InvalidTransition:
                reaper_won.add(run.pk)

    def reaper() -> None:
        results.append(JobRun.objects.reap(300, batch_size=5))

    barrier = threading.Barrier(3)
    threads = [
        _in_thread(target, barrier, errors) for target in (finish_jobs, reaper, reaper)
    ]
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)

    statuses = dict(JobRun.objects.for_job("tests.race").values_list("pk", "status"))
    assert set(statuses.values()) <= {Status.SUCCEEDED, Status.LOST}
    assert {
        pk for pk, status in statuses.items() if status == Status.SUCCEEDED
    } == job_won
    assert {
        pk for pk, status in statuses.items() if status == Status.LOST
    } == reaper_won
    assert len(job_won) + len(reaper_won) == len(runs)
    assert sum(result.reaped for result in results) == len(
        reaper_won
    )  # no run reaped twice
    reap_lines = dict(
        JobLog.objects.filter(run__job_name="tests.race")
        .values_list("run_id")
        .annotate(n=Count("pk"))
    )
    assert reap_lines == dict.fromkeys(reaper_won, 1)


def _said(process: subprocess.Popen[str], expected: str) -> bool:
    """Whether ``process`` has printed a line now, and it is ``expected`` (never blocks)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 0)
    return bool(ready) and process.stdout.readline().strip() == expected


@contextlib.contextmanager
def writers(
    database: dict[str, Any], tmp_path: Path, count: int = 2
) -> Iterator[list[dict[str, Any]]]:
    """``count`` writer processes (tests/commands/writer.py) on ``database``, each past its
    warm-up; the list yielded holds their reports once the block has ended.
    """
    env = {**os.environ, "JOBSTATUS_WRITER_DB": json.dumps(database)}
    stop = tmp_path / "stop"
    logs = [tmp_path / f"writer-{index}.err" for index in range(count)]
    processes = []
    for log in logs:
        with log.open("w") as err:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.commands.writer", str(stop)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            )
    reports: list[dict[str, Any]] = []
    try:
        for process, log in zip(processes, logs, strict=True):
            wait_for(
                lambda process=process: _said(process, "ready"),
                timeout=60,
                what="the writer to say 'ready'",
                process=process,
                log=log,
            )
        yield reports
    finally:
        stop.touch()
        outputs = []
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                outputs.append(process.communicate())
    reports.extend(json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)


def test_purge_while_other_processes_create_and_finish_tracked_runs(
    tmp_path: Path,
) -> None:
    seed(
        connection, runs=20_000, logs_per_run=3, jobs=5, newest_days=40, oldest_days=100
    )
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")
    database = {key: connection.settings_dict[key] for key in keys}
    with writers(database, tmp_path) as reports:
        began = time.time()
        result = JobRun.objects.purge(days=0, keep_last=0, batch_size=500)
        ended = time.time()

    # Every writer operation succeeded: no run was deleted under a live job, no log refused.
    assert [report["errors"] for report in reports] == [[], []]
    assert not JobRun.objects.active().exists()
    assert not JobRun.objects.filter(job_name__startswith="seed.").exists()
    assert result.runs >= 20_000
    assert result.logs >= 60_000
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {JobLog._meta.db_table} l LEFT JOIN {JobRun._meta.db_table} r ON r.id = l.run_id WHERE r.id IS NULL"  # noqa: S608
        )
        assert cursor.fetchone() == (0,)  # no orphaned log line
    # A writer's run is either gone with all its lines, or kept with all of them.
    lines = (
        JobLog.objects.filter(run__job_name="tests.writer")
        .values_list("run_id")
        .annotate(n=Count("pk"))
    )
    assert {n for _, n in lines} <= {3}

    # The writers never waited on the purge for more than one batch.
    ops = [op for report in reports for op in report["ops"]]
    during = [
        seconds for start, seconds in ops if start < ended and start + seconds > began
    ]
    before = [seconds for start, seconds in ops[10:] if start + seconds < began]
    assert during, "no writer operation overlapped the purge"
    margin = 1.0 + 3 * max(before, default=0.0)
    assert max(during) < result.longest_batch + margin, (
        max(during),
        result.longest_batch,
        margin,
        result.batches,
    )


def test_two_purges_at_once_share_the_work_and_count_each_run_once() -> None:
    seed(connection, runs=4000, logs_per_run=2, jobs=3, newest_days=40, oldest_days=100)
    results: list[Any] = []
    errors: list[BaseException] = []

    def purge() -> None:
        results.append(JobRun.objects.purge(days=0, keep_last=0, batch_size=100))

    barrier = threading.Barrier(2)
    threads = [_in_thread(purge, barrier, errors) for _ in range(2)]
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sum(result.runs for result in results) == 4000
    assert sum(result.logs for result in results) == 8000
    assert not JobRun.objects.exists()
    assert not JobLog.objects.exists()


class _Workers:
    """The connections a purge's worker threads open (threads named ``jobstatus-purge-N``),
    while ``watching()``: their backend pids and, with ``barrier``, the pids that reached
    a delete; each waits at its first delete until ``barrier`` is full, which breaks
    (after its timeout) unless that many delete at once."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.barrier = barrier
        self.pids: set[int] = set()
        self.deleting: set[int] = set()

    def _execute(
        self, execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        pid = context["connection"].connection.info.backend_pid
        if self.barrier and "DELETE FROM" in sql and pid not in self.deleting:
            self.deleting.add(pid)
            self.barrier.wait()
        return execute(sql, params, many, context)

    def _opened(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("jobstatus-purge-"):
            self.pids.add(connection.connection.info.backend_pid)
            connection.execute_wrappers.append(self._execute)

    @contextlib.contextmanager
    def watching(self) -> Iterator[_Workers]:
        connection_created.connect(self._opened)
        try:
            yield self
        finally:
            connection_created.disconnect(self._opened)

    def wait_until_closed(self) -> None:
        """Wait until none of the workers' connections is left on the server."""

        def open_ones() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                    [sorted(self.pids)],
                )
                return int(cursor.fetchone()[0])

        assert self.pids
        wait_for(
            lambda: open_ones() == 0,
            timeout=10,
            what="the workers' connections closed",
        )


def test_a_purge_with_two_jobs_deletes_on_two_connections_at_once() -> None:
    seed(connection, runs=3000, logs_per_run=2, jobs=3, newest_days=0, oldest_days=90)
    now = timezone.now()
    cutoff = now - timedelta(days=30)
    kept = set(JobRun.objects.newest_ids(["seed.job_0", "seed.job_1", "seed.job_2"], 1))
    young = set(
        JobRun.objects.filter(created_at__gte=cutoff).values_list("pk", flat=True)
    )
    lines = JobLog.objects.filter(run__in=young | kept).count()
    dry = JobRun.objects.purge(days=30, now=now, dry_run=True)
    assert dry.runs > 1500
    seen: list[str] = []

    with _Workers(threading.Barrier(2, timeout=30)).watching() as workers:
        result = JobRun.objects.purge(
            days=30,
            now=now,
            jobs=2,
            batch_size=100,
            progress=lambda result: seen.append(threading.current_thread().name),
        )

    assert len(workers.pids) == 2
    assert workers.deleting == workers.pids
    assert set(seen) == {"jobstatus-purge-1", "jobstatus-purge-2"}
    assert result.rows == dry.rows
    assert (result.runs, result.logs) == (dry.runs, dry.logs)
    assert result.batches == len(seen)
    assert set(JobRun.objects.values_list("pk", flat=True)) == young | kept
    assert JobLog.objects.count() == lines
    assert _orphans() == 0
    workers.wait_until_closed()


def test_an_error_in_one_job_stops_the_others_and_is_raised() -> None:
    seed(connection, runs=2000, logs_per_run=1, jobs=2, newest_days=40, oldest_days=100)

    def progress(result: Any) -> None:
        raise RuntimeError(f"progress failed after {result.runs} runs")

    with (
        _Workers().watching() as workers,
        pytest.raises(RuntimeError, match="progress failed after"),
    ):
        JobRun.objects.purge(
            days=30, keep_last=0, jobs=2, batch_size=20, progress=progress
        )
    # Each worker committed its first batch, failed telling it, and took no other.
    left = JobRun.objects.count()
    assert 2000 - 2 * 20 <= left < 2000
    assert JobLog.objects.count() == left
    workers.wait_until_closed()


@contextlib.contextmanager
def _python_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler (KeyboardInterrupt), whatever an earlier test left: an
    RQ worker run in this process installs its own, and leaves it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("starting", [False, True], ids=["deleting", "starting"])
def test_ctrl_c_stops_the_jobs_after_their_batch_and_closes_their_connections(
    monkeypatch: pytest.MonkeyPatch,
    starting: bool,
) -> None:
    seed(connection, runs=2000, logs_per_run=1, jobs=2, newest_days=40, oldest_days=100)
    purges: list[_Parallel] = []
    sent = threading.Event()
    run, start = _Parallel.run, threading.Thread.start

    def watched(self: _Parallel, *args: Any) -> None:
        purges.append(self)
        run(self, *args)

    def start_late(self: threading.Thread) -> None:
        # With ``starting``, the second worker is started once the first sent Ctrl-C:
        # it reaches the main thread while it starts the workers.
        if starting and self.name == "jobstatus-purge-2":
            sent.wait(timeout=30)
        start(self)

    # A worker's connection closes a moment late (at most a second): the purge must wait
    # for every worker to end before it raises, not leave one behind.
    raised = threading.Event()
    closed: list[str] = []
    close = type(connections["default"]).close

    def close_late(self: Any) -> None:
        name = threading.current_thread().name
        if name.startswith("jobstatus-purge-"):
            raised.wait(timeout=1)
            closed.append(name)
        close(self)

    monkeypatch.setattr(_Parallel, "run", watched)
    monkeypatch.setattr(threading.Thread, "start", start_late)
    monkeypatch.setattr(type(connections["default"]), "close", close_late)

    def progress(result: Any) -> None:
        if result.batches == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, handled by the main thread
            sent.set()
            # Held here (and any other worker at its next commit) until it was.
            purges[0].stopped.wait(timeout=10)

    with (
        _python_ctrl_c(),
        _Workers().watching() as workers,
        pytest.raises(KeyboardInterrupt),
    ):
        try:
            JobRun.objects.purge(
                days=30, keep_last=0, jobs=2, batch_size=20, progress=progress
            )
        finally:
            closed_first = list(closed)
            raised.set()
    assert purges[0].stopped.is_set()
    assert len(closed_first) == len(workers.pids)
    # The batch that sent it went, and at most one under way in the other worker; none
    # after the purge raised.
    left = JobRun.objects.count()
    assert 2000 - 2 * 20 <= left < 2000
    assert JobLog.objects.count() == left
    if starting:
        assert len(workers.pids) == 1
    workers.wait_until_closed()
    assert JobRun.objects.count() == left


def test_the_command_purges_with_several_jobs() -> None:
    seed(connection, runs=600, logs_per_run=1, jobs=2, newest_days=40, oldest_days=100)
    out = StringIO()
    with _Workers().watching() as workers:
        call_command(
            "purge_jobstatus",
            *("--days", "30", "--keep-last", "0", "--jobs", "3"),
            stdout=out,
        )
    assert "Deleted 600 runs and 600 log lines" in out.getvalue()
    assert not JobRun.objects.exists()
    assert len(workers.pids) == 3
    workers.wait_until_closed()


def _burst() -> None:
    """A backlog packed into two minutes, 60 days ago, beside a few runs spread over 100 days."""
    seed(
        connection,
        runs=1200,
        logs_per_run=1,
        jobs=3,
        newest_days=60,
        oldest_days=60.001,
        prefix="burst.job_",
    )
    seed(
        connection,
        runs=40,
        logs_per_run=1,
        jobs=2,
        newest_days=0,
        oldest_days=100,
        prefix="spread.job_",
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JobRun._meta.db_table}")


def test_a_backlog_packed_into_minutes_is_cut_into_slices_of_about_equal_runs() -> None:
    _burst()
    candidates = JobRun.objects.filter(
        created_at__lt=timezone.now() - timedelta(days=30)
    )
    total = candidates.count()
    assert total > 1200
    parallel = _Parallel(
        candidates, [], PurgeResult(), None, timezone.now() - timedelta(days=30)
    )

    slices = parallel.cut(16)

    sizes = [part.count() for part in slices]
    assert sum(sizes) == total  # every candidate in exactly one slice
    assert len(slices) >= 16
    # Each of the busiest slices holds a small share: with slices of equal time, one held
    # the whole burst.
    assert max(sizes) <= total // 8, sizes
    assert sum(1 for size in sizes if size >= total // 40) >= 10, sizes


def test_a_purge_with_two_jobs_deletes_a_packed_backlog_on_both_connections() -> None:
    _burst()
    now = timezone.now()
    cutoff = now - timedelta(days=30)
    young = set(
        JobRun.objects.filter(created_at__gte=cutoff).values_list("pk", flat=True)
    )
    dry = JobRun.objects.purge(days=30, keep_last=0, now=now, dry_run=True)

    with _Workers(threading.Barrier(2, timeout=30)).watching() as workers:
        result = JobRun.objects.purge(
            days=30, keep_last=0, now=now, jobs=2, batch_size=25
        )

    assert len(workers.pids) == 2
    assert workers.deleting == workers.pids
    assert (result.runs, result.logs) == (dry.runs, dry.logs)
    assert result.rows == dry.rows
    assert set(JobRun.objects.values_list("pk", flat=True)) == young
    assert JobLog.objects.count() == len(young)
    workers.wait_until_closed()


@contextlib.contextmanager
def _other_connection() -> Iterator[Any]:
    """A second connection to the test database, outside Django: another process's writer."""
    params = connection.get_connection_params() | {"autocommit": False}
    other = connection.Database.connect(**params)  # type: ignore[attr-defined]
    try:
        yield other
    finally:
        other.close()


def _old_run(job: str, lines: int) -> JobRun:
    run = JobRun.objects.create(
        job_name=job,
        status=Status.SUCCEEDED,
        created_at=timezone.now() - timedelta(days=100),
    )
    for n in range(lines):
        run.log(20, "line %d", n)
    return run


def _orphans() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {JobLog._meta.db_table} l LEFT JOIN {JobRun._meta.db_table} r ON r.id = l.run_id WHERE r.id IS NULL"  # noqa: S608
        )
        return int(cursor.fetchone()[0])


def _insert_line(other: Any, run: JobRun) -> None:
    other.execute(
        f"INSERT INTO {JobLog._meta.db_table} (run_id, created_at, level, message, extra)"  # noqa: S608
        " VALUES (%s, now(), 20, 'late line', '{}')",
        [run.pk],
    )


def test_a_line_written_while_its_run_is_purged_is_refused_not_orphaned() -> None:
    # The writer's transaction inserted a line before the purge locked the run, and
    # commits after the purge deleted it: its foreign key check (deferred to commit)
    # finds the run gone and refuses the line.
    doomed = _old_run("tests.doomed", lines=2)
    with _other_connection() as other:
        _insert_line(other, doomed)

        result = JobRun.objects.purge(days=0, keep_last=0)

        assert (result.runs, result.logs) == (1, 2)  # the late line was not committed
        with pytest.raises(connection.Database.IntegrityError):  # type: ignore[attr-defined]
            other.commit()
    assert not JobRun.objects.filter(pk=doomed.pk).exists()
    assert _orphans() == 0


def test_a_run_whose_line_is_being_checked_is_skipped_and_purged_later() -> None:
    # The writer's line already passed its foreign key check (which locks the run
    # against deletion until the writer commits): the purge skips that run, the next
    # purge deletes it with every line, the writer's included.
    doomed, other_run = _old_run("tests.doomed", lines=2), _old_run("tests.other", 1)
    with _other_connection() as other:
        other.execute("SET CONSTRAINTS ALL IMMEDIATE")
        _insert_line(other, doomed)

        first = JobRun.objects.purge(days=0, keep_last=0)

        other.commit()
    assert (first.runs, first.logs) == (1, 1)
    assert list(JobRun.objects.values_list("pk", flat=True)) == [doomed.pk]
    assert JobLog.objects.filter(run=doomed).count() == 3
    second = JobRun.objects.purge(days=0, keep_last=0)
    assert (second.runs, second.logs) == (1, 3)
    assert not JobRun.objects.filter(pk__in=[doomed.pk, other_run.pk]).exists()
    assert _orphans() == 0


# A filter that holds the purge's read of a run until a line "late line" of it is
# committed: VOLATILE, each query in it sees what others committed since it began.
_GATE = f"""
    CREATE FUNCTION jobstatus_test_gate(run uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        FOR i IN 1..3000 LOOP
            IF EXISTS (SELECT 1 FROM {JobLog._meta.db_table}
                       WHERE run_id = run AND message = 'late line') THEN
                RETURN true;
            END IF;
            PERFORM pg_sleep(0.01);
        END LOOP;
        RETURN false;
    END $$
"""  # noqa: S608


@contextlib.contextmanager
def _gated_runs() -> Iterator[Any]:
    """JobRun.objects through the gate: reading a run waits for its late line."""
    from django.db.models import BooleanField
    from django.db.models.expressions import RawSQL

    with connection.cursor() as cursor:
        cursor.execute(_GATE)
    try:
        yield JobRun.objects.alias(
            gate=RawSQL("jobstatus_test_gate(id)", (), output_field=BooleanField())
        ).filter(gate=True)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP FUNCTION IF EXISTS jobstatus_test_gate(uuid)")


def _gate_waiting() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND query LIKE '%%jobstatus_test_gate%%' AND wait_event = 'PgSleep'"
        )
        return bool(cursor.fetchone()[0])


@contextlib.contextmanager
def _schema(*, cascades: bool) -> Iterator[None]:
    """The foreign keys with the database's ON DELETE actions (migration 0008) or without."""
    if cascades:
        yield
        return
    from importlib import import_module

    from django.apps import apps

    migration = import_module("django_jobstatus.migrations.0008_database_cascades")
    with connection.schema_editor() as editor:
        migration.backwards(apps, editor)
    try:
        yield
    finally:
        with connection.schema_editor() as editor:
            migration.forwards(apps, editor)


@pytest.mark.parametrize("cascades", [True, False], ids=["cascade", "no-cascade"])
def test_a_line_committed_while_the_purge_reads_its_run_is_counted(
    cascades: bool,
) -> None:
    # The writer commits a line after the purge's statement began but before it locked
    # the run (so nothing stops the line): the purge deletes that line with the run, and
    # must count it. Read in the deleting statement's snapshot, taken before the line was
    # committed, it was deleted uncounted by the cascade (the report said 2 lines, 3
    # went), or, without the cascade, left behind and the batch's commit refused.
    doomed = _old_run("tests.doomed", lines=2)
    results: list[Any] = []
    errors: list[BaseException] = []
    with _schema(cascades=cascades), _gated_runs() as gated:
        thread = _in_thread(
            lambda: results.append(gated.purge(days=0, keep_last=0)),
            threading.Barrier(1),
            errors,
        )
        wait_for(_gate_waiting, timeout=30, what="the purge reading the run")
        with _other_connection() as other:
            _insert_line(other, doomed)
            other.commit()
        thread.join(timeout=30)

    assert not thread.is_alive()
    assert not errors
    assert (results[0].runs, results[0].logs) == (1, 3)
    assert results[0].counts == {("tests.doomed", Status.SUCCEEDED): [1, 3]}
    assert not JobRun.objects.filter(pk=doomed.pk).exists()
    assert _orphans() == 0


def test_a_batch_held_up_by_a_lock_is_cancelled_and_the_locked_run_left_for_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another transaction holds a lock on one log line of the oldest run: deleting it
    # waits. The batch gives up at its lock timeout (2 x batch_seconds), is tried
    # again at half the size until that run is alone, then the run is stepped over:
    # no transaction waits on the lock for long, and the other runs go.
    blocked = _old_run("tests.blocked", lines=2)
    JobRun.objects.filter(pk=blocked.pk).update(
        created_at=timezone.now() - timedelta(days=200)
    )
    others = [_old_run("tests.other", lines=1) for _ in range(5)]
    results: list[Any] = []
    errors: list[BaseException] = []
    with _other_connection() as other:
        other.execute(
            f"SELECT id FROM {JobLog._meta.db_table} WHERE run_id = %s FOR UPDATE",  # noqa: S608
            [blocked.pk],
        )

        def purge() -> None:
            results.append(
                JobRun.objects.purge(days=0, keep_last=0, batch_seconds=0.05)
            )

        thread = _in_thread(purge, threading.Barrier(1), errors)
        thread.join(timeout=30)
        finished_under_the_lock = not thread.is_alive()
        other.rollback()
        thread.join(timeout=30)

    assert finished_under_the_lock
    assert not errors
    assert (results[0].runs, results[0].logs) == (5, 5)
    assert not JobRun.objects.filter(pk__in=[run.pk for run in others]).exists()
    assert JobLog.objects.filter(run=blocked).count() == 2
    assert f"Purge skipped run {blocked.pk}" in caplog.text
    later = JobRun.objects.purge(days=0, keep_last=0)
    assert (later.runs, later.logs) == (1, 2)


def test_the_admin_s_bulk_delete_writes_history_only_for_the_runs_it_deleted(
    admin_client: Any,
) -> None:
    # Another purge (or a reaper) holds one of the selected runs: the bulk delete skips it
    # (SKIP LOCKED). Its history said "deleted" for it all the same, as Django's action
    # logs every selected object before deleting.
    held, *others = [_old_run("tests.selected", lines=1) for _ in range(3)]
    selected = [str(run.pk) for run in (held, *others)]
    with _other_connection() as other:
        other.execute(
            f"SELECT id FROM {JobRun._meta.db_table} WHERE id = %s FOR UPDATE",  # noqa: S608
            [held.pk],
        )
        response = admin_client.post(
            "/admin/django_jobstatus/jobrun/",
            {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
            follow=True,
        )
        other.rollback()

    assert response.status_code == 200
    assert "Successfully deleted 2 job runs." in response.content.decode()
    assert list(JobRun.objects.values_list("pk", flat=True)) == [held.pk]
    logged = LogEntry.objects.filter(action_flag=DELETION)
    assert sorted(logged.values_list("object_id", flat=True)) == sorted(
        str(run.pk) for run in others
    )
