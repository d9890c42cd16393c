"""Shared fixtures, and the service markers: postgres, redis, browser.

A test marked with a service fails under CI=true when the service is missing, and is
skipped (with the reason) elsewhere. Tests marked ``postgres`` run only when the
suite's database is PostgreSQL (``DATABASE_URL``); on SQLite they are deselected. Tests
marked ``engine_agnostic`` do not depend on the suite's database engine (the demo on its own
SQLite file, the docs, the catalogs, CSS layout): they run in the SQLite pass only. A test marked
with both would run in neither, and stops the collection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import connection, connections

CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing(reason: str) -> None:
    if CI:
        pytest.fail(
            f"{reason} (CI=true: a missing service fails the test)", pytrace=False
        )
    pytest.skip(reason)


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1
        ):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # A run on PostgreSQL leaves out what the SQLite run of `make test` already ran; a
    # run on SQLite leaves out what needs PostgreSQL.
    dropped_marker = (
        "engine_agnostic" if connection.vendor == "postgresql" else "postgres"
    )
    kept, dropped = [], []
    for item in items:
        if item.get_closest_marker("postgres") and item.get_closest_marker(
            "engine_agnostic"
        ):
            raise pytest.UsageError(
                f"{item.nodeid} is marked both postgres and engine_agnostic: "
                "neither run of the suite would run it"
            )
        (dropped if item.get_closest_marker(dropped_marker) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        _missing("needs PostgreSQL: set DATABASE_URL to a PostgreSQL database")
    if item.get_closest_marker("redis") and not _reachable(REDIS_URL):
        _missing(f"needs Redis at {REDIS_URL}")
    if item.get_closest_marker("browser"):
        if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
            _missing(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
        try:
            import playwright  # noqa: F401
        except ImportError:
            _missing("needs the playwright package")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's, then every connection closed before the test database is dropped:
    PostgreSQL refuses to drop it while a mirror (replica, default__jobstatus) holds one."""
    yield
    connections.close_all()


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """The dashboard keeps the closed hours' sums in Django's cache; each test starts without them."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _writer_stopped() -> Iterator[None]:
    """Queued runs written behind an enqueue are in before the test's database is emptied, and
    the writer's connection closed; so are the own connections of a task run as in a worker.

    (pytest-django's database fixtures come from a plugin, so their teardown follows this one.)
    """
    from django_jobstatus import own_connections, writebehind

    worker = own_connections._tracking
    yield
    assert writebehind.writer.stop(), "the writer of queued runs did not stop"
    # A task a test ran in this process as a worker would: the process is no worker.
    own_connections._tracking = worker
    own_connections.close()


# The SQLite test database is in memory, shared by the connections of the threads that
# use it, and Django ignores close() on it (closing would drop the database). A lock one of
# them keeps is then never released: a transaction left open, or a read left half-done (a
# cursor a traceback holds, its thread gone). Every later test's flush then failed
# ("database table is locked"): once 483 tests after the one that left it. A flush that
# finds the database locked releases every other connection to it, as closing them does
# elsewhere, says which threads held them, and tries again.


def _release_other_sqlite_connections(main: Any) -> list[str]:
    """Close every SQLite connection of this process but ``main``'s, its cursors and its
    transaction first (their wrappers connect again when next used); what held them."""
    import gc
    import sqlite3

    from django.db.backends.base.base import BaseDatabaseWrapper

    def instances(kind: type) -> list[Any]:
        # By type: isinstance() asks a dead weak proxy for its class, and raises.
        return [obj for obj in gc.get_objects() if issubclass(type(obj), kind)]

    frames = sys._current_frames()
    wrappers = [w for w in instances(BaseDatabaseWrapper) if w.vendor == "sqlite"]
    cursors = instances(sqlite3.Cursor)
    held = []
    for raw in instances(sqlite3.Connection):
        if raw is main.connection:
            continue
        owners = [wrapper for wrapper in wrappers if wrapper.connection is raw]
        for wrapper in owners:
            frame = frames.get(wrapper._thread_ident)
            where = "".join(traceback.format_stack(frame)) if frame else "(ended)\n"
            held.append(f"{wrapper.alias!r} of thread {wrapper._thread_ident}: {where}")
            wrapper.connection = None
        if not owners:
            held.append("a connection no wrapper holds (its thread ended)\n")
        # Its statements first: a connection closed with one still stepping keeps its lock.
        for cursor in cursors:
            if cursor.connection is raw:
                with contextlib.suppress(sqlite3.Error):
                    cursor.close()
        with contextlib.suppress(sqlite3.Error):
            if raw.in_transaction:
                raw.rollback()
            raw.close()
    return held


@pytest.fixture(scope="session", autouse=True)
def _flush_past_locks() -> Iterator[None]:
    if connection.vendor != "sqlite":
        yield
        return
    # Through the backend's module: imported first, operations.py imports it half-made.
    from django.db.backends.sqlite3.base import DatabaseOperations
    from django.db.utils import OperationalError

    flush = DatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: Any, sql_list: list[str]) -> None:
        try:
            flush(self, sql_list)
        except OperationalError as error:
            if "locked" not in str(error):
                raise
            held = _release_other_sqlite_connections(self.connection)
            warnings.warn(
                f"The test database was locked ({error}) by another connection; "
                "released:\n" + "".join(held),
                stacklevel=1,
            )
            flush(self, sql_list)

    DatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.execute_sql_flush = flush  # type: ignore[method-assign]


@pytest.fixture
def make_run(db: None) -> Any:
    """Create a JobRun with the given fields (status defaults to running)."""
    from django.utils import timezone

    from django_jobstatus.models import JobRun, Status

    def make(job_name: str = "tests.job", **fields: Any) -> JobRun:
        status = fields.setdefault("status", Status.RUNNING)
        now = timezone.now()
        if status != Status.QUEUED:
            fields.setdefault("started_at", now)
        if status in Status.TERMINAL:
            fields.setdefault("finished_at", now)
        fields.setdefault("queued_at", fields.get("created_at", now))
        return JobRun.objects.create(job_name=job_name, **fields)

    return make


@pytest.fixture
def run(make_run: Any) -> Any:
    """A running JobRun."""
    return make_run()


@pytest.fixture
def past_run(db: None) -> Any:
    """Create a finished run ``ago`` before now that took ``took`` (default: succeeded, 1 s)."""
    from datetime import timedelta

    from django.utils import timezone

    from django_jobstatus.models import JobRun, Status

    def make(
        job_name: str = "tests.nightly",
        *,
        ago: Any = None,
        took: Any = None,
        status: str = "succeeded",
        **fields: Any,
    ) -> Any:
        ago = timedelta(minutes=1) if ago is None else ago
        took = timedelta(seconds=1) if took is None else took
        created = timezone.now() - ago
        finished = status in Status.TERMINAL
        return JobRun.objects.create(
            job_name=job_name,
            status=status,
            created_at=created,
            queued_at=created,
            started_at=created,
            finished_at=created + took if finished else None,
            heartbeat_at=timezone.now(),
            **fields,
        )

    return make


@pytest.fixture
def monitor(past_run: Any) -> Any:
    """Create a JobMonitor (and a run of its job first, so that the name is known)."""
    from datetime import timedelta

    from django.utils import timezone

    from django_jobstatus.models import JobMonitor, JobRun

    def make(job_name: str = "tests.nightly", **fields: Any) -> Any:
        if not JobRun.objects.for_job(job_name).exists():
            past_run(job_name, ago=timedelta(days=1))
        fields.setdefault("created_at", timezone.now() - timedelta(days=30))
        return JobMonitor.objects.create(job_name=job_name, **fields)

    return make


@pytest.fixture
def retry_backend() -> Iterator[list[Any]]:
    """An integration for source ``tests_backend`` that retries runs (the ids it retried are yielded).

    A run with ``params={"broken": True}`` makes it raise, as a broker that is away would.
    """
    from django_jobstatus import contrib
    from django_jobstatus.models import JobRun

    retried: list[Any] = []

    class Backend:
        def kill(self, run: JobRun) -> None:  # pragma: no cover - not used
            pass

        def retry(self, run: JobRun) -> JobRun:
            if run.params.get("broken"):
                raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Refused.")
            retried.append(run.pk)
            return JobRun.objects.enqueue(
                run.job_name, source=run.source, params=run.params
            )

    contrib.register("tests_backend", Backend())
    yield retried
    contrib.unregister("tests_backend")


@pytest.fixture
def database_stores_local_time() -> Iterator[None]:
    """DATABASES' TIME_ZONE on SQLite (Asia/Tokyo): a database that stores local time,
    where aware datetimes are sent, and text is read, in that zone. (PostgreSQL refuses
    this setting: mark the test ``engine_agnostic``.)"""
    real = connections[connection.alias]  # not a proxy: its cached properties
    saved = real.settings_dict.get("TIME_ZONE")

    def zone(name: str | None) -> None:
        real.settings_dict["TIME_ZONE"] = name
        for cached in ("timezone", "timezone_name"):
            real.__dict__.pop(cached, None)

    zone("Asia/Tokyo")
    yield
    zone(saved)
