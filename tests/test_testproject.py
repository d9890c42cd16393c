"""Smoke tests of the demo project (testproject/), which the suite does not otherwise use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{db}",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "demo.sqlite3"
    migrate = _manage("migrate", "--noinput", db=db)
    assert migrate.returncode == 0, migrate.stderr
    return db


def test_check_passes(demo_db: Path):
    result = _manage("check", "--fail-level", "WARNING", db=demo_db)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_command_seeds_history_and_an_admin(demo_db: Path):
    result = _manage("jobstatus_demo", "--admin", "--runs", "300", db=demo_db)
    assert result.returncode == 0, result.stderr
    assert "Seeded 300 runs" in result.stdout
    assert "password: admin" in result.stdout
    again = _manage("jobstatus_demo", db=demo_db)
    assert "already has 304 runs" in again.stdout  # 300 finished + 1 stuck + 3 queued


def test_demo_pages_render(demo_db: Path):
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "c = Client(); assert c.login(username='admin', password='admin')\n"
        "for url in ['/admin/', '/admin/django_jobstatus/jobrun/', '/admin/django_jobstatus/jobrun/dashboard/']:\n"
        "    r = c.get(url); print(url, r.status_code); assert r.status_code == 200, (url, r.status_code)\n"
    )
    _manage("jobstatus_demo", "--admin", "--runs", "50", db=demo_db)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{demo_db}",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
