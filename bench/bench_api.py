"""Time the REST API on a big history: a list request per single filter, and the stats endpoint.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_api.py
    ... --runs 100000            # a quick, small run

Seeds, in a scratch PostgreSQL database of its own (``--database``, created and dropped),
``--runs`` runs over 30 days with SQL generate_series: 50 job names, every tenth failed
(and has_errors), a few running, queued, killed, kill-requested; four sources, 100,000
subjects, params ``{"user_id": 0..4999, ...}``, every hundredth owned by a user, 50
children of one parent. Then requests each URL with Django's test Client as a superuser,
``--repeat`` times after a warm-up, prints the median per URL, and EXPLAIN ANALYZE of the
query each list request ran (the index it used). Migration 0002's GIN indexes (params,
and pg_trgm for ?q=) are part of the schema being timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.seeding import (  # noqa: E402 (after sys.path)
    bench_parser,
    bench_user,
    explain,
    on_scratch_database,
    scratch_arguments,
    timed,
)

DAYS = 30
BASE = "/api/jobstatus/runs/"

RUNS_SQL = """
INSERT INTO {runs} (id, job_name, status, source, backend_job_id, queue, priority, subject,
    params, data, message, step, progress_current, error, traceback, has_errors, attempt,
    attempts, worker, owner_id, created_at, queued_at, started_at, finished_at, heartbeat_at,
    kill_requested_at, updated_at)
SELECT
    (lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || '7'
        || substr(md5('api' || t.i::text), 1, 19))::uuid,
    'bench.job_' || (t.i %% 50)::text,
    t.status, (ARRAY['celery', 'rq', 'schedule', 'command'])[t.i %% 4 + 1], '', '', 0,
    'shop.Order:' || (t.i %% 100000)::text,
    jsonb_build_object('user_id', t.i %% 5000, 'mode', CASE WHEN t.i %% 2 = 0 THEN 'full' ELSE 'quick' END),
    '{{}}'::jsonb, 'processed ' || t.i::text || ' rows', '', 0,
    CASE WHEN t.status = 'failed' THEN 'RuntimeError: boom' ELSE '' END, '', t.status = 'failed', 1,
    '[]'::jsonb, 'bench:1', CASE WHEN t.i %% 100 = 0 THEN %(owner)s END,
    t.at, t.at,
    CASE WHEN t.status <> 'queued' THEN t.at + interval '1 second' END,
    CASE WHEN t.status NOT IN ('queued', 'running') THEN t.at + make_interval(secs => 1 + t.i %% 600) END,
    t.at, CASE WHEN t.i %% 5000 = 0 OR t.status = 'killed' THEN t.at END, t.at
FROM (
    SELECT i, now() - make_interval(secs => %(span)s * i / %(count)s::float) AS at,
        CASE WHEN i %% 1000 = 0 THEN 'running' WHEN i %% 1000 = 1 THEN 'queued'
             WHEN i %% 10 = 0 THEN 'failed' WHEN i %% 97 = 0 THEN 'killed' ELSE 'succeeded' END AS status
    FROM generate_series(1, %(count)s) AS i
) AS t
"""


def parse() -> argparse.Namespace:
    parser = bench_parser(__doc__, runs=1_000_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=7,
        help="timed requests per URL (default: %(default)r)",
    )
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the EXPLAIN ANALYZE plans (default: %(default)r)",
    )
    scratch_arguments(parser, "jobstatus_bench_api")
    return parser.parse_args()


def seed(runs: int, owner: Any) -> None:
    from django.db import connection

    from django_jobstatus.models import JobLog, JobRun

    table = JobRun._meta.db_table
    print(f"Seeding {runs:,} runs over {DAYS} days", flush=True)
    with connection.cursor() as cursor:
        cursor.execute(
            "SET session_replication_role = replica"
        )  # no FK triggers while bulk loading
        timed(
            "runs",
            lambda: cursor.execute(
                RUNS_SQL.format(runs=table),
                {"count": runs, "span": DAYS * 86400.0, "owner": owner.pk},
            ),
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        parent = (
            JobRun.objects.filter(job_name="bench.job_7")
            .order_by("-created_at")
            .first()
        )
        children = (
            JobRun.objects.filter(job_name="bench.job_8")
            .order_by("-created_at")
            .values("pk")[:50]
        )
        JobRun.objects.filter(pk__in=children).update(parent=parent)
        timed(
            "vacuum analyze",
            lambda: [
                cursor.execute(f"VACUUM ANALYZE {name}")
                for name in (table, JobLog._meta.db_table)
            ],
        )


def urls() -> list[tuple[str, str]]:
    from django.utils import timezone

    from django_jobstatus.models import JobRun

    parent = (
        JobRun.objects.filter(children__isnull=False)
        .values_list("pk", flat=True)
        .first()
    )
    owner = (
        JobRun.objects.filter(owner__isnull=False)
        .values_list("owner_id", flat=True)
        .first()
    )
    # A run some way into one job's history: the 501st newest, or the oldest of a shorter one
    # (--runs 2000 seeds 40 runs a job).
    named = (
        JobRun.objects.filter(job_name="bench.job_3")
        .order_by("-created_at", "-pk")
        .values_list("pk", flat=True)
    )
    some = next(iter(named[500:501]), None) or named.last()
    day_ago = (timezone.now() - timedelta(hours=24)).isoformat()
    hour_ago_ms = str(int((timezone.now() - timedelta(hours=1)).timestamp() * 1000))
    return [
        ("no filter", BASE),
        ("status=failed", f"{BASE}?status=failed"),
        ("status=running", f"{BASE}?status=running"),
        ("status=active", f"{BASE}?status=active"),
        ("job_name", f"{BASE}?job_name=bench.job_7"),
        ("job_name, 3 names", f"{BASE}?job_name=bench.job_7,bench.job_8,bench.job_9"),
        ("source", f"{BASE}?source=rq"),
        ("subject", f"{BASE}?subject=shop.Order:4242"),
        ("owner", f"{BASE}?owner={owner}"),
        ("parent", f"{BASE}?parent={parent}"),
        ("has_errors", f"{BASE}?has_errors=true"),
        ("kill_requested", f"{BASE}?kill_requested=true"),
        ("created_after (ISO)", f"{BASE}?created_after={day_ago.replace('+', '%2B')}"),
        ("created_before (ms)", f"{BASE}?created_before={hour_ago_ms}"),
        ("started_after", f"{BASE}?started_after={day_ago.replace('+', '%2B')}"),
        ("finished_after", f"{BASE}?finished_after={day_ago.replace('+', '%2B')}"),
        ("period=1h", f"{BASE}?period=1h"),
        ("q (rare text)", f"{BASE}?q=Order:4242"),
        ("q (common text)", f"{BASE}?q=processed"),
        ("q (run id)", f"{BASE}?q={some}"),
        ('params={"user_id": 42}', f'{BASE}?params={{"user_id":42}}'),
        ("ordering=-finished_at", f"{BASE}?ordering=-finished_at"),
        ("ordering=-started_at", f"{BASE}?ordering=-started_at"),
        ("ordering=-duration", f"{BASE}?ordering=-duration"),
        ("ordering=job_name", f"{BASE}?ordering=job_name"),
        ("page 2 (cursor)", "NEXT"),
        ("detail", f"{BASE}{some}/"),
        ("latest", f"{BASE}latest/?job_name=bench.job_7"),
        ("stats, 24 h", f"{BASE}stats/?period=24h"),
        ("stats, 24 h, bucket=hour", f"{BASE}stats/?period=24h&bucket=hour"),
    ]


def measure(client: Any, url: str, repeat: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeat`` requests after one warm-up, and the warm-up's response."""
    first = client.get(url)
    if first.status_code != 200:
        sys.exit(f"{url} answered {first.status_code}: {first.content[:300]!r}")
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), first


def run_queries(client: Any, url: str) -> list[str]:
    """The SQL of the runs queries a request ran: a list's page query (the one with LIMIT), or every aggregate."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    queries = [
        query["sql"]
        for query in captured.captured_queries
        if query["sql"].startswith("SELECT")
        and "django_jobstatus_jobrun" in query["sql"]
    ]
    pages = [sql for sql in queries if "LIMIT" in sql]
    return pages[:1] if pages else [sql for sql in queries if "GROUP BY" in sql]


def run(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.test import Client

    from django_jobstatus.models import JobRun

    if not options.reuse:
        call_command("migrate", verbosity=0)
    user = bench_user()
    if not options.reuse:
        seed(options.runs, user)
    client = Client()
    client.force_login(user)
    print(
        f"\n{JobRun.objects.count():,} runs; median of {options.repeat} requests (ms)\n",
        flush=True,
    )
    header = f"{'request':28}{'median ms':>10}{'rows':>6}"
    print(header)
    print("-" * len(header))
    plans: list[tuple[str, list[str]]] = []
    next_url = None
    for label, url in urls():
        if url == "NEXT":
            url = next_url
        median, response = measure(client, url, options.repeat)
        body = response.json()
        rows = (
            len(body["results"])
            if "results" in body
            else len(body.get("jobs", []))
            if "jobs" in body
            else 1
        )
        if label == "no filter":
            next_url = body["next"].replace("http://testserver", "")
        print(f"{label:28}{median:>10.1f}{rows:>6}", flush=True)
        if not options.no_explain and label not in ("detail", "latest"):
            plans += [(label, explain(sql)) for sql in run_queries(client, url)]
    if plans:
        print("\nEXPLAIN ANALYZE of each request's runs query (stats: each aggregate):")
        for label, lines in plans:
            print(f"\n{label}:")
            for line in lines:
                print("  " + line)


def main() -> None:
    on_scratch_database(parse(), run)


if __name__ == "__main__":
    main()
