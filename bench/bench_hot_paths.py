"""What recording a task costs in Python: the statements from SQL text made once, or built by the ORM.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_hot_paths.py

Calls the Celery integration's real receivers in this process against the database of
DATABASE_URL (migrated first): ``before_task_publish`` (the queued run's INSERT), then
``task_prerun``, ``task_success`` and ``task_postrun`` of a worker (running, then
succeeded), and ``JobRun.objects.enqueue()`` alone. Each is timed twice, alternated in
rounds: as released (``statements``: SQL text made once) and with ``statements.usable()``
switched off, the ORM's way (a query built and compiled for every statement). The figure
is CPU time of this process per call (``time.process_time()``), which the load of other
processes moves far less than the wall time (also printed); the database's own time is
not in it. ``--profile`` prints a cProfile of the released worker path instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def parse() -> argparse.Namespace:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--calls", type=int, default=300, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per way")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the worker path instead"
    )
    return parser.parse_args()


def main() -> None:
    options = parse()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("DATABASE_URL must name a PostgreSQL database")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from django_jobstatus import own_connections, statements
    from django_jobstatus.contrib import celery
    from django_jobstatus.models import JobRun

    own_connections.track_through_own()  # as in a worker

    def task(task_id: str) -> Any:
        request = SimpleNamespace(
            hostname="bench@host",
            retries=0,
            delivery_info={"routing_key": "bench"},
            is_eager=False,
            id=task_id,
        )
        return SimpleNamespace(name="bench.noop", request=request)

    def publish(task_id: str) -> None:
        headers = {"id": task_id, "task": "bench.noop", "retries": 0}
        celery._published(
            sender="bench.noop",
            body=((1, 2, "k"), {}, {}),
            headers=headers,
            routing_key="bench",
        )
        celery._confirmed(headers=headers)

    def execute(task_id: str) -> None:
        sender = task(task_id)
        celery._prerun(task_id=task_id, task=sender, args=(1, 2, "k"), kwargs={})
        celery._succeeded(sender=sender, result=1)
        celery._postrun(task_id=task_id, retval=1, state="SUCCESS")

    def enqueue(task_id: str) -> None:
        JobRun.objects.enqueue(
            "bench.noop",
            source="celery",
            backend_job_id=task_id,
            queue="bench",
            params={"args": [1, 2, "k"], "kwargs": {}},
        )

    @contextmanager
    def way(name: str) -> Iterator[None]:
        with (
            nullcontext()
            if name == "statements"
            else mock.patch.object(statements, "usable", return_value=False)
        ):
            yield

    def timed(action: Callable[[str], None], ids: list[str]) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for task_id in ids:
            action(task_id)
        n = len(ids)
        return (
            (time.process_time() - cpu) / n * 1000,
            (time.perf_counter() - wall) / n * 1000,
        )

    if options.profile:
        profile_worker(publish, execute, options.calls)
        return

    ways = ("orm", "statements")
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(options.rounds):
        for name in ways:
            with way(name):
                ids = [str(uuid.uuid4()) for _ in range(options.calls)]
                figures.setdefault(("publish", name), []).append(timed(publish, ids))
                figures.setdefault(("execute", name), []).append(timed(execute, ids))
                figures.setdefault(("enqueue", name), []).append(
                    timed(enqueue, [str(uuid.uuid4()) for _ in ids])
                )
    report(figures, options)


def profile_worker(
    publish: Callable[[str], None], execute: Callable[[str], None], calls: int
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(calls)]
    for task_id in ids:
        publish(task_id)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for task_id in ids:
        execute(task_id)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def report(
    figures: dict[tuple[str, str], list[tuple[float, float]]],
    options: argparse.Namespace,
) -> None:
    ways = ("orm", "statements")
    print(
        f"{options.calls} calls per measurement, {options.rounds} rounds (medians), "
        "ms per call: CPU of this process (wall)"
    )
    labels = {
        "publish": "Celery enqueue (before_task_publish)",
        "execute": "Celery task in a worker (prerun, success, postrun)",
        "enqueue": "JobRun.objects.enqueue()",
    }
    print(f"{'':52}{'ORM':>16}{'SQL text':>16}{'CPU ratio':>11}")
    for key, label in labels.items():
        cells = []
        for name in ways:
            samples = figures[key, name]
            cells.append(
                (
                    statistics.median(s[0] for s in samples),
                    statistics.median(s[1] for s in samples),
                )
            )
        text = "".join(f"{cpu:8.2f} ({wall:5.2f})" for cpu, wall in cells)
        print(f"{label:52}{text}{cells[0][0] / cells[1][0]:10.1f}x")


if __name__ == "__main__":
    main()
