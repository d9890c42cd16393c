"""Realistic PostgreSQL seeding for the admin and purge benchmarks, in plain SQL (generate_series).

The shape of issue 13: 50 job names (some much busier than others) over ``days`` days,
8% failed with 1–3 KB tracebacks of varied frames, 1–19 log lines a run whose words,
numbers and levels vary, and one run with ``big_run_logs`` lines. No column holds one
constant string, so no index or statistic profits from a repeated value. The peers get
the same runs: django-celery-results' ``TaskResult`` and django-tasks-db's ``DBTaskResult``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

# pg_temp functions live as long as the seeding connection; setseed() makes the data repeatable.
FUNCTIONS = r"""
CREATE FUNCTION pg_temp.pick(words text[]) RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT words[1 + floor(random() * array_length(words, 1))::int] $$;

CREATE FUNCTION pg_temp.job_name(k int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT (ARRAY['billing','library','reports','search','mail','accounts','inventory',
              'shipping','analytics','media'])[1 + k / 5]
    || '.tasks.'
    || (ARRAY['sync_ledger','rebuild_index','send_digest','import_feed','cleanup_sessions'])[1 + k % 5]
$$;

CREATE FUNCTION pg_temp.traceback() RETURNS text LANGUAGE sql VOLATILE AS $$
SELECT 'Traceback (most recent call last):' || E'\n' || string_agg(
    '  File "/srv/app/' || pg_temp.pick(ARRAY['billing','library','reports','core','mail','api'])
    || '/' || pg_temp.pick(ARRAY['models','views','tasks','services','client','utils','forms'])
    || '.py", line ' || (1 + floor(random() * 900))::int || ', in '
    || pg_temp.pick(ARRAY['handle','run','process_batch','fetch_page','save','render','_send','commit','refresh_token'])
    || E'\n    ' || pg_temp.pick(ARRAY['result = self.client.get(url, timeout=timeout)',
        'rows = list(queryset.filter(updated_at__gte=since))', 'return super().save(*args, **kwargs)',
        'payload = json.loads(response.content)', 'for item in batch: self.apply(item)',
        'raise self.error_class(message, code=status)', 'connection.execute(statement, params)'])
    || ' # ' || substr(md5(random()::text), 1, 6 + floor(random() * 20)::int) || E'\n', '')
    || pg_temp.pick(ARRAY['ValueError','KeyError','TimeoutError','ConnectionError','IntegrityError','PermissionError'])
    || ': ' || pg_temp.pick(ARRAY['could not reach', 'unexpected value for', 'duplicate key in', 'no permission on', 'timed out reading'])
    || ' ' || substr(md5(random()::text), 1, 12) || ' after ' || floor(random() * 5000)::int || ' ms'
FROM generate_series(1, 8 + floor(random() * 16)::int)
$$;

CREATE FUNCTION pg_temp.log_message(g int, total int) RETURNS text LANGUAGE sql VOLATILE AS $$
SELECT CASE floor(random() * 6)::int
    WHEN 0 THEN 'fetched ' || floor(random() * 5000)::int || ' rows from '
        || pg_temp.pick(ARRAY['orders','invoices','books','members','events','sessions'])
        || ' in ' || floor(random() * 900)::int || ' ms'
    WHEN 1 THEN 'sent ' || floor(random() * 300)::int || ' emails to segment '
        || pg_temp.pick(ARRAY['trial','churned','weekly','vip','inactive']) || '-' || floor(random() * 99)::int
    WHEN 2 THEN 'processing batch ' || g || '/' || total || ' for customer ' || floor(random() * 100000)::int
    WHEN 3 THEN 'cache miss for key ' || substr(md5(random()::text), 1, 12)
        || ' (' || pg_temp.pick(ARRAY['profile','price','stock','avatar','quota']) || ')'
    WHEN 4 THEN 'retrying request to https://api.'
        || pg_temp.pick(ARRAY['stripe','mailgun','s3','github','openlibrary']) || '.example.com/v2/'
        || pg_temp.pick(ARRAY['charges','messages','objects','repos','works']) || '/' || floor(random() * 99999)::int
        || ' after HTTP ' || pg_temp.pick(ARRAY['429','500','502','503','504'])
    ELSE 'wrote ' || floor(random() * 90000)::int || ' bytes to /var/data/'
        || pg_temp.pick(ARRAY['exports','reports','thumbs','feeds']) || '/' || substr(md5(random()::text), 1, 10) || '.'
        || pg_temp.pick(ARRAY['csv','json','png','xml'])
END
$$;
"""

# Runs: creation times spread over the window with jitter, ids time-ordered like the app's UUIDv7.
RUNS_SQL = """
INSERT INTO {runs} (id, job_name, status, source, backend_job_id, queue, priority, subject,
    params, data, result, message, step, progress_current, progress_total, error, traceback,
    has_errors, attempt, attempts, worker, created_at, queued_at, started_at, finished_at,
    heartbeat_at, updated_at)
SELECT
    (lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(random()::text || t.i::text), 1, 19))::uuid,
    pg_temp.job_name(t.k),
    CASE WHEN t.failed THEN 'failed' ELSE 'succeeded' END,
    (ARRAY['schedule','celery','command','api','admin'])[1 + t.i %% 5],
    md5(t.i::text || 'task'), (ARRAY['default','high','low'])[1 + t.i %% 3], 0,
    pg_temp.pick(ARRAY['library.Book','auth.User','billing.Invoice','shop.Order']) || ':' || floor(random() * 500000)::int,
    jsonb_build_object('page', floor(random() * 400)::int, 'since', t.at::date::text),
    '{{}}'::jsonb,
    CASE WHEN t.failed THEN NULL ELSE jsonb_build_object('count', floor(random() * 10000)::int) END,
    CASE WHEN t.failed THEN 'failed at item ' || floor(random() * 10000)::int
        ELSE 'processed ' || floor(random() * 10000)::int || ' '
            || pg_temp.pick(ARRAY['orders','invoices','books','members','events']) END,
    pg_temp.pick(ARRAY['fetch','transform','load','notify','']),
    t.n, t.n,
    CASE WHEN t.failed THEN pg_temp.pick(ARRAY['ValueError','KeyError','TimeoutError','ConnectionError'])
        || ': ' || substr(md5(random()::text), 1, 16) ELSE '' END,
    CASE WHEN t.failed THEN pg_temp.traceback() ELSE '' END,
    t.failed, 1, '[]'::jsonb,
    'worker-' || (t.i %% 8) || ':' || (1000 + t.i %% 97),
    t.at, t.at, t.at + t.wait, t.at + t.wait + t.took, t.at + t.wait + t.took, t.at + t.wait + t.took
FROM (
    SELECT i, floor(50 * random() ^ 2)::int AS k, random() < 0.08 AS failed,
        floor(random() * 5000)::int AS n,
        make_interval(secs => random() * 3) AS wait,
        make_interval(secs => 0.05 + random() ^ 3 * 600) AS took,
        now() - make_interval(secs => %(newest)s + (%(oldest)s - %(newest)s) * (i - random()) / %(count)s::float) AS at
    FROM generate_series(1, %(count)s) AS i
) AS t
"""

# 1 to max_lines lines a run (19: 10 on average; a hash of its id), a WARNING now and then, the last line of a failed run an ERROR.
LOGS_SQL = """
INSERT INTO {logs} (run_id, created_at, level, message, extra)
SELECT r.id, r.started_at + g * interval '37 milliseconds',
    CASE WHEN r.has_errors AND g = r.lines THEN 40 WHEN random() < 0.05 THEN 30 ELSE 20 END,
    CASE WHEN r.has_errors AND g = r.lines THEN r.error ELSE pg_temp.log_message(g, r.lines) END,
    '{{}}'::jsonb
FROM (
    SELECT id, started_at, has_errors, error, 1 + abs(hashtext(id::text)) %% %(max_lines)s AS lines
    FROM {runs} WHERE job_name <> 'bench.big' ORDER BY created_at
) AS r, generate_series(1, r.lines) AS g
"""

BIG_LOGS_SQL = """
INSERT INTO {logs} (run_id, created_at, level, message, extra)
SELECT %(run)s, now() - (%(count)s - g) * interval '1 millisecond',
    CASE WHEN g %% 100 = 0 THEN 40 WHEN g %% 20 = 0 THEN 30 ELSE 20 END,
    pg_temp.log_message(g, %(count)s), '{{}}'::jsonb
FROM generate_series(1, %(count)s) AS g
"""

# django-celery-results: the same runs (names, times, failures and tracebacks).
TASKS_SQL = """
INSERT INTO {table} (task_id, periodic_task_name, task_name, task_args, task_kwargs, status,
    worker, content_type, content_encoding, result, date_created, date_started, date_done,
    traceback, meta)
SELECT id::text, NULL, job_name, '()', params::text,
    CASE WHEN status = 'failed' THEN 'FAILURE' ELSE 'SUCCESS' END, 'celery@' || worker,
    'application/json', 'utf-8', coalesce(result::text, to_jsonb(error)::text),
    created_at, started_at, finished_at, NULLIF(traceback, ''), '{{"children": []}}'
FROM {runs} WHERE job_name <> 'bench.big' AND finished_at IS NOT NULL
"""

# django-tasks-db: the same runs again.
DTK_SQL = """
INSERT INTO {table} (id, status, enqueued_at, started_at, finished_at, args_kwargs, priority,
    task_path, worker_ids, queue_name, backend_name, run_after, return_value,
    exception_class_path, traceback)
SELECT id, CASE WHEN status = 'failed' THEN 'FAILED' ELSE 'SUCCESSFUL' END, created_at,
    started_at, finished_at, jsonb_build_object('args', '[]'::jsonb, 'kwargs', params), 0,
    'bench.' || job_name, jsonb_build_array(worker), queue, 'default', '9999-01-01'::timestamptz,
    result, CASE WHEN status = 'failed' THEN 'builtins.ValueError' ELSE '' END, traceback
FROM {runs} WHERE job_name <> 'bench.big' AND finished_at IS NOT NULL
"""


def seed(
    connection: Any,
    *,
    runs: int,
    newest_days: float,
    oldest_days: float,
    big_run_logs: int = 0,
    max_lines: int = 19,
    peers: bool = True,
    timed: Any = None,
) -> None:
    """Insert ``runs`` finished runs between ``newest_days`` and ``oldest_days`` ago with their
    log lines (1 to ``max_lines`` a run: 10 on average for 19), ``big_run_logs`` lines of
    one more run "bench.big", and with ``peers`` the same runs in django-celery-results' and django-tasks-db's tables.
    """
    from django.utils import timezone

    from django_jobstatus.models import JobLog, JobRun, Status

    def step(label: str, sql: str, params: dict[str, Any] | None = None) -> None:
        def run() -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql, params or {})

        timed(label, run) if timed else run()

    tables = {"runs": JobRun._meta.db_table, "logs": JobLog._meta.db_table}
    with connection.cursor() as cursor:
        cursor.execute(FUNCTIONS)
        cursor.execute("SELECT setseed(0.13)")
    day = 86400.0
    step(
        "runs",
        RUNS_SQL.format(**tables),
        {"count": runs, "newest": newest_days * day, "oldest": oldest_days * day},
    )
    step("log lines", LOGS_SQL.format(**tables), {"max_lines": max_lines})
    if big_run_logs:
        now = timezone.now()
        big = JobRun.objects.create(
            job_name="bench.big",
            status=Status.SUCCEEDED,
            created_at=now,
            queued_at=now,
            started_at=now,
            finished_at=now,
        )
        step(
            "the big run's log lines",
            BIG_LOGS_SQL.format(**tables),
            {"run": big.pk, "count": big_run_logs},
        )
    if peers:
        from django_celery_results.models import TaskResult

        step(
            "django-celery-results rows",
            TASKS_SQL.format(table=TaskResult._meta.db_table, **tables),
        )
        try:
            from django_tasks_db.models import DBTaskResult
        except ImportError:  # django-tasks-db is optional: its column is left out
            pass
        else:
            step(
                "django-tasks-db rows",
                DTK_SQL.format(table=DBTaskResult._meta.db_table, **tables),
            )


def bench_parser(
    doc: str | None, *, runs: int | None = None, runs_help: str = "runs to seed"
) -> argparse.ArgumentParser:
    """A benchmark's options: its docstring as the description and, given ``runs``, ``--runs``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if runs is not None:
        parser.add_argument(
            "--runs",
            type=int,
            default=runs,
            help=f"{runs_help} (default: %(default)r)",
        )
    return parser


def timed(label: str, action: Callable[[], Any]) -> Any:
    """``action()``, printing how long it took."""
    began = time.perf_counter()
    value = action()
    print(f"  {label}: {time.perf_counter() - began:.1f} s", flush=True)
    return value


def explain(sql: str) -> list[str]:
    """EXPLAIN ANALYZE's lines for ``sql`` (costs left out)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}")
        return [line for (line,) in cursor.fetchall()]


def bench_user() -> Any:
    """The superuser the benchmarks' requests log in as, made on first use."""
    from django.contrib.auth.models import User

    return User.objects.filter(
        username="bench"
    ).first() or User.objects.create_superuser("bench", "bench@example.com", "bench")


def scratch_arguments(parser: Any, database: str) -> None:
    """Add the options ``on_scratch_database`` reads: ``--database``, ``--keep``, ``--reuse``."""
    parser.add_argument(
        "--database",
        default=database,
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


def on_scratch_database(options: Any, run: Callable[[Any], None]) -> None:
    """Run a benchmark on ``options.database`` (PostgreSQL): made anew unless ``--reuse``,
    dropped afterwards unless ``--keep``."""
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
