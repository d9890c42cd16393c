"""What indexes cost the write path on a big table: tracked lifecycles with and without them, in turns.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_index_cost.py
    ... --reuse --keep --database bench_admin_main   # a database bench_admin.py --keep left
    ... --rounds 5 --lifecycles 1500 --index jobstatus_run_source_idx --index jobstatus_run_worker_idx

Seeds ``--runs`` runs with their log lines (``bench/seeding.py``, a million by default)
in a scratch database, or reuses a kept one. Each round times ``--lifecycles`` lifecycles (``track()`` creates a running run, 10 ``advance()`` calls inside
one interval, 2 log lines, the run succeeds: an INSERT and a non-HOT UPDATE, each
writing every index of the runs) with the indexes (``--index``; by default the filters'
indexes of migration 0014) and as many without them (dropped, then built again), the
two taking turns to go first. Prints each turn's median and mean lifecycle and the database backend's CPU
(read from ``/proc``: the server must run on this machine). The runs it wrote are
deleted and the indexes are there again at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

FILTER_INDEXES = (
    "jobstatus_run_source_idx",
    "jobstatus_run_worker_idx",
    "jobstatus_run_queue_idx",
    "jobstatus_run_kill_idx",
    "jobstatus_run_errors_idx",
    "jobstatus_run_cause_idx",
)
PREFIX = "bench.index_cost."


def parse() -> argparse.Namespace:
    from bench.seeding import bench_parser, scratch_arguments

    parser = bench_parser(__doc__, runs=1_000_000)
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        help="an index to time with and without (repeat it; default: the filters' indexes of 0014)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="with/without turns (default: %(default)r)",
    )
    parser.add_argument(
        "--lifecycles",
        type=int,
        default=1500,
        help="lifecycles a turn (default: %(default)r)",
    )
    scratch_arguments(parser, "jobstatus_bench_index_cost")
    return parser.parse_args()


def lifecycles(count: int) -> list[float]:
    from django_jobstatus.tracking import track

    took = []
    for i in range(count):
        began = time.perf_counter()
        with track(f"{PREFIX}job{i % 40}", params={"i": i}) as job:
            for _ in range(10):
                job.advance()
            job.info("loaded %d rows", i)
            job.info("done")
        took.append(time.perf_counter() - began)
    return took


def backend_cpu() -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(options: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    from bench.seeding import seed
    from django_jobstatus.models import JobRun

    call_command("migrate", verbosity=0)
    if not options.reuse:
        print(f"Seeding {options.runs:,} runs with their log lines", flush=True)
        with connection.cursor() as cursor:
            # Bulk load: no foreign-key triggers (the rows are consistent by construction).
            cursor.execute("SET session_replication_role = replica")
            seed(
                connection,
                runs=options.runs,
                newest_days=0.01,
                oldest_days=30,
                peers=False,
            )
            cursor.execute("SET session_replication_role = DEFAULT")
            cursor.execute(f"VACUUM ANALYZE {JobRun._meta.db_table}")
    names = options.index or list(FILTER_INDEXES)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
            [names],
        )
        definitions = dict(cursor.fetchall())
    missing = set(names) - set(definitions)
    if missing:
        sys.exit(f"not in {options.database}: {', '.join(sorted(missing))}")

    def indexes(*, present: bool) -> None:
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(
                    definitions[name].replace(
                        "CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1
                    )
                    if present
                    else f"DROP INDEX IF EXISTS {name}"
                )

    print(
        f"{JobRun.objects.count():,} runs; with and without {', '.join(names)}",
        flush=True,
    )
    lifecycles(200)  # warm-up
    figures: dict[str, list[tuple[float, float, float]]] = {"with": [], "without": []}
    try:
        for number in range(options.rounds):
            # Turn about: each round takes the two in the other order.
            for mode in list(figures)[:: 1 if number % 2 == 0 else -1]:
                indexes(present=mode == "with")
                cpu = backend_cpu()
                took = lifecycles(options.lifecycles)
                cpu = backend_cpu() - cpu
                row = (statistics.median(took) * 1e6, statistics.mean(took) * 1e6, cpu)
                figures[mode].append(row)
                print(
                    f"round {number}  {mode:8} median {row[0]:7,.0f} µs"
                    f"  mean {row[1]:7,.0f} µs  server CPU {row[2]:.2f} s",
                    flush=True,
                )
    finally:
        indexes(present=True)
        JobRun.objects.filter(job_name__startswith=PREFIX).delete()
    print()
    for mode, rows in figures.items():
        median = statistics.median(row[0] for row in rows)
        cpu = statistics.mean(row[2] for row in rows) / options.lifecycles * 1e6
        print(
            f"{mode:8} median of the medians {median:7,.0f} µs,"
            f" server CPU {cpu:,.0f} µs a lifecycle"
        )


def main() -> None:
    from bench.seeding import on_scratch_database

    on_scratch_database(parse(), run)


if __name__ == "__main__":
    main()
