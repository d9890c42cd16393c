"""Fast PostgreSQL seeding of many finished runs and log lines with generate_series (tests and bench)."""

from __future__ import annotations

from typing import Any

from django_jobstatus.models import JobLog, JobRun

RUNS_SQL = """
INSERT INTO {runs} (id, job_name, status, source, backend_job_id, queue, priority, subject,
    params, data, message, step, progress_current, error, traceback, has_errors, attempt,
    attempts, worker, created_at, queued_at, started_at, finished_at, heartbeat_at, updated_at)
SELECT
    -- time-ordered like the app's UUIDv7: milliseconds first, then digits of the row number
    (lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(%(prefix)s || t.i::text), 1, 19))::uuid,
    %(prefix)s || (t.i %% %(jobs)s)::text,
    CASE WHEN t.i %% 10 = 0 THEN 'failed' ELSE 'succeeded' END,
    'schedule', '', '', 0, '', '{{"n": 1}}'::jsonb, '{{}}'::jsonb, 'done', '', 0,
    CASE WHEN t.i %% 10 = 0 THEN 'RuntimeError: boom' ELSE '' END, '', t.i %% 10 = 0, 1,
    '[]'::jsonb, 'seed:1', t.at, t.at, t.at, t.at + interval '2 seconds', t.at, t.at
FROM (
    SELECT i, now() - make_interval(secs => %(newest)s + (%(oldest)s - %(newest)s) * i / %(count)s::float) AS at
    FROM generate_series(1, %(count)s) AS i
) AS t
"""

LOGS_SQL = """
INSERT INTO {logs} (run_id, created_at, level, message, extra)
SELECT r.id, r.created_at + g * interval '1 millisecond', 20, 'seeded line ' || g, '{{}}'::jsonb
FROM {runs} AS r, generate_series(1, %(per_run)s) AS g
WHERE r.job_name LIKE %(like)s
"""


def seed(
    connection: Any,
    *,
    runs: int,
    logs_per_run: int,
    jobs: int = 10,
    newest_days: float = 0,
    oldest_days: float = 90,
    prefix: str = "seed.job_",
) -> None:
    """Insert ``runs`` finished runs (every tenth failed) spread evenly between ``newest_days``
    and ``oldest_days`` ago over ``jobs`` job names, each with ``logs_per_run`` log lines.
    """
    tables = {"runs": JobRun._meta.db_table, "logs": JobLog._meta.db_table}
    day = 86400.0
    with connection.cursor() as cursor:
        cursor.execute(
            RUNS_SQL.format(**tables),
            {
                "prefix": prefix,
                "jobs": jobs,
                "count": runs,
                "newest": newest_days * day,
                "oldest": oldest_days * day,
            },
        )
        if logs_per_run:
            cursor.execute(
                LOGS_SQL.format(**tables),
                {"per_run": logs_per_run, "like": prefix.replace("_", "\\_") + "%"},
            )
        cursor.execute(f"ANALYZE {tables['runs']}")
        cursor.execute(f"ANALYZE {tables['logs']}")
