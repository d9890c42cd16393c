"""Time the purge of two thirds of a big run history, beside django-celery-results' cleanup.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_purge.py
    ... --runs 30000                      # a quick, small run
    ... --reuse                           # copy the seeded template kept by an earlier run

Seeds ``--runs`` finished runs of the shape in bench/seeding.py (50 job names, 8% failed
with 1–3 KB tracebacks, 1–19 varied log lines a run) spread over 90 days, and the same
runs as django-celery-results ``TaskResult`` rows, into a template database
(``--database``_seed, kept for ``--reuse``), and copies it into the scratch database.
Then times ``JobRun.objects.purge(days=30, jobs=N)`` and ``TaskResult.objects.delete_expired
(timedelta(days=30))`` (one DELETE in one transaction), each deleting two thirds of its
rows, while a writer thread updates rows in the purged range; prints rows/s, the longest
single transaction, the writer's longest wait, the WAL written (the whole server's), the
database backends' CPU time (when the server runs on this machine: this connection's, and
with ``jobs`` above 1 each worker's as of its last batch) and the ratios. Each ``--jobs``
value (default 1, then 2) is timed on a fresh copy, DCR's cleanup after it on the same copy.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.seeding import bench_parser, seed, timed  # noqa: E402 (after sys.path)

DAYS = 90  # the history spans this many days; the purge keeps the last 30


def parse() -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        runs=1_000_000,
        runs_help="runs (and TaskResult rows) to seed; 10 log lines a run on average",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        help="most runs per purge batch (default: %(default)r)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=0.1,
        help="the time each purge batch aims at (default: %(default)r)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[1, 2],
        help="connections the purge deletes with at once (purge(jobs=N)); each value is"
        " timed on a fresh copy, beside DCR on the same copy (default: %(default)r)",
    )
    parser.add_argument(
        "--database",
        default="jobstatus_bench",
        help="scratch PostgreSQL database, created and dropped (default: %(default)r)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="copy the template database an earlier run seeded, if there is one (default: %(default)r)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="do not drop the scratch database at the end (default: %(default)r)",
    )
    return parser.parse_args()


def admin_sql(sql: str) -> Any:
    """Run ``sql`` on the server's maintenance database (CREATE/DROP DATABASE); its rows."""
    from django.db import connections

    base = connections["default"]
    params = base.get_connection_params() | {"dbname": "postgres", "autocommit": True}
    with base.Database.connect(**params) as conn:  # type: ignore[attr-defined]
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def main() -> None:
    options = parse()
    import django
    from django.conf import settings

    template = f"{options.database}_seed"
    settings.DATABASES["default"]["NAME"] = template
    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    seeded = admin_sql(f"SELECT 1 FROM pg_database WHERE datname = '{template}'")  # noqa: S608
    if not (options.reuse and seeded):
        admin_sql(f'DROP DATABASE IF EXISTS "{template}"')
        admin_sql(f'CREATE DATABASE "{template}"')
        seed_template(options)
    for jobs in options.jobs:
        connection.close()
        admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')
        timed(
            "copy of the seeded template",
            lambda: admin_sql(
                f'CREATE DATABASE "{options.database}" TEMPLATE "{template}"'
            ),
        )
        settings.DATABASES["default"]["NAME"] = options.database
        try:
            run(options, jobs)
        finally:
            connection.close()
            if not options.keep:
                admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')


def seed_template(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    print(
        f"Seeding {options.runs:,} runs with about {options.runs * 10:,} log lines,"
        f" and {options.runs:,} TaskResult rows, over {DAYS} days",
        flush=True,
    )
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        seed(
            connection, runs=options.runs, newest_days=0, oldest_days=DAYS, timed=timed
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        for table in (
            "django_jobstatus_jobrun",
            "django_jobstatus_joblog",
            "django_celery_results_taskresult",
        ):
            cursor.execute(f"VACUUM ANALYZE {table}")
    connection.close()


class Writer(threading.Thread):
    """Updates random rows of the purged range, one short transaction each, and times each wait."""

    def __init__(self, sql: str, ids: list[Any]) -> None:
        super().__init__(daemon=True)
        self.sql, self.ids = sql, ids
        self.stop = threading.Event()
        self.waits: list[float] = []

    def run(self) -> None:
        from django.db import connection

        rng = random.Random(7)
        try:
            while not self.stop.is_set():
                began = time.perf_counter()
                with connection.cursor() as cursor:
                    cursor.execute(self.sql, [rng.choice(self.ids)])
                self.waits.append(time.perf_counter() - began)
                time.sleep(0.005)
        finally:
            connection.close()

    def finish(self) -> tuple[float, float]:
        """(longest wait, 99th percentile) in seconds."""
        self.stop.set()
        self.join()
        ordered = sorted(self.waits) or [0.0]
        return ordered[-1], ordered[int(len(ordered) * 0.99)]


def wal_bytes(since: str | None = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        if since is None:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
        else:
            cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [since])
            return float(cursor.fetchone()[0])
        return cursor.fetchone()[0]


def server_cpu() -> float | None:
    """Seconds of CPU the database backend of this connection has used; None when the
    server is not on this machine (its process cannot be read)."""
    from django.db import connection

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_since(began: float | None) -> float | None:
    now = server_cpu()
    return None if began is None or now is None else now - began


def run(options: argparse.Namespace, jobs: int) -> None:
    from django.db import connection
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun

    now = timezone.now()
    cutoff = now - timedelta(days=30)
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    runs, logs = JobRun.objects.count(), JobLog.objects.count()
    print(
        f"\n{runs:,} runs, {logs:,} log lines, {TaskResult.objects.count():,} TaskResult rows",
        flush=True,
    )

    print(
        f"\njobstatus: JobRun.objects.purge(days=30, batch_size={options.batch_size}, batch_seconds={options.batch_seconds}, jobs={jobs})",
        flush=True,
    )
    last = [0.0]
    # With jobs above 1, each worker's backend: its CPU at its latest batch (server_cpu()
    # reads the connection of the thread that calls it).
    workers: dict[int, float] = {}

    def progress(result: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            workers[connection.connection.info.backend_pid] = server_cpu() or 0.0
        if result.elapsed - last[0] >= 10:
            last[0] = result.elapsed
            print(
                f"  ... {result.runs:,} runs, {result.logs:,} logs, {(result.runs + result.logs) / result.elapsed:,.0f} rows/s",
                flush=True,
            )

    began = time.perf_counter()
    dry = JobRun.objects.purge(days=30, dry_run=True, now=now)
    print(
        f"  dry run: {dry.runs:,} runs and {dry.logs:,} log lines would go ({time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    doomed = list(
        JobRun.objects.filter(created_at__lt=cutoff)
        .order_by("?")
        .values_list("pk", flat=True)[:2000]
    )
    writer = Writer(
        f"UPDATE {JobRun._meta.db_table} SET updated_at = now() WHERE id = %s",  # noqa: S608
        doomed,
    )
    wal = wal_bytes()
    writer.start()
    cpu = server_cpu()
    ours = JobRun.objects.purge(
        days=30,
        batch_size=options.batch_size,
        batch_seconds=options.batch_seconds,
        progress=progress,
        now=now,
        jobs=jobs,
    )
    ours_cpu = cpu_since(cpu)
    if ours_cpu is not None:
        ours_cpu += sum(workers.values())
    ours_wait = writer.finish()
    ours_wal = wal_bytes(wal)
    left = (JobRun.objects.count(), JobLog.objects.count())
    if ours.rows != dry.rows:
        # The writer's row locks make SKIP LOCKED leave a few runs for the next purge.
        print(
            f"  note: {dry.runs - ours.runs} runs left for the next purge (locked by the writer)"
        )

    print(
        "django-celery-results: TaskResult.objects.delete_expired(timedelta(days=30))",
        flush=True,
    )
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    before = TaskResult.objects.count()
    expired = list(
        TaskResult.objects.filter(date_done__lt=cutoff)
        .order_by("?")
        .values_list("pk", flat=True)[:2000]
    )
    writer = Writer(
        f"UPDATE {TaskResult._meta.db_table} SET date_done = date_done WHERE id = %s",  # noqa: S608
        expired,
    )
    wal = wal_bytes()
    writer.start()
    cpu = server_cpu()
    began = time.perf_counter()
    TaskResult.objects.delete_expired(timedelta(days=30))
    theirs_elapsed = time.perf_counter() - began
    theirs_cpu = cpu_since(cpu)
    theirs_wait = writer.finish()
    theirs_wal = wal_bytes(wal)
    theirs = before - TaskResult.objects.count()

    ours_rows = ours.runs + ours.logs
    ours_rate = ours_rows / ours.elapsed
    theirs_rate = theirs / theirs_elapsed
    table = [
        ("runs / task results deleted", f"{ours.runs:,}", f"{theirs:,}"),
        ("log lines deleted", f"{ours.logs:,}", "-"),
        ("seconds", f"{ours.elapsed:.1f}", f"{theirs_elapsed:.1f}"),
        ("all rows per s", f"{ours_rate:,.0f}", f"{theirs_rate:,.0f}"),
        (
            "runs / task results per s",
            f"{ours.runs / ours.elapsed:,.0f}",
            f"{theirs_rate:,.0f}",
        ),
        ("transactions", f"{ours.batches:,}", "1"),
        (
            "longest transaction, s",
            f"{ours.longest_batch:.3f}",
            f"{theirs_elapsed:.3f}",
        ),
        ("writer's longest wait, s", f"{ours_wait[0]:.3f}", f"{theirs_wait[0]:.3f}"),
        ("writer's 99th percentile, s", f"{ours_wait[1]:.3f}", f"{theirs_wait[1]:.3f}"),
        ("WAL written, MB", f"{ours_wal / 1e6:,.0f}", f"{theirs_wal / 1e6:,.0f}"),
    ]
    if ours_cpu and theirs_cpu:
        table += [
            ("server CPU, s", f"{ours_cpu:.2f}", f"{theirs_cpu:.2f}"),
            (
                "all rows per CPU s",
                f"{ours_rows / ours_cpu:,.0f}",
                f"{theirs / theirs_cpu:,.0f}",
            ),
        ]
    print(f"\n{'':30}{f'purge, jobs={jobs}':>18}{'celery-results':>18}")
    for label, mine, other in table:
        print(f"{label:30}{mine:>18}{other:>18}")
    print()
    print(
        f"ratio, all rows per s (jobstatus / celery-results): {ours_rate / theirs_rate:.2f}"
    )
    if ours_cpu and theirs_cpu:
        # The database's own work, which other processes on a busy machine do not inflate
        # as much as they do the elapsed time.
        print(
            "ratio, all rows per server CPU second (jobstatus / celery-results):"
            f" {(ours_rows / ours_cpu) / (theirs / theirs_cpu):.2f}"
        )
    print(
        f"ratio, longest lock hold (celery-results / jobstatus): {theirs_elapsed / ours.longest_batch:.1f}"
    )
    print(
        f"left: {left[0]:,} runs, {left[1]:,} log lines; {before - theirs:,} task results"
    )


if __name__ == "__main__":
    main()
