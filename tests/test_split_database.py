"""The app's tables on a database of their own, as docs/scaling.md sets it up: two real
SQLite files ("default" with the users, "jobs" with the runs), migrated as the docs say,
in a child process (tests.split_database_settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.engine_agnostic

_SETUP = """
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth import get_user_model
call_command("migrate", verbosity=0)
call_command("migrate", database="jobs", verbosity=0)
User = get_user_model()
"""


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(_SETUP + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.split_database_settings",
            "SPLIT_DIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_a_user_can_be_deleted_when_the_runs_live_on_their_own_database(
    tmp_path: Path,
) -> None:
    """docs/scaling.md: with the runs on a database of their own, "leave `owner` empty".
    Even so, deleting any user (in code, or the admin's Delete of a user) failed with
    "no such table: django_jobstatus_jobrun": Django cleared the runs the user owns
    (JobRun.owner, SET_NULL) on the user's database, "default", where the app's tables are
    not (the router migrates them to "jobs" only) (found by a red-team pass)."""
    child = _run(
        tmp_path,
        """
        from django_jobstatus import track
        from django_jobstatus.models import JobRun
        with track("split.one") as job:
            job.info("a run without an owner, as the docs advise")
        bob = User.objects.create_user("bob")
        bob.delete()
        assert not User.objects.filter(username="bob").exists()
        assert JobRun.objects.count() == 1
        print("DELETED")
        """,
    )
    output = child.stdout + child.stderr
    assert child.returncode == 0 and "DELETED" in child.stdout, output[-3000:]


def test_the_admin_deletes_a_user_when_the_runs_live_on_their_own_database(
    tmp_path: Path,
) -> None:
    """The same through the admin's own Delete of a user (auth's UserAdmin): it was a 500."""
    child = _run(
        tmp_path,
        """
        from django.test import Client
        admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
        carol = User.objects.create_user("carol")
        client = Client(raise_request_exception=False)
        client.force_login(admin)
        response = client.post(f"/admin/auth/user/{carol.pk}/delete/", {"post": "yes"})
        print("STATUS", response.status_code)
        assert response.status_code == 302, response.status_code
        assert not User.objects.filter(pk=carol.pk).exists()
        print("DELETED")
        """,
    )
    output = child.stdout + child.stderr
    assert child.returncode == 0 and "DELETED" in child.stdout, output[-3000:]
