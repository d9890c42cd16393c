"""What recording costs a real worker: Celery, RQ and Django tasks, with and without the integration.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_integrations.py
    ... --quick                       # a run of a few minutes

Starts a fresh ``redis-server`` on a free port (or uses ``--redis``) and, for each
system, real workers: ``celery worker`` (prefork, ``-c 1``) with no recording, with our
integration, and recording through django-celery-results (result backend ``django-db``,
``task_track_started``, ``result_extended``); ``rqworker`` (RQ's forking Worker,
``--burst``) and django-tasks-db's ``db_worker`` (``--batch``), each with and without our
integration. Each measurement enqueues ``--tasks`` trivial tasks first (timed: the enqueue
rate, with the integration switched on in this process or not, until the queued runs
written behind the enqueues are in the database), then starts the worker;
the first and the last task stamp the time in Redis, and the rate is the tasks between
them per second, so the worker's start does not count. The systems and their modes
alternate, ``--rounds`` times; the table shows medians.

A separate pass counts what one task costs the database: each worker connects through a
proxy that counts its connections and the statements it sends (BEGIN and COMMIT
included), once with ``--count`` tasks and once with none; the difference, per task. The
enqueue side is counted in this process.

The database is ``--database`` on the server of DATABASE_URL (created when missing and
then dropped again). The last lines are the ratios of the issue's goals; ``enqueue`` is
the lowest of the three systems' ratios.

With ``--log`` each task our integration records logs one line through ``current_job()``:
an RQ work horse then connects to the database to record its job (with no line, the worker's main process
records the success, on the connection it keeps).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.contrib.dbproxy import Proxy  # noqa: E402
from tests.contrib.workers import worker_process  # noqa: E402

MODES = [
    ("celery", "none"),
    ("celery", "ours"),
    ("celery", "dcr"),
    ("rq", "none"),
    ("rq", "ours"),
    ("tasks", "none"),
    ("tasks", "ours"),
]
QUEUE = "bench"


def parse() -> argparse.Namespace:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument(
        "--tasks",
        type=int,
        default=1000,
        help="tasks per measurement (default: %(default)r)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="measurements per system and mode, alternated (default: %(default)r)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=50,
        help="tasks in the counting pass (default: %(default)r)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--tasks 200 --rounds 2 --count 20: a few minutes (default: %(default)r)",
    )
    parser.add_argument(
        "--log",
        action="store_true",
        help="each task our integration records logs one line through current_job(), which"
        " RQ's work horse then connects to the database to record (default: %(default)r)",
    )
    parser.add_argument(
        "--database",
        default="jobstatus_bench_integrations",
        help="scratch PostgreSQL database, created when missing (default: %(default)r)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="a Redis URL whose database is flushed between measurements, instead of a fresh redis-server (default: %(default)r)",
    )
    options = parser.parse_args()
    if options.quick:
        options.tasks, options.rounds, options.count = 200, 2, 20
    if options.tasks < 3 or options.rounds < 1 or options.count < 1:
        parser.error("--tasks must be 3 or more, --rounds and --count 1 or more")
    return options


# Services.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """``url``, or a fresh redis-server on a free port of 127.0.0.1 (no persistence)."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: install it, or pass --redis URL")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            import redis

            client = redis.Redis(port=port)
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=30)


def database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        sys.exit("DATABASE_URL must name a PostgreSQL server (any database on it)")
    return base.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[None]:
    """The database of ``url``, created when missing (and then dropped at the end)."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        created = not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if created:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        if created:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(server + "/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CountingProxy(Proxy):
    """The tests' proxy in front of PostgreSQL (which counts the connections, ``accepted``),
    counting the statements clients send.

    Reads the frontend protocol: a simple query ('Q') or an Execute ('E') is a statement;
    a statement outside BEGIN … COMMIT is a commit of its own.
    """

    SSL_REQUEST, GSS_REQUEST = 80877103, 80877104

    def __init__(self, target: tuple[str, int]) -> None:
        self.statements = self.commits = 0
        self._counting = threading.Lock()
        super().__init__(target)

    def reader(self) -> Callable[[bytes], None]:
        return _Reader(self).feed

    def count(self, text: bytes, *, in_transaction: bool) -> bool:
        """Count one statement; whether a transaction is open after it."""
        word = text.lstrip()[:8].upper()
        with self._counting:
            self.statements += 1
            if word.startswith((b"BEGIN", b"START")):
                return True
            if word.startswith((b"COMMIT", b"ROLLBACK", b"END")):
                self.commits += word.startswith((b"COMMIT", b"END"))
                return False
            if not in_transaction:
                self.commits += 1
            return in_transaction


class _Reader:
    """One client's stream: untyped start-up messages, then typed messages."""

    def __init__(self, proxy: CountingProxy) -> None:
        self.proxy = proxy
        self.buffer = bytearray()
        self.started = False
        self.in_transaction = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) < length:
                    return
                code = int.from_bytes(self.buffer[4:8], "big")
                del self.buffer[:length]
                if code not in (CountingProxy.SSL_REQUEST, CountingProxy.GSS_REQUEST):
                    self.started = True
                continue
            if len(self.buffer) < 5:
                return
            length = int.from_bytes(self.buffer[1:5], "big")
            if len(self.buffer) < 1 + length:
                return
            kind, body = self.buffer[0], bytes(self.buffer[5 : 1 + length])
            del self.buffer[: 1 + length]
            if kind == ord("Q"):
                self.in_transaction = self.proxy.count(
                    body.split(b"\0", 1)[0], in_transaction=self.in_transaction
                )
            elif kind == ord("E"):
                self.in_transaction = self.proxy.count(
                    b"", in_transaction=self.in_transaction
                )


# What runs in this process: enqueueing, and the state of the database.


def switch(system: str, record: str) -> None:
    """Our integration on (``ours``) or off in this process, for enqueueing."""
    from bench.integrations_celery import app
    from django_jobstatus.contrib import celery, rq, tasks

    for module in (celery, rq, tasks):
        module.disconnect()
    if record == "ours":
        if system == "celery":
            celery.connect(app)
        elif system == "rq":
            rq.connect()
        else:
            tasks.connect()


def enqueuer(system: str, record: str) -> Callable[[int, int, str], Any]:
    """A function that enqueues the task once, as a user of ``system`` would."""
    if system == "celery":
        from bench.integrations_celery import noop

        return lambda i, n, key: noop.apply_async((i, n, key), queue=QUEUE)
    if system == "rq":
        import django_rq
        from django_rq.queues import DjangoRQ

        from bench.integrations_jobs import noop as job
        from django_jobstatus.contrib import rq

        queue = django_rq.get_queue(
            QUEUE, queue_class=rq.Queue if record == "ours" else DjangoRQ
        )
        return lambda i, n, key: queue.enqueue(job, i, n, key)
    from bench.integrations_tasks import noop as task

    return lambda i, n, key: task.enqueue(i, n, key)


def enqueue(system: str, record: str, n: int, key: str) -> float:
    """Enqueue ``n`` tasks; the seconds it took, until every queued run written behind the enqueues is in."""
    from django_jobstatus import writebehind

    switch(system, record)
    send = enqueuer(system, record)
    began = time.perf_counter()
    for i in range(n):
        send(i, n, key)
    if not writebehind.flush(60):
        sys.exit("the queued runs were not written within 60 s")
    elapsed = time.perf_counter() - began
    switch(system, "none")
    return elapsed


def count_enqueue(system: str, record: str, n: int) -> float:
    """Statements per enqueue, in this process (every connection, BEGIN and COMMIT included),
    the writer of queued runs' (its thread's connection) too."""
    from unittest import mock

    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from django_jobstatus import writebehind

    behind: list[int] = []
    insert = writebehind._insert

    def counted(alias: str, rows: list[dict[str, Any]]) -> None:
        with CaptureQueriesContext(connections[alias]) as captured:
            insert(alias, rows)
        # Django logs BEGIN and COMMIT in some versions only: counted here whatever it logs.
        behind.append(
            2
            + sum(
                q["sql"] not in ("BEGIN", "COMMIT") for q in captured.captured_queries
            )
        )

    switch(system, record)
    send = enqueuer(system, record)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(writebehind, "_insert", counted))
        captured = [
            stack.enter_context(CaptureQueriesContext(connections[alias]))
            for alias in connections.settings
        ]
        for i in range(n):
            send(i, n + 1, "count")
        writebehind.flush(60)
    switch(system, "none")
    return (sum(len(c.captured_queries) for c in captured) + sum(behind)) / n


def reset(redis_url: str) -> None:
    """Empty the tables and the Redis database between measurements."""
    import redis
    from django.db import connection

    redis.Redis.from_url(redis_url).flushdb()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE django_jobstatus_joblog, django_jobstatus_jobrun,"
            " django_celery_results_taskresult, django_tasks_database_dbtaskresult"
        )


def recorded(system: str, record: str) -> int:
    """Runs (or results) recorded as finished successfully."""
    from django.db import connection

    if record == "none":
        return 0
    if record == "dcr":
        sql = "SELECT count(*) FROM django_celery_results_taskresult WHERE status = 'SUCCESS'"
    else:
        sql = "SELECT count(*) FROM django_jobstatus_jobrun WHERE status = 'succeeded'"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


# Workers.


def worker_argv(system: str) -> list[str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    if system == "celery":
        return [
            *("-m", "celery", "-A", "bench.integrations_celery", "worker"),
            *("--pool=prefork", "--concurrency=1", "--loglevel=WARNING", "-Q", QUEUE),
            *("-n", f"{name}@%h", "--without-gossip", "--without-mingle"),
            "--without-heartbeat",
        ]
    if system == "rq":
        return ["-m", "django", "rqworker", QUEUE, "--burst", "--name", name]
    return [
        *("-m", "django", "db_worker", "--batch", "--no-reload"),
        *("--no-startup-delay", "--interval", "0.1", "--worker-id", name),
    ]


@contextlib.contextmanager
def worker(
    system: str, record: str, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of ``system`` recording as ``record`` says (its output in ``log``); stopped at the end."""
    env = {
        **env,
        "BENCH_SYSTEM": system,
        "BENCH_RECORD": record,
        "DJANGO_SETTINGS_MODULE": "bench.integrations_settings",
    }
    with worker_process(worker_argv(system), env, log) as process:
        yield process


def wait(
    condition: Callable[[], Any],
    what: str,
    timeout: float,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    exited_ok: bool = False,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process.poll() is not None and not exited_ok:
            tail = log.read_text(errors="replace")[-3000:]
            sys.exit(f"the worker exited ({process.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            sys.exit(f"timed out waiting for {what}:\n{tail}")
        time.sleep(0.05)


def process_tasks(
    system: str,
    record: str,
    n: int,
    key: str,
    env: dict[str, str],
    log: Path,
    redis_url: str,
) -> float:
    """Run the ``n`` enqueued tasks in a fresh worker; the seconds from the first task to the last."""
    import redis

    client = redis.Redis.from_url(redis_url)
    with worker(system, record, env, log) as process:
        if n == 0:
            if system == "celery":
                from bench.integrations_celery import app

                wait(lambda: app.control.ping(timeout=0.5), "a ping", 120, process, log)
            else:
                process.wait(timeout=120)
            return 0.0
        last = wait(
            lambda: client.get(f"{key}:last"),
            "the last task",
            60 + n,
            process,
            log,
            exited_ok=system != "celery",
        )
        first = client.get(f"{key}:first")
        if record != "none":
            # Everything recorded, and finished, before the worker stops.
            wait(
                lambda: recorded(system, record) >= n,
                f"{n} finished runs",
                60,
                process,
                log,
                exited_ok=True,
            )
        if system != "celery":
            process.wait(timeout=120)
    return float(last) - float(first)


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    enqueues: list[float] = field(default_factory=list)
    statements: float = 0.0
    commits: float = 0.0
    connections: float = 0.0
    enqueue_statements: float = 0.0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def enqueue_rate(self) -> float:
        return statistics.median(self.enqueues)


def measure(
    options: argparse.Namespace, env: dict[str, str], log: Path
) -> dict[tuple[str, str], Figures]:
    figures = {mode: Figures() for mode in MODES}
    n = options.tasks
    for number in range(options.rounds):
        # Alternate: each round starts with another mode.
        order = MODES[number % len(MODES) :] + MODES[: number % len(MODES)]
        for system, record in order:
            reset(env["BENCH_REDIS_URL"])
            key = f"bench:{uuid.uuid4().hex}"
            # django-celery-results records nothing when a task is sent.
            enqueued = enqueue(system, "none" if record == "dcr" else record, n, key)
            elapsed = process_tasks(
                system, record, n, key, env, log, env["BENCH_REDIS_URL"]
            )
            mode = figures[system, record]
            mode.enqueues.append(n / enqueued)
            mode.rates.append((n - 1) / elapsed)
            print(
                f"  round {number + 1}: {system:6} {record:4} {mode.rates[-1]:8.1f} tasks/s"
                f"  {mode.enqueues[-1]:8.1f} enqueues/s",
                flush=True,
            )
    return figures


def count(
    options: argparse.Namespace,
    env: dict[str, str],
    log: Path,
    figures: dict[tuple[str, str], Figures],
) -> None:
    """Statements, commits and connections per task, through the counting proxy."""
    from django.db import connection

    target = (
        connection.settings_dict["HOST"] or "127.0.0.1",
        int(connection.settings_dict["PORT"] or 5432),
    )
    m = options.count
    for system, record in MODES:
        totals = []
        for n in (0, m):
            reset(env["BENCH_REDIS_URL"])
            key = f"bench:{uuid.uuid4().hex}"
            if n:
                enqueue(system, "none" if record == "dcr" else record, n, key)
            proxy = CountingProxy(target)
            try:
                process_tasks(
                    system,
                    record,
                    n,
                    key,
                    {**env, "BENCH_DB_PORT": str(proxy.port)},
                    log,
                    env["BENCH_REDIS_URL"],
                )
                time.sleep(0.2)  # the last bytes through the proxy
            finally:
                proxy.close()
            totals.append((proxy.statements, proxy.commits, proxy.accepted))
        mode = figures[system, record]
        mode.statements, mode.commits, mode.connections = (
            (after - before) / m for before, after in zip(*totals, strict=True)
        )
        reset(env["BENCH_REDIS_URL"])
        mode.enqueue_statements = count_enqueue(
            system, "none" if record == "dcr" else record, m
        )


def report(
    figures: dict[tuple[str, str], Figures], options: argparse.Namespace
) -> None:
    print(
        f"\n{options.tasks} {'tasks logging one line' if options.log else 'trivial tasks'}"
        f" per measurement, {options.rounds} rounds (medians);"
        f" counted over {options.count} tasks"
    )
    print(
        f"{'system':8}{'recording':24}{'tasks/s':>9}{'enqueues/s':>12}"
        f"{'stmts/task':>12}{'commits/task':>14}{'conns/task':>12}{'stmts/enqueue':>15}"
    )
    names = {"none": "none", "ours": "django-jobstatus", "dcr": "django-celery-results"}
    for (system, record), mode in figures.items():
        print(
            f"{system:8}{names[record]:24}{mode.rate:9.1f}{mode.enqueue_rate:12.1f}"
            f"{mode.statements:12.2f}{mode.commits:14.2f}{mode.connections:12.2f}"
            f"{mode.enqueue_statements:15.2f}"
        )
    ratio = {
        system: figures[system, "ours"].enqueue_rate
        / figures[system, "none"].enqueue_rate
        for system in ("celery", "rq", "tasks")
    }
    print(
        "enqueue ours/none per system: "
        + ", ".join(f"{system} {value:.2f}" for system, value in ratio.items())
    )
    print()
    print(
        f"celery ours/dcr {figures['celery', 'ours'].rate / figures['celery', 'dcr'].rate:.2f}"
    )
    print(
        f"celery ours/none {figures['celery', 'ours'].rate / figures['celery', 'none'].rate:.2f}"
    )
    print(f"rq ours/none {figures['rq', 'ours'].rate / figures['rq', 'none'].rate:.2f}")
    print(
        f"tasks ours/none {figures['tasks', 'ours'].rate / figures['tasks', 'none'].rate:.2f}"
    )
    print(f"enqueue ours/none {min(ratio.values()):.2f}")


def main() -> None:
    options = parse()
    # Stopped from outside: still stop the workers and Redis, and drop the database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"signal {signum}"))
    url = database_url(options.database)
    if options.log:
        os.environ["BENCH_LOG"] = "1"  # read by the workers' tasks
    with redis_server(options.redis) as redis_url, scratch_database(url):
        env = {
            **os.environ,
            "BENCH_DATABASE_URL": url,
            "BENCH_REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(
            BENCH_DATABASE_URL=url,
            BENCH_REDIS_URL=redis_url,
            DJANGO_SETTINGS_MODULE="bench.integrations_settings",
        )
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        with tempfile.TemporaryDirectory() as workdir:
            log = Path(workdir) / "workers.log"
            print("Measuring:", flush=True)
            figures = measure(options, env, log)
            print("Counting:", flush=True)
            count(options, env, log, figures)
        report(figures, options)


if __name__ == "__main__":
    main()
