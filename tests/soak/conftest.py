"""Helpers of the soak and fault tests: actor processes, an audit trigger, a throwaway PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.conftest import _missing
from tests.contrib.workers import ROOT, worker_process
from tests.waiting import wait_for

_DB_KEYS = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


def actor_env(database: dict[str, Any], jobstatus: dict[str, Any]) -> dict[str, str]:
    """The environment of an actor process: ``database`` (Django settings) and JOBSTATUS values."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.soak.settings",
        "JOBSTATUS_SOAK_DB": json.dumps(
            {key: database[key] for key in _DB_KEYS if key in database}
        ),
        "JOBSTATUS_SOAK_SETTINGS": json.dumps(jobstatus),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
        "PYTHONUNBUFFERED": "1",
    }


def suite_database() -> dict[str, Any]:
    """The Django settings of the suite's test database, for the actors to share."""
    return dict(connection.settings_dict)


def start_actor(
    stack: contextlib.ExitStack,
    out: Path,
    role: str,
    index: int | str,
    env: dict[str, str],
) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.soak.actors role out index``; stopped when ``stack`` closes."""
    return stack.enter_context(
        worker_process(
            ["-m", "tests.soak.actors", role, str(out), str(index)],
            env,
            out / f"{role}-{index}.log",
        )
    )


def output_lines(out: Path, role: str, index: int | str) -> list[str]:
    log = out / f"{role}-{index}.log"
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def wait_for_line(
    out: Path,
    role: str,
    index: int | str,
    prefix: str,
    process: subprocess.Popen[bytes],
    timeout: float = 60,
) -> str:
    """The first line the actor printed that starts with ``prefix``, once it has printed it."""
    return wait_for(
        lambda: next(
            (
                line
                for line in output_lines(out, role, index)
                if line.startswith(prefix)
            ),
            None,
        ),
        timeout=timeout,
        what=f"{role} {index} to print {prefix!r}",
        process=process,
        log=out / f"{role}-{index}.log",
    )


AUDIT_SQL = """
CREATE TABLE soak_audit (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL,
    op text NOT NULL,
    old_status text,
    new_status text,
    kill_requested_at timestamptz,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION soak_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO soak_audit (run_id, op, old_status, kill_requested_at)
        VALUES (OLD.id, 'delete', OLD.status, OLD.kill_requested_at);
        RETURN OLD;
    END IF;
    IF OLD.kill_requested_at IS NULL AND NEW.kill_requested_at IS NOT NULL THEN
        INSERT INTO soak_audit (run_id, op, old_status, kill_requested_at)
        VALUES (NEW.id, 'kill', OLD.status, NEW.kill_requested_at);
    END IF;
    IF OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO soak_audit (run_id, op, old_status, new_status, kill_requested_at)
        VALUES (NEW.id, 'update', OLD.status, NEW.status, NEW.kill_requested_at);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER soak_audit AFTER UPDATE OR DELETE ON django_jobstatus_jobrun
    FOR EACH ROW EXECUTE FUNCTION soak_audit_row();
"""

DROP_AUDIT_SQL = """
DROP TRIGGER IF EXISTS soak_audit ON django_jobstatus_jobrun;
DROP FUNCTION IF EXISTS soak_audit_row();
DROP TABLE IF EXISTS soak_audit;
"""


@pytest.fixture
def audit(transactional_db: None) -> Iterator[None]:
    """Record in ``soak_audit`` every status change, kill request and deletion of a run, whoever makes it.

    A trigger sees every write, including bulk ``UPDATE``s and the purge's raw ``DELETE``s,
    which send no signal.
    """
    with connection.cursor() as cursor:
        cursor.execute(DROP_AUDIT_SQL)
        cursor.execute(AUDIT_SQL)
    yield
    with connection.cursor() as cursor:
        cursor.execute(DROP_AUDIT_SQL)


# A throwaway PostgreSQL cluster for the restart test.


@dataclass
class Cluster:
    bin: Path
    data: Path
    port: int
    options: str

    def pg_ctl(self, *args: str) -> None:
        _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), *args])

    def start(self) -> None:
        self.pg_ctl(
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            self.options,
            "start",
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def database(self, name: str) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": self.port,
        }


def _as_postgres(argv: list[str]) -> None:
    """Run a PostgreSQL program; as the postgres user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of its own (initdb in a temporary directory, on a free port), that a test may restart."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found or not (found[-1] / "initdb").exists():
        _missing("needs the PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="jobstatus-restart-"))
    root.chmod(0o755)
    data = root / "data"
    port = _free_port()
    cluster = Cluster(
        bin=found[-1],
        data=data,
        port=port,
        options=f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c synchronous_commit=off",
    )
    try:
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
        _as_postgres(
            [str(cluster.bin / "initdb"), "-D", str(data), "-U", "postgres"]
            + ["--auth=trust", "-E", "UTF8"]
        )
        cluster.start()
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.pg_ctl("-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(root, ignore_errors=True)
