"""Time a metrics/ scrape and a check_jobstatus pass on a big history, with their query counts.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_metrics.py
    ... --runs 100000            # a quick, small run

Seeds, in a scratch PostgreSQL database of its own (``--database``, created and dropped),
``--runs`` runs over 30 days exactly as bench_api.py does (50 job names, every tenth
failed, a few running and queued), and one monitor per job name: half with a fixed
maximum duration, half with a multiple of their p95 (the costlier: two queries). Then
times ``GET metrics/`` (Prometheus text) through Django's test Client as a superuser, and
``health.check()`` (what ``manage.py check_jobstatus`` runs), ``--repeat`` times each
after a warm-up, and prints the medians, the queries each ran, and EXPLAIN ANALYZE of
the scrape's queries.
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
)

URL = "/api/jobstatus/metrics/"
JOBS = 50


def parse() -> argparse.Namespace:
    parser = bench_parser(__doc__, runs=1_000_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=15,
        help="timed scrapes and checks (default: %(default)r)",
    )
    scratch_arguments(parser, "jobstatus_bench_metrics")
    return parser.parse_args()


def monitors() -> None:
    from django_jobstatus.models import JobMonitor

    for index in range(JOBS):
        fixed = index % 2 == 0
        JobMonitor.objects.create(
            job_name=f"bench.job_{index}",
            every=timedelta(hours=1),
            max_failures=3,
            max_duration=timedelta(minutes=5) if fixed else None,
            max_duration_p95_factor=None if fixed else 3,
        )


def median_ms(action: Any, repeat: int) -> tuple[float, float]:
    """Median and worst milliseconds of ``repeat`` calls after one warm-up."""
    action()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), max(times)


def queries_of(action: Any) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        action()
    return [query["sql"] for query in captured.captured_queries]


def run(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.test import Client

    from bench.bench_api import seed
    from django_jobstatus import health
    from django_jobstatus.models import JobMonitor, JobRun

    if not options.reuse:
        call_command("migrate", verbosity=0)
    user = bench_user()
    if not options.reuse:
        seed(options.runs, user)
        monitors()
    client = Client()
    client.force_login(user)

    def scrape() -> None:
        response = client.get(URL)
        assert response.status_code == 200, response.content[:300]  # noqa: S101

    print(
        f"\n{JobRun.objects.count():,} runs, {JobMonitor.objects.count()} monitors; "
        f"median of {options.repeat} after a warm-up\n",
        flush=True,
    )
    body = client.get(URL).content.decode()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    scrape_median, scrape_worst = median_ms(scrape, options.repeat)
    scrape_sql = [
        sql
        for sql in queries_of(scrape)
        if "django_jobstatus_" in sql and "django_session" not in sql
    ]
    health.check()  # settle the states: the timed passes store nothing new
    check_median, check_worst = median_ms(health.check, options.repeat)
    check_queries = len(queries_of(health.check))
    print(f"{'':34}{'median ms':>10}{'worst ms':>10}{'queries':>9}")
    print(
        f"{'GET metrics/ (' + str(samples) + ' samples)':34}"
        f"{scrape_median:>10.1f}{scrape_worst:>10.1f}{len(scrape_sql):>9}"
    )
    print(
        f"{'check(): ' + str(JOBS) + ' monitors':34}"
        f"{check_median:>10.1f}{check_worst:>10.1f}{check_queries:>9}"
    )
    print(
        f"\ncheck(): {check_queries} queries for {JOBS} monitors "
        f"({(check_queries - 2) / JOBS:.1f} a monitor, plus the list and the checked_at UPDATE)"
    )
    print("\nEXPLAIN ANALYZE of the scrape's queries:")
    for sql in scrape_sql:
        print()
        for line in explain(sql):
            print("  " + line)


def main() -> None:
    on_scratch_database(parse(), run)


if __name__ == "__main__":
    main()
