"""Time the write path: a tracked job's lifecycle beside django-celery-results', and advance().

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_write_path.py
    ... --runs 200 --advances 100000      # a quick, small run

A lifecycle, on our side: ``track()`` creates the run (running), the job calls
``advance()`` 10 times inside one PROGRESS_INTERVAL, logs 2 lines and leaves the block
with a result (succeeded). On theirs: django-celery-results' ``DatabaseBackend`` records a
Celery task the way a worker with ``task_track_started`` and ``result_extended`` does,
``store_result(..., STARTED, request=...)`` then ``store_result(..., SUCCESS, request=...)``,
keeping the task's name, args, kwargs and worker. The two alternate, ``--runs`` times each
after a warm-up; the queries are counted in a separate pass on every connection.

Then ``advance()`` is called ``--advances`` times in one run, with the default interval
and with ``--short-interval``; the writes are counted on the connection (execute_wrapper)
and checked against the bound elapsed / interval + 3. Beside it, Celery's way to report
progress, ``update_state()`` (one ``store_result`` per call), timed ``--updates`` times.

On SQLite (a file in a temporary directory) and, when DATABASE_URL names PostgreSQL, in
a scratch PostgreSQL database of its own (``--database``, created and dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

PARAMS = {"user_id": 42, "mode": "full"}
RESULT = {"rows": 10}
HOSTNAME = "celery@bench"
WARM_UP = 50
COUNTED = 20  # lifecycles per side in the query-counting pass


def parse() -> argparse.Namespace:
    from bench.seeding import bench_parser

    parser = bench_parser(
        __doc__, runs=2000, runs_help="timed lifecycles per side and database"
    )
    parser.add_argument(
        "--advances",
        type=int,
        default=1_000_000,
        help="advance() calls in the one run (default: %(default)r)",
    )
    parser.add_argument(
        "--short-interval",
        type=float,
        default=0.01,
        help="the second, short progress interval for advance(), s (default: %(default)r)",
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=2000,
        help="timed Celery update_state() calls (default: %(default)r)",
    )
    parser.add_argument(
        "--database",
        default="jobstatus_bench_write",
        help="scratch PostgreSQL database, created and dropped (default: %(default)r)",
    )
    return parser.parse_args()


@dataclass
class Side:
    """What one side measured on one database."""

    times_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)  # this process's CPU time
    queries: float = 0.0
    rows: int = 0
    advance_ns: float = 0.0  # per call, default interval
    advance_writes: int = 0
    advance_bound: float = 0.0
    short_ns: float = 0.0  # per call, short interval
    short_writes: int = 0
    short_bound: float = 0.0


# The two lifecycles.


def ours(alias: str) -> None:
    """A tracked job's lifecycle; it writes to ``alias`` because on() made it JOBSTATUS["DATABASE"]."""
    from django_jobstatus.tracking import track

    with track("bench.job", params=PARAMS) as job:
        for _ in range(10):
            job.advance()
        job.info("loaded %d rows", 10)
        job.info("done")
        job.result = RESULT


class Theirs:
    """A Celery task's lifecycle as a worker records it through django-celery-results."""

    def __init__(self) -> None:
        from celery import Celery
        from django_celery_results.backends.database import DatabaseBackend

        app = Celery("bench", set_as_current=False)
        app.conf.result_extended = True  # keep the task's name, args, kwargs and worker
        self.backend = DatabaseBackend(app=app)

    def request(self, task_id: str) -> Any:
        from celery.app.task import Context

        return Context(
            id=task_id,
            task="bench.job",
            args=[],
            kwargs=PARAMS,
            argsrepr="()",
            kwargsrepr=repr(PARAMS),
            hostname=HOSTNAME,
            delivery_info={},
        )

    def __call__(self, alias: str) -> None:
        from celery import states

        task_id = str(uuid.uuid4())
        request = self.request(task_id)
        # celery.app.trace: track_started, then mark_as_done's store_result.
        self.backend.store_result(
            task_id,
            {"pid": os.getpid(), "hostname": HOSTNAME},
            states.STARTED,
            request=request,
            using=alias,
        )
        self.backend.store_result(
            task_id, RESULT, states.SUCCESS, request=request, using=alias
        )


# Measuring.


def admin_sql(sql: str) -> None:
    """Run ``sql`` on the PostgreSQL server's maintenance database (CREATE/DROP DATABASE)."""
    from django.db import connections

    base = connections["postgresql"]
    params = base.get_connection_params() | {"dbname": "postgres", "autocommit": True}
    with base.Database.connect(**params) as conn:  # type: ignore[attr-defined]
        conn.execute(sql)


@contextlib.contextmanager
def on(alias: str) -> Iterator[None]:
    """Make ``alias`` the database django-jobstatus writes to."""
    from django.conf import settings
    from django.test import override_settings

    with override_settings(JOBSTATUS={**settings.JOBSTATUS, "DATABASE": alias}):
        yield


def count_queries(action: Callable[[], None]) -> int:
    """Queries ``action`` ran, on every connection (the tracking side connection included)."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with contextlib.ExitStack() as stack:
        captured = [
            stack.enter_context(CaptureQueriesContext(connections[alias]))
            for alias in connections.settings
        ]
        action()
    return sum(len(capture.captured_queries) for capture in captured)


def row_count(alias: str) -> int:
    from django_celery_results.models import TaskResult

    from django_jobstatus.models import JobLog, JobRun

    return sum(
        model.objects.using(alias).count() for model in (JobRun, JobLog, TaskResult)
    )


def repeat(action: Callable[[], None], times: int) -> Callable[[], None]:
    def repeated() -> None:
        for _ in range(times):
            action()

    return repeated


def lifecycles(alias: str, runs: int, results: dict[str, Side]) -> None:
    theirs = Theirs()
    sides = {"ours": lambda: ours(alias), "theirs": lambda: theirs(alias)}
    for name, lifecycle in sides.items():
        for _ in range(WARM_UP):
            lifecycle()
        before = row_count(alias)
        results[name].queries = count_queries(repeat(lifecycle, COUNTED)) / COUNTED
        results[name].rows = (row_count(alias) - before) // COUNTED
    for _ in range(runs):  # alternate, so that a busy moment of the machine hits both
        for name, lifecycle in sides.items():
            began, began_cpu = time.perf_counter_ns(), time.process_time_ns()
            lifecycle()
            results[name].cpu_ns.append(time.process_time_ns() - began_cpu)
            results[name].times_ns.append(time.perf_counter_ns() - began)


class WriteCounter:
    """An execute wrapper counting the INSERTs and UPDATEs sent on a connection."""

    def __init__(self) -> None:
        self.writes = 0

    def __call__(
        self,
        execute: Any,
        sql: str,
        params: Any,
        many: bool,  # noqa: FBT001 (Django calls it positionally)
        context: Any,
    ) -> Any:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            self.writes += 1
        return execute(sql, params, many, context)


def advance(alias: str, calls: int, interval: float) -> tuple[float, int, float]:
    """ns per advance() call, progress writes made during the calls, and their bound."""
    from django.db import connections

    from django_jobstatus.tracking import track

    counter = WriteCounter()
    with (
        connections[alias].execute_wrapper(counter),
        track("bench.advance", interval=interval) as job,
    ):
        before = counter.writes
        began = time.perf_counter()
        for _ in range(calls):
            job.advance()
        elapsed = time.perf_counter() - began
        writes = counter.writes - before
    return elapsed * 1e9 / calls, writes, elapsed / interval + 3


def update_state(alias: str, calls: int) -> float:
    """ns per Celery ``update_state(state="PROGRESS", meta=...)`` call (a store_result each)."""
    theirs = Theirs()
    task_id = str(uuid.uuid4())
    request = theirs.request(task_id)
    theirs.backend.store_result(task_id, None, "STARTED", request=request, using=alias)
    began = time.perf_counter()
    for i in range(calls):
        theirs.backend.store_result(
            task_id,
            {"current": i, "total": calls},
            "PROGRESS",
            request=request,
            using=alias,
        )
    return (time.perf_counter() - began) * 1e9 / calls


def measure(alias: str, options: argparse.Namespace) -> dict[str, Side]:
    from django.core.management import call_command
    from django.db import connections

    from django_jobstatus.conf import settings

    vendor = connections[alias].vendor
    print(f"{vendor}: migrating, then {options.runs:,} lifecycles per side", flush=True)
    call_command("migrate", database=alias, verbosity=0)
    results = {"ours": Side(), "theirs": Side()}
    with on(alias):
        lifecycles(alias, options.runs, results)
        print(f"{vendor}: advance() x {options.advances:,}", flush=True)
        mine = results["ours"]
        mine.advance_ns, mine.advance_writes, mine.advance_bound = advance(
            alias, options.advances, settings.PROGRESS_INTERVAL
        )
        mine.short_ns, mine.short_writes, mine.short_bound = advance(
            alias, options.advances, options.short_interval
        )
        results["theirs"].advance_ns = update_state(alias, options.updates)
    return results


# Reporting.


def us(ns: float) -> str:
    return f"{ns / 1000:,.0f}"


def ratio(mine: float, theirs: float) -> str:
    value = mine / theirs
    return f"{value:.2f}" if value >= 0.01 else f"{value:.0e}"


def table(measured: dict[str, dict[str, Side]], options: argparse.Namespace) -> None:
    from django_jobstatus.conf import settings

    interval = settings.PROGRESS_INTERVAL
    rows: list[tuple[str, Callable[[Side], float], Callable[[float], str]]] = [
        ("lifecycle, median µs", lambda s: statistics.median(s.times_ns), us),
        ("lifecycle, mean µs", lambda s: statistics.fmean(s.times_ns), us),
        ("lifecycle, CPU µs, mean", lambda s: statistics.fmean(s.cpu_ns), us),
        ("lifecycle, queries*", lambda s: s.queries, lambda v: f"{v:g}"),
        ("lifecycle, rows written", lambda s: s.rows, lambda v: f"{v:g}"),
        ("progress update, ns/call", lambda s: s.advance_ns, lambda v: f"{v:,.0f}"),
    ]
    header = f"{'':28}"
    for vendor in measured:
        header += f"{vendor:>13}{'jobstatus':>11}{'celery-res':>11}{'ratio':>7}"
    print()
    print(header)
    for label, value, shown in rows:
        line = f"{label:28}"
        for results in measured.values():
            mine, theirs = value(results["ours"]), value(results["theirs"])
            line += (
                f"{'':13}{shown(mine):>11}{shown(theirs):>11}{ratio(mine, theirs):>7}"
            )
        print(line)
    print()
    print(
        "ratio = jobstatus / django-celery-results; below 1 is cheaper. *Counted on every\n"
        "connection, BEGIN and COMMIT included. CPU: this process only (SQLite's work is in\n"
        "it, PostgreSQL's is not). Progress update: our advance() (throttled) against\n"
        "Celery's update_state() (a store_result per call)."
    )
    print(
        "Recorded by jobstatus: job name, params, worker, status, started/finished, heartbeat,\n"
        "progress 10, 2 log lines, result. By celery-results: task name, args, kwargs, worker,\n"
        "status, started/done, result, meta."
    )
    print()
    for vendor, results in measured.items():
        mine = results["ours"]
        for label, ns, writes, bound, every in (
            (
                "default",
                mine.advance_ns,
                mine.advance_writes,
                mine.advance_bound,
                interval,
            ),
            (
                "short",
                mine.short_ns,
                mine.short_writes,
                mine.short_bound,
                options.short_interval,
            ),
        ):
            verdict = "within" if writes <= bound else "OVER"
            print(
                f"{vendor}: advance() x {options.advances:,}, {label} interval {every:g} s: "
                f"{ns:,.0f} ns/call, {writes} progress writes, {verdict} the bound "
                f"elapsed/interval + 3 = {bound:,.1f}"
            )


def main() -> None:
    options = parse()
    import django
    from django.conf import settings

    default = settings.DATABASES["default"]
    scratch = Path(tempfile.mkdtemp(prefix="jobstatus-bench-"))
    # SQLite is "default": some migrations (django-tasks-db's) write through the default alias.
    databases = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(scratch / "bench.sqlite3"),
        }
    }
    if "postgresql" in default["ENGINE"]:
        databases["postgresql"] = {**default, "NAME": options.database}
    settings.DATABASES = databases
    django.setup()
    from django.db import connections

    if "postgresql" in databases:
        admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')
        admin_sql(f'CREATE DATABASE "{options.database}"')
    else:
        print("DATABASE_URL does not name PostgreSQL: SQLite only.")
    try:
        measured = {
            connections[alias].vendor: measure(alias, options) for alias in databases
        }
        table(measured, options)
    finally:
        connections.close_all()
        if "postgresql" in databases:
            admin_sql(f'DROP DATABASE IF EXISTS "{options.database}"')
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
