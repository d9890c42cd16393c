"""The services script reports PostgreSQL and Redis each on its own (issue 10, point 10).

`make test` with PostgreSQL running and Redis missing must still run the PostgreSQL leg:
a missing Redis only skips the tests that need it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _missing

pytestmark = pytest.mark.engine_agnostic

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "services.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def path_without_redis(tmp_path: Path) -> str:
    """A PATH with every command of /usr/bin and /bin but Redis's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in Path(folder).iterdir():
            target = bin_dir / entry.name
            if entry.name.startswith("redis") or target.exists():
                continue
            target.symlink_to(entry)
    return str(bin_dir)


def test_missing_redis_is_reported_alone_and_postgres_still_counts(
    path_without_redis: str,
) -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        _missing("needs the PostgreSQL server binaries (apt-get install postgresql)")
    env = {
        **os.environ,
        "PATH": path_without_redis,
        "JOBSTATUS_REDISPORT": str(_free_port()),
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = started.stdout + started.stderr
    assert started.returncode == 1, output
    assert "Redis is not installed" in output
    assert "PostgreSQL is not installed" not in output
    assert "services: PostgreSQL on 127.0.0.1" in output
    has_postgres = subprocess.run(
        ["bash", str(SCRIPT), "has", "postgres"], env=env, timeout=60, check=False
    )
    assert has_postgres.returncode == 0
    has_redis = subprocess.run(
        ["bash", str(SCRIPT), "has", "redis"], env=env, timeout=60, check=False
    )
    assert has_redis.returncode != 0


def test_make_test_decides_the_postgres_leg_on_postgres_alone() -> None:
    recipe = (ROOT / "Makefile").read_text()
    test_target = recipe[recipe.index("\ntest:") : recipe.index("\nCORE_VENV")]
    assert ".ci/services.sh has postgres" in test_target
    assert "PostgreSQL is not installed" not in test_target


def _test_database_name(**env: str) -> str:
    """The engine and test database name tests/settings.py gives ``default`` under ``env``."""
    script = (
        "import tests.settings as s; d = s.DATABASES['default']; "
        "print(d['ENGINE'].rsplit('.', 1)[-1], d.get('TEST', {}).get('NAME'))"
    )
    unset = ("DATABASE_URL", "JOBSTATUS_TEST_DB")
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k not in unset}, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_the_sqlite_test_database_stays_in_memory_when_ci_names_one() -> None:
    """.ci/run names each leg's test database (JOBSTATUS_TEST_DB), for PostgreSQL. On SQLite
    the name made the test database a file, where the live server's and the health thread's
    connections are others than the test's: a test whose transaction read, then wrote, while
    one of them wrote, failed at once with "database is locked" (in CI only, at random)."""
    assert _test_database_name(JOBSTATUS_TEST_DB="test_jobstatus_ci") == "sqlite3 None"
    postgres = "postgres://postgres@127.0.0.1:54329/jobstatus"
    assert (
        _test_database_name(
            JOBSTATUS_TEST_DB="test_jobstatus_ci", DATABASE_URL=postgres
        )
        == "postgresql test_jobstatus_ci"
    )
