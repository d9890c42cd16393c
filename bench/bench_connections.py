"""What Django's CONN_MAX_AGE costs the admin and the API: a new PostgreSQL session per request, or one kept.

Serves the demo project (testproject) from a real WSGI server in another process, once with
Django's default ``CONN_MAX_AGE = 0`` and once with ``CONN_MAX_AGE = 60`` and
``CONN_HEALTH_CHECKS = True``, in alternating rounds; a logged-in client requests the runs
changelist and the API's run list in turn. Prints the median and mean time a request took,
the server's CPU time a request, and the PostgreSQL sessions opened a request.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_connections.py
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["/admin/django_jobstatus/jobrun/", "/api/jobstatus/runs/"]
CONFIGS = {
    "CONN_MAX_AGE=0 (default)": {"CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False},
    "CONN_MAX_AGE=60 + health checks": {"CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True},
}


def serve(port: int, max_age: int, *, health_checks: bool) -> None:
    """The server process: the demo project under wsgiref, one request at a time."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    sys.path.insert(0, str(ROOT))
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = max_age
    settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] = health_checks
    settings.DEBUG = False
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.core.wsgi import get_wsgi_application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    make_server(
        "127.0.0.1", port, get_wsgi_application(), handler_class=Quiet
    ).serve_forever()


def setup(count: int) -> None:
    """Migrate, create the bench user and seed ``count`` runs with log lines (once)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import random

    from django.core.management import call_command
    from django.utils import timezone

    from bench.seeding import bench_user
    from django_jobstatus.models import JobLog, JobRun, Status

    call_command("migrate", verbosity=0)
    bench_user()
    have = JobRun.objects.count()
    if have >= count:
        return
    rng = random.Random(7)
    names = [
        f"{area}.{verb}"
        for area in ("billing", "imports", "mail", "search", "reports")
        for verb in ("sync", "build", "send", "index")
    ]
    now = timezone.now()
    runs = []
    for i in range(count - have):
        created = now - timezone.timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        status = rng.choices(
            [Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.LOST], [88, 8, 2, 2]
        )[0]
        started = created + timezone.timedelta(seconds=rng.randint(0, 30))
        failed = status == Status.FAILED
        runs.append(
            JobRun(
                job_name=rng.choice(names),
                status=status,
                source=rng.choice(["celery", "rq", "command", "schedule"]),
                subject=f"library.Book:{rng.randint(1, 50_000)}",
                params={"batch": i, "user_id": rng.randint(1, 900)},
                message=f"Processed {rng.randint(1, 9_000)} of {rng.randint(9_000, 20_000)} rows",
                error=f"ValueError: row {rng.randint(1, 10**6)} has no id"
                if failed
                else "",
                traceback=(
                    "Traceback (most recent call last):\n"
                    f'  File "/srv/app/jobs/{rng.choice(names)}.py", line {rng.randint(10, 900)}, in run\n'
                    f"ValueError: row {rng.randint(1, 10**6)} has no id\n"
                )
                if failed
                else "",
                created_at=created,
                queued_at=created,
                started_at=started,
                finished_at=started + timezone.timedelta(seconds=rng.randint(1, 900)),
                progress_current=10,
                progress_total=10,
            )
        )
    JobRun.objects.bulk_create(runs, batch_size=2000)
    JobLog.objects.bulk_create(
        [
            JobLog(
                run=run,
                level=rng.choice([20, 20, 20, 30, 40]),
                message=f"step {n} of {run.job_name}: {rng.randint(1, 10**6)} rows",
            )
            for run in runs
            for n in range(rng.randint(1, 5))
        ],
        batch_size=5000,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the server on port {port} did not start in {timeout} s")


def login(base: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/admin/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if token is None:
        raise RuntimeError("no CSRF token on the login page")
    data = urllib.parse.urlencode(
        {
            "username": "bench",
            "password": "bench",
            "csrfmiddlewaretoken": token.group(1),
            "next": "/admin/",
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (http to 127.0.0.1)
        base + "/admin/login/", data=data, headers={"Referer": base + "/admin/login/"}
    )
    opener.open(request).read()
    return opener


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sessions() -> int:
    """Sessions ever opened on the benchmark's database (PostgreSQL 14+)."""
    import psycopg

    url = os.environ["DATABASE_URL"]
    dbname = urllib.parse.urlparse(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname]
        ).fetchone()
    return int(row[0]) if row else 0


def measure(name: str, config: dict[str, Any], requests: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            str(config["CONN_MAX_AGE"]),
            str(int(config["CONN_HEALTH_CHECKS"])),
        ],
        cwd=ROOT,
    )
    try:
        wait_for(port)
        base = f"http://127.0.0.1:{port}"
        opener = login(base)
        for i in range(20):  # warm-up
            opener.open(base + PATHS[i % 2]).read()
        cpu_before, sessions_before = cpu_seconds(server.pid), sessions()
        times = []
        for i in range(requests):
            began = time.perf_counter()
            with opener.open(base + PATHS[i % 2]) as response:
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{PATHS[i % 2]} answered {response.status}")
            times.append(time.perf_counter() - began)
        cpu = cpu_seconds(server.pid) - cpu_before
        opened = sessions() - sessions_before - 1  # less the sessions() call's own
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "median_ms": statistics.median(times) * 1000,
        "mean_ms": statistics.fmean(times) * 1000,
        "cpu_ms": cpu / requests * 1000,
        "sessions": opened / requests,
    }


def main() -> None:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="requests per round and setting (default: %(default)r)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds (default: %(default)r)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=20000,
        help="runs seeded in the database (default: %(default)r)",
    )
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        port, max_age, health = options.serve
        serve(int(port), int(max_age), health_checks=health == "1")
        return
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database.")
    setup(options.runs)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for _ in range(options.rounds):
        for name, config in CONFIGS.items():
            results[name].append(measure(name, config, options.requests))
    print(
        f"{options.rounds} rounds x {options.requests} requests (runs changelist and API list in turn), {options.runs:,} runs"
    )
    print(
        f"{'setting':34} {'median ms':>10} {'mean ms':>9} {'server CPU ms':>14} {'new sessions':>13}"
    )
    summary = {}
    for name, rows in results.items():
        row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        summary[name] = row
        print(
            f"{name:34} {row['median_ms']:10.1f} {row['mean_ms']:9.1f} {row['cpu_ms']:14.2f} {row['sessions']:13.2f}"
        )
    default, kept = summary.values()
    print(
        f"per request, CONN_MAX_AGE=0 costs {default['median_ms'] - kept['median_ms']:+.1f} ms (median) and "
        f"{(default['cpu_ms'] / kept['cpu_ms'] - 1) * 100:+.0f}% server CPU"
    )


if __name__ == "__main__":
    main()
