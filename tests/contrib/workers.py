"""Start real worker processes for the integration tests, on the suite's own test database."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.contrib.dbproxy import Proxy
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def db_proxy(django_db_setup: None) -> Iterator[Proxy]:
    """A proxy in front of the test database, which the workers connect through."""
    settings_dict = connection.settings_dict
    proxy = Proxy(
        (
            settings_dict.get("HOST") or "127.0.0.1",
            int(settings_dict.get("PORT") or 5432),
        )
    )
    yield proxy
    proxy.cut()


def worker_env(proxy: Proxy, integration: str) -> dict[str, str]:
    """The environment of a worker process: the test database, through ``proxy``, with ``integration`` on."""
    return {
        **os.environ,
        "JOBSTATUS_WORKER_INTEGRATIONS": integration,
        "DJANGO_SETTINGS_MODULE": "tests.contrib.worker_settings",
        "JOBSTATUS_WORKER_DB": connection.settings_dict["NAME"],
        "JOBSTATUS_WORKER_DB_PORT": str(proxy.port),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def celery_worker(
    proxy: Proxy,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    pool: str,
    queue: str,
    prefix: str,
    purge: bool = True,
    extra: tuple[str, ...] = (),
    app_module: str = "tests.contrib.celery_app",
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker on the tests' app (``app_module``'s ``app``) with one ``pool``
    process, consuming ``queue``; ready when yielded.

    Messages left in the broker are purged first (unless ``purge`` is false). Its name is
    ``<prefix>-<this pid>@<host>``; ``extra``: more arguments of ``celery worker``.
    """
    app = importlib.import_module(app_module).app
    if purge:
        app.control.purge()
    log = tmp_path_factory.mktemp(f"celery-{pool}") / "worker.log"
    name = f"{prefix}-{os.getpid()}@{socket.gethostname()}"
    argv = [
        *("-m", "celery", "-A", app_module, "worker"),
        *(f"--pool={pool}", "--concurrency=1", "--loglevel=INFO", "-Q", queue),
        *("-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat"),
        *extra,
    ]
    with worker_process(
        argv, worker_env(proxy, "django_jobstatus.contrib.celery"), log
    ) as process:
        wait_for(
            lambda: app.control.ping(destination=[name], timeout=0.5),
            timeout=90,
            what=f"the Celery {pool} worker to answer a ping",
            process=process,
            log=log,
        )
        process.log = log  # type: ignore[attr-defined]
        yield process


@contextlib.contextmanager
def rq_worker(
    proxy: Proxy,
    log: Path,
    *,
    queue: str,
    prefix: str,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """An ``rqworker`` (this suite's classes) consuming ``queue``, emptied first; ready (registered) when yielded.

    Its name is ``<prefix>-<this pid>-<random>``, also in ``process.rq_name``; ``extra``:
    more arguments of ``rqworker``; ``env``: more environment.
    """
    import redis
    import rq

    from tests.contrib import rq_jobs

    connection = redis.Redis.from_url(rq_jobs.REDIS_URL)
    rq.Queue(queue, connection=connection).empty()
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    argv = ["-m", "django", "rqworker", queue, "--name", name, *extra]
    environment = worker_env(proxy, "django_jobstatus.contrib.rq") | (env or {})
    with worker_process(argv, environment, log) as process:
        wait_for(
            lambda: any(
                worker.name == name for worker in rq.Worker.all(connection=connection)
            ),
            timeout=90,
            what="the RQ worker to register",
            process=process,
            log=log,
        )
        process.log = log  # type: ignore[attr-defined]
        process.rq_name = name  # type: ignore[attr-defined]
        yield process


@contextlib.contextmanager
def worker_process(
    argv: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (its own process group, output in ``log``); stop it and its children at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Pool processes left behind in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def kill_from_admin(client: Any, run: Any) -> None:
    """Select ``run`` in the admin changelist and apply the "Request kill" action."""
    from django.urls import reverse

    url = reverse("admin:django_jobstatus_jobrun_changelist")
    response = client.post(
        url, {"action": "request_kill", "_selected_action": [str(run.pk)]}
    )
    assert response.status_code == 302, response.content[:2000]
    run.refresh_from_db()
    assert run.kill_requested_at is not None


def refreshed(run: Any) -> Any:
    """``run``, reloaded from the database."""
    run.refresh_from_db()
    return run


def other_session() -> Any:
    """A psycopg connection of its own to the test database (PostgreSQL), in autocommit:
    another session than any the code under test holds."""
    import psycopg

    params = connection.get_connection_params()
    keys = {"dbname", "user", "password", "host", "port"}
    dsn = psycopg.conninfo.make_conninfo(
        **{key: value for key, value in params.items() if key in keys}
    )
    return psycopg.connect(dsn, autocommit=True)


def kept_until_due(run: Any, due_in: Any) -> None:
    """Assert that ``run`` is due ``due_in`` (a timedelta) from now, and that the reaper's
    queued timeout leaves it, though it was queued two hours ago."""
    from datetime import timedelta

    from django.utils import timezone

    from django_jobstatus.models import JobRun

    assert run.due_at is not None
    assert abs(run.due_at - (timezone.now() + due_in)) < timedelta(minutes=1)
    JobRun.objects.filter(pk=run.pk).update(
        queued_at=timezone.now() - timedelta(hours=2)
    )
    assert JobRun.objects.reap(300, queued_timeout=600).expired == 0


def recorded_by_a_worker(alias: str, rows: list[dict[str, Any]], **fields: Any) -> None:
    """What a worker that finds no queued run records, for each queued row the write-behind
    writer is about to write (``fields``: the run's, e.g. a ``started_at`` of its clock)."""
    from django_jobstatus.models import JobRun

    for row in rows:
        JobRun.objects.db_manager(alias).start(
            row["job_name"],
            source=row["source"],
            backend_job_id=row["backend_job_id"],
            worker="celery@elsewhere:1",
            **fields,
        )
