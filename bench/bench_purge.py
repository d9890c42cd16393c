"""Time the purge of two thirds of a big run history, beside django-celery-results' cleanup.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_purge.py
    ... --runs 30000 --logs 300000        # a quick, small run

Seeds ``--runs`` finished runs spread evenly over 90 days with ``--logs`` log lines in all
(SQL generate_series), and as many django-celery-results ``TaskResult`` rows over the same
90 days, in a database of its own (``--database``, created and dropped). Then times
``JobRun.objects.purge(days=30)`` (batches of ``--batch-size``) and
``TaskResult.objects.delete_expired(timedelta(days=30))`` (one DELETE in one transaction),
each deleting two thirds of its rows, and prints rows/s, the longest single transaction
(how long writers could wait on it) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

DAYS = 90  # the history spans this many days; the purge keeps the last 30

TASKS_SQL = """
INSERT INTO {table} (task_id, periodic_task_name, task_name, task_args, task_kwargs, status,
    worker, content_type, content_encoding, result, date_created, date_started, date_done,
    traceback, meta)
SELECT md5('task' || t.i::text), NULL, 'bench.job_' || (t.i %% 20)::text, '()', '{{}}',
    CASE WHEN t.i %% 10 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END, 'celery@bench',
    'application/json', 'utf-8', '{{"n": 1}}', t.at, t.at, t.at + interval '2 seconds',
    CASE WHEN t.i %% 10 = 0 THEN 'RuntimeError: boom' ELSE NULL END, '{{"children": []}}'
FROM (
    SELECT i, now() - make_interval(secs => %(span)s * i / %(count)s::float) AS at
    FROM generate_series(1, %(count)s) AS i
) AS t
"""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1_000_000,
        help="runs (and TaskResult rows) to seed (default: %(default)r)",
    )
    parser.add_argument(
        "--logs",
        type=int,
        default=10_000_000,
        help="log lines to seed, spread evenly over the runs (default: %(default)r)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="runs per purge batch (default: %(default)r)",
    )
    parser.add_argument(
        "--database",
        default="jobstatus_bench",
        help="scratch PostgreSQL database, created and dropped (default: %(default)r)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="do not drop the scratch database at the end (default: %(default)r)",
    )
    return parser.parse_args()


def admin_sql(sql: str) -> None:
    """Run ``sql`` on the server's maintenance database (CREATE/DROP DATABASE)."""
    from django.db import connections

    base = connections["default"]
    params = base.get_connection_params() | {"dbname": "postgres", "autocommit": True}
    with base.Database.connect(**params) as conn:  # type: ignore[attr-defined]
        conn.execute(sql)


def timed(label: str, action: Any) -> Any:
    began = time.perf_counter()
    value = action()
    print(f"  {label}: {time.perf_counter() - began:.1f} s", flush=True)
    return value


def main() -> None:
    options = parse()
    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = options.database
    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')
    admin_sql(f'CREATE DATABASE "{options.database}"')
    try:
        run(options)
    finally:
        connection.close()
        if not options.keep:
            admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')


def run(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun
    from tests.commands.seeding import seed

    runs, per_run = options.runs, max(options.logs // max(options.runs, 1), 0)
    print(
        f"Seeding {runs:,} runs with {runs * per_run:,} log lines, and {runs:,} TaskResult rows, over {DAYS} days",
        flush=True,
    )
    call_command("migrate", verbosity=0)
    timed(
        "runs and logs",
        lambda: seed(
            connection,
            runs=runs,
            logs_per_run=per_run,
            jobs=20,
            newest_days=0,
            oldest_days=DAYS,
            prefix="bench.job_",
        ),
    )

    def seed_tasks() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                TASKS_SQL.format(table=TaskResult._meta.db_table),
                {"count": runs, "span": DAYS * 86400.0},
            )
            cursor.execute(f"ANALYZE {TaskResult._meta.db_table}")

    timed("task results", seed_tasks)
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")

    print(
        f"\njobstatus: JobRun.objects.purge(days=30, batch_size={options.batch_size})",
        flush=True,
    )
    last = [0.0]

    def progress(result: Any) -> None:
        if result.elapsed - last[0] >= 10:
            last[0] = result.elapsed
            print(
                f"  ... {result.runs:,} runs, {result.logs:,} logs, {result.runs / result.elapsed:,.0f} runs/s",
                flush=True,
            )

    began = time.perf_counter()
    now = timezone.now()
    dry = JobRun.objects.purge(days=30, dry_run=True, now=now)
    print(
        f"  dry run: {dry.runs:,} runs and {dry.logs:,} log lines would go ({time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    ours = JobRun.objects.purge(
        days=30, batch_size=options.batch_size, progress=progress, now=now
    )
    left = (JobRun.objects.count(), JobLog.objects.count())
    if ours.rows != dry.rows:
        sys.exit("The dry run's counts differ from what the purge deleted.")

    print(
        "django-celery-results: TaskResult.objects.delete_expired(timedelta(days=30))",
        flush=True,
    )
    before = TaskResult.objects.count()
    began = time.perf_counter()
    TaskResult.objects.delete_expired(timedelta(days=30))
    theirs_elapsed = time.perf_counter() - began
    theirs = before - TaskResult.objects.count()

    ours_rate = ours.runs / ours.elapsed
    theirs_rate = theirs / theirs_elapsed
    rows_rate = (ours.runs + ours.logs) / ours.elapsed
    table = [
        ("runs / task results deleted", f"{ours.runs:,}", f"{theirs:,}"),
        ("log lines deleted", f"{ours.logs:,}", "-"),
        ("seconds", f"{ours.elapsed:.1f}", f"{theirs_elapsed:.1f}"),
        ("runs / task results per s", f"{ours_rate:,.0f}", f"{theirs_rate:,.0f}"),
        ("log lines per s", f"{ours.logs / ours.elapsed:,.0f}", "-"),
        ("all rows per s", f"{rows_rate:,.0f}", f"{theirs_rate:,.0f}"),
        ("transactions", f"{ours.batches:,}", "1"),
        (
            "longest transaction, s",
            f"{ours.longest_batch:.3f}",
            f"{theirs_elapsed:.3f}",
        ),
    ]
    print(f"\n{'':28}{'jobstatus purge':>18}{'celery-results':>18}")
    for label, mine, other in table:
        print(f"{label:28}{mine:>18}{other:>18}")
    print()
    print(
        f"ratio, seconds for the same number of runs / task results (jobstatus / celery-results): {ours.elapsed / theirs_elapsed:.1f}"
    )
    print(
        f"ratio, all rows per s (celery-results / jobstatus): {theirs_rate / rows_rate:.1f}"
    )
    print(
        f"ratio, longest lock hold (celery-results / jobstatus): {theirs_elapsed / ours.longest_batch:.2f}"
    )
    print(
        f"left: {left[0]:,} runs, {left[1]:,} log lines; {before - theirs:,} task results"
    )


if __name__ == "__main__":
    main()
