"""Time each admin page on a big history, beside django-celery-results' TaskResult admin.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_admin.py
    ... --runs 20000 --logs 200000 --big-run-logs 5000      # a quick, small run

Seeds, in a scratch PostgreSQL database of its own (``--database``, created and dropped):
``--runs`` runs over 30 days (SQL generate_series; every tenth failed) with ``--logs`` log
lines in all, one of them holding ``--big-run-logs`` lines, plus a few hundred active
runs; and as many django-celery-results ``TaskResult`` rows. Then requests each page with
Django's test Client, logged in as a superuser, ``--repeat`` times after a warm-up, and
prints the median per page next to the TaskResult admin's nearest page, with the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

DAYS = 30
JOBS = 20


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
        help="log lines to seed in all (default: %(default)r)",
    )
    parser.add_argument(
        "--big-run-logs",
        type=int,
        default=100_000,
        help="log lines of the one big run (default: %(default)r)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed requests per page (default: %(default)r)",
    )
    parser.add_argument(
        "--database",
        default="jobstatus_bench_admin",
        help="scratch PostgreSQL database (default: %(default)r)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch database at the end (default: %(default)r)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="time a database kept by --keep, without seeding (default: %(default)r)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN ANALYZE of the job-name filter's query (default: %(default)r)",
    )
    return parser.parse_args()


def timed(label: str, action: Any) -> Any:
    began = time.perf_counter()
    value = action()
    print(f"  {label}: {time.perf_counter() - began:.1f} s", flush=True)
    return value


def seed_all(options: argparse.Namespace) -> None:
    from django.db import connection
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from bench.bench_purge import TASKS_SQL
    from django_jobstatus.models import JobLog, JobRun, Status
    from tests.commands.seeding import seed

    runs = options.runs
    per_run = max(round((options.logs - options.big_run_logs) / max(runs, 1)), 0)
    print(
        f"Seeding {runs:,} runs with about {options.logs:,} log lines, and {runs:,} TaskResult rows",
        flush=True,
    )
    with connection.cursor() as cursor:
        # Bulk load: no foreign-key triggers while seeding (the rows are consistent by construction).
        cursor.execute("SET session_replication_role = replica")
        timed(
            "runs and logs",
            lambda: seed(
                connection,
                runs=runs,
                logs_per_run=per_run,
                jobs=JOBS,
                newest_days=0.01,
                oldest_days=DAYS,
                prefix="bench.job_",
            ),
        )
        now = timezone.now()
        big = JobRun.objects.create(
            job_name="bench.big",
            status=Status.SUCCEEDED,
            created_at=now,
            started_at=now,
            finished_at=now,
            queued_at=now,
        )
        timed(
            "the big run's logs",
            lambda: cursor.execute(
                f"INSERT INTO {JobLog._meta.db_table} (run_id, created_at, level, message, extra)"  # noqa: S608
                " SELECT %s, now() - g * interval '1 millisecond', CASE WHEN g %% 100 = 0 THEN 40 ELSE 20 END, 'big line ' || g, '{}'::jsonb"
                " FROM generate_series(1, %s) AS g",
                [big.pk, options.big_run_logs],
            ),
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        active = []
        for i in range(300):
            status = Status.RUNNING if i % 3 == 0 else Status.QUEUED
            beat = now - timezone.timedelta(hours=1) if i % 30 == 0 else now
            active.append(
                JobRun(
                    job_name=f"bench.job_{i % JOBS}",
                    status=status,
                    created_at=now,
                    queued_at=now,
                    started_at=now if status == Status.RUNNING else None,
                    heartbeat_at=beat,
                    progress_current=i,
                    progress_total=300,
                    step="working",
                )
            )
        JobRun.objects.bulk_create(active)
        timed(
            "task results",
            lambda: cursor.execute(
                TASKS_SQL.format(table=TaskResult._meta.db_table),
                {"count": runs, "span": DAYS * 86400.0},
            ),
        )
        timed(
            "vacuum analyze",
            lambda: [
                cursor.execute(f"VACUUM ANALYZE {table}")
                for table in (
                    JobRun._meta.db_table,
                    JobLog._meta.db_table,
                    TaskResult._meta.db_table,
                )
            ],
        )


def measure(client: Any, url: str, repeat: int, *, cold: bool = False) -> float:
    """Median milliseconds of ``repeat`` requests after one warm-up; fails loudly on an error page.

    ``cold``: the cache is cleared before each request (the dashboard caches a week's figures).
    """
    from django.core.cache import cache

    response = client.get(url)
    if response.status_code != 200:
        sys.exit(f"{url} answered {response.status_code}")
    times = []
    for _ in range(repeat):
        if cold:
            cache.clear()
        began = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def pages() -> list[tuple[str, str, str | None]]:
    """(label, jobstatus URL, TaskResult admin's nearest URL or None)."""
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobRun

    big = JobRun.objects.for_job("bench.big").get()
    task = TaskResult.objects.order_by("-date_done").first()
    runs = "/admin/django_jobstatus/jobrun/"
    # The date hierarchy's link for the newest day.
    day = (
        f"date_done__year={task.date_done.year}&date_done__month={task.date_done.month}&date_done__day={task.date_done.day}"
        if task
        else ""
    )
    tasks = "/admin/django_celery_results/taskresult/"
    return [
        ("changelist", runs, tasks),
        (
            "changelist, status=failed",
            f"{runs}?status=failed",
            f"{tasks}?status__exact=FAILURE",
        ),
        (
            "changelist, one job",
            f"{runs}?job_name=bench.job_3",
            f"{tasks}?task_name=bench.job_3",
        ),
        (
            "changelist, active",
            f"{runs}?status=active",
            f"{tasks}?status__exact=STARTED",
        ),
        ("changelist, created 24 h", f"{runs}?created=24h", f"{tasks}?{day}"),
        ("changelist, page 50", f"{runs}?p=50", f"{tasks}?p=50"),
        ("changelist, search", f"{runs}?q=bench.job_3", f"{tasks}?q=bench.job_3"),
        (
            "run page, 100k logs",
            f"{runs}{big.pk}/change/",
            f"{tasks}{task.pk}/change/" if task else None,
        ),
        ("run page, 100k logs, ERROR+", f"{runs}{big.pk}/change/?log_level=40", None),
        ("JobLog changelist", "/admin/django_jobstatus/joblog/", None),
        (
            "JobLog changelist, one run",
            f"/admin/django_jobstatus/joblog/?run={big.pk}",
            None,
        ),
        ("JobLog changelist, ERROR+", "/admin/django_jobstatus/joblog/?level=40", None),
        ("dashboard, 24 h", f"{runs}dashboard/", None),
        ("dashboard, 7 d", f"{runs}dashboard/?window=7d", None),
        ("dashboard, 7 d, cold cache", f"{runs}dashboard/?window=7d", None),
        ("dashboard JSON", f"{runs}dashboard/data/", None),
    ]


def explain() -> None:
    from django.db import connection

    from django_jobstatus.admin.filters import JOB_NAME_CHOICES, job_names_sql
    from django_jobstatus.models import JobRun

    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN ANALYZE "
            + job_names_sql(connection.ops.quote_name(JobRun._meta.db_table)),
            [JOB_NAME_CHOICES],
        )
        print("\nEXPLAIN ANALYZE of the job-name filter's choices:")
        for (line,) in cursor.fetchall():
            print("  " + line)


def run(options: argparse.Namespace) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun

    if not options.reuse:
        call_command("migrate", verbosity=0)
        seed_all(options)
    user = User.objects.filter(
        username="bench"
    ).first() or User.objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    sizes = (JobRun.objects.count(), JobLog.objects.count(), TaskResult.objects.count())
    print(
        f"\n{sizes[0]:,} runs, {sizes[1]:,} log lines, {sizes[2]:,} TaskResult rows; median of {options.repeat} requests (ms)\n",
        flush=True,
    )
    header = f"{'page':32}{'jobstatus':>12}{'celery-results':>16}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for label, ours_url, theirs_url in pages():
        ours = measure(client, ours_url, options.repeat, cold="cold cache" in label)
        theirs = measure(client, theirs_url, options.repeat) if theirs_url else None
        ratio = f"{theirs / ours:.1f}x" if theirs else "-"
        print(
            f"{label:32}{ours:>12.0f}{(f'{theirs:.0f}' if theirs else '-'):>16}{ratio:>8}",
            flush=True,
        )
    print(
        "\nratio = celery-results' time / jobstatus' time (above 1: jobstatus is faster)"
    )
    if options.explain:
        explain()


def main() -> None:
    options = parse()
    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = options.database
    django.setup()
    from django.db import connection

    from bench.bench_purge import admin_sql

    if connection.vendor != "postgresql":
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    if not options.reuse:
        admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')
        admin_sql(f'CREATE DATABASE "{options.database}"')
    try:
        run(options)
    finally:
        connection.close()
        if not options.keep:
            admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')


if __name__ == "__main__":
    main()
