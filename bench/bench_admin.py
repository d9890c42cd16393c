"""Time each admin page on a big history, beside django-celery-results' TaskResult admin.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_admin.py
    ... --runs 20000 --big-run-logs 5000      # a quick, small run

Seeds, in a scratch PostgreSQL database of its own (``--database``, created and dropped
unless ``--keep``; ``--reuse`` times a kept one again): ``--runs`` runs of the shape in
bench/seeding.py (50 job names over 30 days, 8% failed with 1–3 KB tracebacks, 1–19
varied log lines a run), one more run with ``--big-run-logs`` lines, a few hundred active
runs, and the same runs as django-celery-results ``TaskResult`` and django-tasks-db
``DBTaskResult`` rows. Then requests each page with Django's test Client, logged in as a
superuser, ``--repeat`` times after a warm-up, and prints the median per page and its
number of queries, next to each peer admin's nearest page, with the ratios.
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

from bench.seeding import (  # noqa: E402 (after sys.path)
    bench_parser,
    bench_user,
    on_scratch_database,
    scratch_arguments,
    seed,
    timed,
)

DAYS = 30


def parse() -> argparse.Namespace:
    parser = bench_parser(
        __doc__, runs=1_000_000, runs_help="runs (and TaskResult rows) to seed"
    )
    parser.add_argument(
        "--big-run-logs",
        type=int,
        default=100_000,
        help="log lines of the one big run (default: %(default)r)",
    )
    parser.add_argument(
        "--max-lines",
        type=int,
        default=19,
        help="log lines of a run: 1 to this many (default: %(default)r, 10 on average)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed requests per page (default: %(default)r)",
    )
    parser.add_argument(
        "--sizes",
        action="store_true",
        help="only print each table's rows, estimate, sizes and VACUUM ANALYZE time (default: %(default)r)",
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="time only this page of ours (repeat it for several) instead of the table (default: %(default)r)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="time only the table's rows whose label holds this, e.g. dashboard (default: %(default)r)",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="time the dashboard's pieces (warm, and with a cold cache) instead of the table (default: %(default)r)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN ANALYZE of the job-name filter's query (default: %(default)r)",
    )
    scratch_arguments(parser, "jobstatus_bench_admin")
    return parser.parse_args()


def seed_all(options: argparse.Namespace) -> None:
    from django.db import connection
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun, Status

    runs = options.runs
    print(
        f"Seeding {runs:,} runs with about {runs * (1 + options.max_lines) // 2 + options.big_run_logs:,} log lines,"
        f" and {runs:,} rows for each peer",
        flush=True,
    )
    with connection.cursor() as cursor:
        # Bulk load: no foreign-key triggers while seeding (the rows are consistent by construction).
        cursor.execute("SET session_replication_role = replica")
        seed(
            connection,
            runs=runs,
            newest_days=0.01,
            oldest_days=DAYS,
            big_run_logs=options.big_run_logs,
            max_lines=options.max_lines,
            timed=timed,
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        now = timezone.now()
        active = []
        for i in range(300):
            status = Status.RUNNING if i % 3 == 0 else Status.QUEUED
            beat = now - timezone.timedelta(hours=1) if i % 30 == 0 else now
            active.append(
                JobRun(
                    job_name=f"reports.tasks.job_{i % 7}",
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
        tables = [
            JobRun._meta.db_table,
            JobLog._meta.db_table,
            TaskResult._meta.db_table,
        ]
        if _dtk() is not None:
            tables.append(_dtk()._meta.db_table)
        timed(
            "vacuum analyze",
            lambda: [cursor.execute(f"VACUUM ANALYZE {table}") for table in tables],
        )


class Post(str):
    """A page reached by a POST (an action's confirmation page): the URL, and ``data`` the form."""

    data: dict[str, Any]

    def __new__(cls, url: str, data: dict[str, Any]) -> Post:
        page = super().__new__(cls, url)
        page.data = data
        return page


def fetch(client: Any, url: str) -> Any:
    """GET ``url``, or POST its form when it is a ``Post``."""
    return client.post(url, url.data) if isinstance(url, Post) else client.get(url)


def measure(
    client: Any,
    url: str,
    repeat: int,
    *,
    cold: bool = False,
    fresh: bool = False,
    prepare: Any = None,
) -> tuple[float, int]:
    """Median milliseconds of ``repeat`` requests after one warm-up; fails loudly on an error page.

    ``cold``: Django's cache is cleared before each request. ``fresh``: the dashboard's
    hourly roll-ups are deleted too, so each request rolls the window's hours up again
    (what only the first request after installing does). ``prepare``: called (untimed)
    after that, before each request.
    """
    from django.core.cache import cache
    from django.db import connection

    from django_jobstatus.models import JobRunHour

    each = cold or fresh or prepare is not None

    def clear() -> None:
        cache.clear()
        if fresh:
            JobRunHour.objects.all().delete()
        if prepare is not None:
            prepare()
            cache.clear()

    queries: list[str] = []

    def count(execute: Any, sql: str, *args: Any) -> Any:
        queries.append(sql)
        return execute(sql, *args)

    if each:
        clear()
    response = fetch(client, url)
    if response.status_code != 200:
        sys.exit(f"{url} answered {response.status_code}")
    times = []
    for _ in range(repeat):
        if each:
            clear()
        began = time.perf_counter()
        fetch(client, url)
        times.append((time.perf_counter() - began) * 1000)
    # Counted on one more request like the timed ones, not on the warm-up: that one may
    # also do what an earlier page left to do (the first 24 h request after the roll-ups
    # were wiped builds the window's rows: 14 queries, where every later one makes 9).
    if each:
        clear()
    with connection.execute_wrapper(count):
        fetch(client, url)
    return statistics.median(times), len(queries)


def measure_reaped(client: Any, url: str, repeat: int) -> tuple[float, float, int]:
    """What a site that runs ``reap_jobstatus`` sees after a quiet week: with the roll-ups
    deleted, the reaper's median milliseconds (it rolls the week up), then the page's with
    a cold cache (``measure()``'s median and queries)."""
    from django.core.management import call_command

    reaps: list[float] = []

    def reap() -> None:
        began = time.perf_counter()
        call_command("reap_jobstatus", verbosity=0)
        reaps.append((time.perf_counter() - began) * 1000)

    ours, queries = measure(client, url, repeat, fresh=True, prepare=reap)
    return statistics.median(reaps), ours, queries


def vacuum_rollups() -> None:
    """After a measurement that deleted and rolled up every hour again, ``repeat`` + 1
    times: clear the dead rows it left (autovacuum would) before the next pages."""
    from django.db import connection

    from django_jobstatus.models import JobRunHour

    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {JobRunHour._meta.db_table}")


def _dtk() -> Any:
    """django-tasks-db's model, or None when it is not installed."""
    try:
        from django_tasks_db.models import DBTaskResult
    except ImportError:
        return None
    return DBTaskResult


def _last_page(count: int, per_page: int) -> int:
    return max((count + per_page - 1) // per_page, 1)


def _older(rows: Any, offset: int) -> str:
    """The ``older`` parameter of the link past the row ``offset`` rows down, newest first."""
    from urllib.parse import quote

    row = rows.order_by("-created_at", "-id").values_list("created_at", "pk")[offset]
    return quote(f"{row[0].isoformat()},{row[1]}")


def pages() -> list[tuple[str, str, str | None, str | None]]:
    """(label, jobstatus URL, django-celery-results' nearest URL or None, django-tasks-db's or None)."""
    from django_celery_results.models import TaskResult

    from django_jobstatus.admin.paginator import CappedCountPaginator
    from django_jobstatus.models import JobLog, JobRun

    big = JobRun.objects.for_job("bench.big").get()
    task = TaskResult.objects.order_by("-date_done").first()
    some = JobRun.objects.order_by("created_at")[1000:1001].get()
    runs = "/admin/django_jobstatus/jobrun/"
    logs = "/admin/django_jobstatus/joblog/"
    tasks = "/admin/django_celery_results/taskresult/"
    dtk = f"/admin/{_dtk()._meta.app_label}/dbtaskresult/" if _dtk() else None
    day = (
        f"date_done__year={task.date_done.year}&date_done__month={task.date_done.month}&date_done__day={task.date_done.day}"
        if task
        else ""
    )
    # The last page a reader reaches through the page links: each admin's own count.
    ours_last = CappedCountPaginator(JobRun.objects.all(), 50).num_pages
    logs_last = CappedCountPaginator(JobLog.objects.all(), 100).num_pages
    theirs_last = _last_page(TaskResult.objects.count(), 100)
    dtk_last = _last_page(_dtk().objects.count(), 100) if dtk else 0
    name = "billing.tasks.sync_ledger"
    # Where an *Older* link leads after reading 90% of the runs, or of a job's runs.
    older = [
        _older(rows, rows.count() * 9 // 10)
        for rows in (
            JobRun.objects.all(),
            JobRun.objects.for_job(name),
            JobLog.objects.all(),
        )
    ]
    # A small quick run has fewer pages than the deep pages timed at full size.
    deep = [min(p, ours_last) for p in (50, 500, 1000)]
    deep_theirs = [min(p, theirs_last) for p in (50, 500, 1000)]
    deep_dtk = [min(p, dtk_last) for p in (50, 500, 1000)]
    logs_deep = min(500, logs_last)
    return [
        ("changelist", runs, tasks, dtk),
        (
            "changelist, status=failed",
            f"{runs}?status=failed",
            f"{tasks}?status__exact=FAILURE",
            dtk and f"{dtk}?status__exact=FAILED",
        ),
        (
            "changelist, one job",
            f"{runs}?job_name={name}",
            f"{tasks}?task_name={name}",
            None,
        ),
        (
            "changelist, active",
            f"{runs}?status=active",
            f"{tasks}?status__exact=STARTED",
            dtk and f"{dtk}?status__exact=RUNNING",
        ),
        ("changelist, created 24 h", f"{runs}?created=24h", f"{tasks}?{day}", None),
        # Filters on a few runs: an index range each, not a walk of the runs (0014).
        (
            "filter, a worker",
            f"{runs}?worker={some.worker}",
            f"{tasks}?worker=celery@{some.worker}",
            None,
        ),
        ("filter, a rare source", f"{runs}?source=manual", None, None),
        ("filter, kill requested", f"{runs}?kill_requested=yes", None, None),
        ("filter, monitor unhealthy", f"{runs}?monitor=unhealthy", None, None),
        ("search, run id", f"{runs}?q={some.pk}", f"{tasks}?q={some.pk}", None),
        ("search, full job name", f"{runs}?q={name}", f"{tasks}?q={name}", None),
        ("search, a fragment", f"{runs}?q=sync_ledg", f"{tasks}?q=sync_ledg", None),
        (
            "search, a name not there",
            f"{runs}?q=reports.sync_ledger",
            f"{tasks}?q=reports.sync_ledger",
            None,
        ),
        (
            f"changelist, p={deep[0]}",
            f"{runs}?p={deep[0]}",
            f"{tasks}?p={deep_theirs[0]}",
            dtk and f"{dtk}?p={deep_dtk[0]}",
        ),
        (
            f"changelist, p={deep[1]}",
            f"{runs}?p={deep[1]}",
            f"{tasks}?p={deep_theirs[1]}",
            dtk and f"{dtk}?p={deep_dtk[1]}",
        ),
        (
            f"changelist, p={deep[2]}",
            f"{runs}?p={deep[2]}",
            f"{tasks}?p={deep_theirs[2]}",
            dtk and f"{dtk}?p={deep_dtk[2]}",
        ),
        (
            "changelist, last page",
            f"{runs}?p={ours_last}",
            f"{tasks}?p={theirs_last}",
            dtk and f"{dtk}?p={dtk_last}",
        ),
        ("changelist, Older link 90% down", f"{runs}?older={older[0]}", None, None),
        (
            "one job, Older link 90% down",
            f"{runs}?job_name={name}&older={older[1]}",
            None,
            None,
        ),
        (
            "run page, 100k logs",
            f"{runs}{big.pk}/change/",
            f"{tasks}{task.pk}/change/" if task else None,
            dtk and f"{dtk}{some.pk}/change/",
        ),
        (
            "run page, 100k logs, ERROR+",
            f"{runs}{big.pk}/change/?log_level=40",
            None,
            None,
        ),
        ("JobLog changelist", logs, None, None),
        ("JobLog, one run", f"{logs}?run={big.pk}", None, None),
        ("JobLog, ERROR+", f"{logs}?level=40", None, None),
        (f"JobLog p={logs_deep}", f"{logs}?p={logs_deep}", None, None),
        ("JobLog last page", f"{logs}?p={logs_last}", None, None),
        ("JobLog, Older link 90% down", f"{logs}?older={older[2]}", None, None),
        ("JobLog search, a rare word", f"{logs}?q=customer+42424", None, None),
        ("JobLog search, a common word", f"{logs}?q=emails", None, None),
        ("JobLog search, two words", f"{logs}?q=retrying+503", None, None),
        ("dashboard, 7 d, no roll-ups yet", f"{runs}dashboard/?window=7d", None, None),
        # The same after reap_jobstatus (which rolls the hours up), as scheduled.
        ("dashboard, 7 d, after reap", f"{runs}dashboard/?window=7d", None, None),
        ("dashboard, 24 h, cold cache", f"{runs}dashboard/", None, None),
        ("dashboard, 7 d", f"{runs}dashboard/?window=7d", None, None),
        ("dashboard, 7 d, cold cache", f"{runs}dashboard/?window=7d", None, None),
        ("dashboard JSON", f"{runs}dashboard/data/", None, None),
        # "Select all" the failed runs, then Delete: the confirmation page (nothing deleted).
        (
            "delete selected, all failed",
            Post(f"{runs}?status=failed", _select_all("delete_selected", some.pk)),
            task
            and Post(
                f"{tasks}?status__exact=FAILURE",
                _select_all("delete_selected", task.pk),
            ),
            None,
        ),
        # The purge page's dry run: what the retention settings would delete now, and
        # what 7 days would (most of the runs).
        ("purge page, retention settings", f"{runs}dashboard/purge/", None, None),
        ("purge page, 7 days", f"{runs}dashboard/purge/?days=7", None, None),
    ]


def _select_all(action: str, pk: Any) -> dict[str, Any]:
    """The changelist's form for ``action`` on every matching row ("Select all"), one row ticked."""
    return {
        "action": action,
        "select_across": "1",
        "index": "0",
        "_selected_action": [str(pk)],
    }


def explain() -> None:
    from django.db import connection

    from django_jobstatus.admin.filters import JOB_NAME_CHOICES
    from django_jobstatus.models import JobRun
    from django_jobstatus.querysets import job_names_sql

    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN ANALYZE "
            + job_names_sql(connection.ops.quote_name(JobRun._meta.db_table)),
            [JOB_NAME_CHOICES],
        )
        print("\nEXPLAIN ANALYZE of the job-name filter's choices:")
        for (line,) in cursor.fetchall():
            print("  " + line)


def table_sizes() -> None:
    """Rows (exact and PostgreSQL's estimate), heap and index sizes, and VACUUM ANALYZE's time, per table."""
    from django.db import connection

    tables = [
        "django_jobstatus_jobrun",
        "django_jobstatus_joblog",
        "django_celery_results_taskresult",
    ]
    if _dtk() is not None:
        tables.append(_dtk()._meta.db_table)
    header = f"{'table':36}{'rows':>12}{'estimate':>12}{'heap MB':>9}{'indexes MB':>11}{'vacuum s':>9}"
    print(header)
    print("-" * len(header))
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
            (rows,) = cursor.fetchone()
            cursor.execute(
                "SELECT reltuples::bigint, pg_relation_size(oid), pg_indexes_size(oid)"
                " FROM pg_class WHERE oid = %s::regclass",
                [table],
            )
            estimate, heap, indexes = cursor.fetchone()
            began = time.perf_counter()
            cursor.execute(f"VACUUM ANALYZE {table}")
            took = time.perf_counter() - began
            print(
                f"{table:36}{rows:>12,}{estimate:>12,}{heap / 2**20:>9,.0f}{indexes / 2**20:>11,.0f}{took:>9.1f}"
            )
        cursor.execute(
            "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes"
            " WHERE relname IN ('django_jobstatus_jobrun', 'django_jobstatus_joblog')"
            " ORDER BY 2 DESC"
        )
        print("\nindexes of the two tables, MB:")
        for name, size in cursor.fetchall():
            print(f"  {name:44}{size / 2**20:>8,.0f}")


def run(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.test import Client
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun

    # Always: a kept database gets the migrations added since it was seeded.
    call_command("migrate", verbosity=0)
    if not options.reuse:
        seed_all(options)
    if options.sizes:
        table_sizes()
        return
    user = bench_user()
    if options.parts:
        dashboard_parts(user, options.repeat)
        return
    client = Client()
    client.force_login(user)
    sizes = (JobRun.objects.count(), JobLog.objects.count(), TaskResult.objects.count())
    print(
        f"\n{sizes[0]:,} runs, {sizes[1]:,} log lines, {sizes[2]:,} TaskResult rows; median of {options.repeat} requests (ms)\n",
        flush=True,
    )
    header = f"{'page':32}{'jobstatus':>10}{'queries':>8}{'DCR':>8}{'ratio':>8}{'DTK':>8}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    chosen = [(url, url, None, None) for url in options.url] or [
        page for page in pages() if options.only in page[0]
    ]
    for label, ours_url, theirs_url, dtk_url in chosen:
        if "after reap" in label:
            reap, ours, queries = measure_reaped(client, ours_url, options.repeat)
            print(f"{'reap_jobstatus, no roll-ups yet':32}{reap:>10.0f}{'-':>8}")
            print(f"{label:32}{ours:>10.0f}{queries:>8}", flush=True)
            vacuum_rollups()
            continue
        ours, queries = measure(
            client,
            ours_url,
            options.repeat,
            cold="cold cache" in label,
            fresh="no roll-ups" in label,
        )
        cells = []
        for url in (theirs_url, dtk_url):
            theirs = measure(client, url, options.repeat)[0] if url else None
            cells.append(
                f"{theirs:>8.0f}{theirs / ours:>7.1f}x"
                if theirs
                else f"{'-':>8}{'-':>8}"
            )
        if options.url:
            print(f"{ours:>6.0f} ms {queries:>3} queries  {label}", flush=True)
            continue
        print(f"{label:32}{ours:>10.0f}{queries:>8}{''.join(cells)}", flush=True)
        if "no roll-ups" in label:
            vacuum_rollups()
    print(
        "\nDCR = django-celery-results, DTK = django-tasks-db; ratio = their time / jobstatus' time"
        " (above 1: jobstatus is faster); queries: SQL queries of one jobstatus request"
    )
    if options.explain:
        explain()


def dashboard_parts(user: Any, repeat: int) -> None:
    """Median milliseconds of each piece of the dashboard's panels, warm and with a cold cache.

    Each piece is timed inside ``dashboard_panels()`` (its functions wrapped), so the
    table reads the same on the code of any commit; the rest is the stuck runs' query.
    """
    from collections import defaultdict

    from django.contrib import admin
    from django.core.cache import cache
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    from django_jobstatus import rollups
    from django_jobstatus.admin import dashboard
    from django_jobstatus.models import JobRun

    spent: dict[str, list[float]] = defaultdict(list)

    def wrap(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def timed_piece(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name].append((time.perf_counter() - began) * 1000)

        setattr(owner, name, timed_piece)

    for name in ("active_now", "chart", "job_table", "failure_groups", "health_panel"):
        wrap(dashboard, name)
    for name in ("figures", "_closed"):
        wrap(rollups, name)
    request = RequestFactory().get("/")
    request.user = user
    model_admin = admin.site._registry[JobRun]
    print(f"\nthe dashboard's pieces, median of {repeat} calls (ms)\n")
    print(
        f"{'piece':24}"
        + "".join(f"{w + ' ' + t:>12}" for w in ("24h", "7d") for t in ("warm", "cold"))
    )
    columns: list[dict[str, float]] = []
    for window in ("24h", "7d"):
        for cold in (False, True):
            spent.clear()
            model_admin.dashboard_panels(request, window)  # rolls up what is missing
            spent.clear()
            for _ in range(repeat):
                if cold:
                    cache.clear()
                began = time.perf_counter()
                panels = model_admin.dashboard_panels(request, window)
                spent["all panels"].append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                for template in dashboard.PANELS.values():
                    render_to_string(template, panels, request)
                spent["rendering"].append((time.perf_counter() - began) * 1000)
            columns.append(
                {name: statistics.median(times) for name, times in spent.items()}
            )
    for name in columns[0]:
        print(
            f"{name:24}"
            + "".join(f"{column.get(name, 0):>12.1f}" for column in columns)
        )


def main() -> None:
    on_scratch_database(parse(), run)


if __name__ == "__main__":
    main()
