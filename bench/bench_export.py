"""Export a million runs as CSV and JSON Lines over HTTP: rows per second, and the server's peak memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_export.py
    ... --runs 50000             # a quick, small run

Seeds ``--runs`` runs (bench_api's generator) in a scratch PostgreSQL database of its own
(``--database``, created and dropped), then for each size (a tenth, a hundredth and all
of the runs, picked with ``created_after``) and each format starts a fresh server process
(Django's WSGI app under wsgiref, one process per export, warmed up by one small
request), downloads
``/api/jobstatus/runs/export/?format=...`` through a socket, reading it piece by piece,
and prints the rows, the seconds, the rows per second and the serving process's peak
resident memory (``VmHWM`` of ``/proc/<pid>/status``, read before it exits). Memory that
stays flat from the smallest export to the biggest shows the export streams.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.seeding import (  # noqa: E402 (after sys.path)
    bench_parser,
    bench_user,
    on_scratch_database,
    scratch_arguments,
)

SERVER = """
import os, sys
sys.path.insert(0, {root!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = {database!r}
django.setup()
from wsgiref.simple_server import WSGIRequestHandler, make_server
from django.core.wsgi import get_wsgi_application

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
print("ready", server.server_port, flush=True)
server.handle_request()  # a warm-up: the first request imports the URLconf's views
server.handle_request()  # the export
server.handle_request()  # /proc is read, then this last request ends the process
"""


def parse() -> argparse.Namespace:
    parser = bench_parser(__doc__, runs=1_000_000)
    scratch_arguments(parser, "jobstatus_bench_export")
    return parser.parse_args()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _get(port: int, path: str, cookie: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("GET", path, headers={"Cookie": cookie})
    connection.getresponse().read()
    connection.close()


def export_once(
    database: str, cookie: str, query: str
) -> tuple[int, int, float, float]:
    """Rows, bytes, seconds and the server's peak RSS (MB) of one export in a fresh server."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER.format(root=str(ROOT), database=database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        said = server.stdout.readline().split() if server.stdout else []
        if len(said) != 2 or said[0] != "ready":
            sys.exit("the server did not start")
        port = int(said[1])
        _get(port, "/api/jobstatus/runs/?page_size=1", cookie)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        began = time.perf_counter()
        connection.request(
            "GET", f"/api/jobstatus/runs/export/?{query}", headers={"Cookie": cookie}
        )
        response = connection.getresponse()
        if response.status != 200:
            sys.exit(f"export answered {response.status}: {response.read(300)!r}")
        lines = size = 0
        while piece := response.read(1 << 16):
            lines += piece.count(b"\n")
            size += len(piece)
        seconds = time.perf_counter() - began
        connection.close()
        peak = peak_rss_mb(server.pid)
        _get(port, "/admin/login/", cookie)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    return lines, size, seconds, peak


def run(options: argparse.Namespace) -> None:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.utils import timezone

    from bench.bench_api import DAYS, seed
    from django_jobstatus.models import JobRun

    if not options.reuse:
        call_command("migrate", verbosity=0)
    user = bench_user()
    if not options.reuse:
        seed(options.runs, user)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    cookie = f"sessionid={session.session_key}"
    total = JobRun.objects.count()
    now = timezone.now()
    print(f"\n{total:,} runs; one fresh server process per export\n", flush=True)
    header = f"{'export':30}{'rows':>10}{'MB':>8}{'seconds':>9}{'rows/s':>10}{'peak RSS MB':>13}"
    print(header)
    print("-" * len(header))
    for share in (100, 10, 1):
        since = (now - timedelta(days=DAYS / share)).isoformat()
        for file_format in ("csv", "jsonl"):
            query = f"format={file_format}"
            if share > 1:
                query += f"&created_after={quote(since)}"
            lines, size, seconds, peak = export_once(options.database, cookie, query)
            rows = lines - 1 if file_format == "csv" else lines
            label = f"{file_format}, {'all runs' if share == 1 else f'1/{share} of the runs'}"
            print(
                f"{label:30}{rows:>10,}{size / 1e6:>8.0f}{seconds:>9.1f}{rows / seconds:>10,.0f}{peak:>13.0f}",
                flush=True,
            )


def main() -> None:
    on_scratch_database(parse(), run)


if __name__ == "__main__":
    main()
