"""Run every benchmark in bench/ in turn, each in a process of its own, and print its output.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/run.py
    ... --quick                   # small sizes: a few minutes instead of an hour or more
    ... bench_write_path          # only the benchmarks named

``make bench`` runs this (``make bench BENCH_ARGS=--quick`` for the small sizes). Without
``--quick`` each benchmark runs at its documented full size (a million runs for the
admin, API and purge benchmarks). The exit status is 1 when any benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# In the order they run; a benchmark not listed runs after these, with no arguments.
QUICK = {
    "bench_write_path": ["--runs", "200", "--advances", "100000", "--updates", "200"],
    "bench_api": ["--runs", "50000", "--repeat", "3"],
    "bench_admin": [
        *("--runs", "20000", "--big-run-logs", "5000"),
        *("--repeat", "3"),
    ],
    "bench_purge": ["--runs", "30000"],
    "bench_connections": ["--requests", "100", "--rounds", "1", "--runs", "2000"],
    "bench_integrations": ["--quick"],
    "bench_metrics": ["--runs", "50000", "--repeat", "5"],
    "bench_export": ["--runs", "50000"],
    "bench_index_cost": ["--runs", "20000", "--rounds", "1", "--lifecycles", "200"],
}


def parse(found: list[str]) -> argparse.Namespace:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, to check that every benchmark runs (default: %(default)r)",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run, of {', '.join(found)} (default: all)",
    )
    options = parser.parse_args()
    unknown = set(options.names) - set(found)
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    return options


def main() -> None:
    listed = [name for name in QUICK if (HERE / f"{name}.py").exists()]
    others = sorted(
        path.stem for path in HERE.glob("bench_*.py") if path.stem not in QUICK
    )
    found = listed + others
    options = parse(found)
    failed = []
    for name in options.names or found:
        command = [sys.executable, str(HERE / f"{name}.py")]
        if options.quick:
            command += QUICK.get(name, [])
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        began = time.perf_counter()
        code = subprocess.call(command)
        elapsed = time.perf_counter() - began
        print(f"=== {name}: exit {code} after {elapsed:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"\nFailed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
