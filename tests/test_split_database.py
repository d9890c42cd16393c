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

from django_jobstatus.models import JobRun

def alice_on_both():
    # docs/scaling.md: the owner column needs the user tables on the runs' database too.
    alice = User.objects.create_user("alice")
    User.objects.using("jobs").create(pk=alice.pk, username="alice")
    run = JobRun.objects.start("split.owned", owner_id=alice.pk)
    return alice, run

def owner_of(run):
    return JobRun.objects.values_list("owner_id", flat=True).get(pk=run.pk)
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


def test_a_deleted_user_s_runs_lose_their_owner_on_the_runs_database(
    tmp_path: Path,
) -> None:
    """With the user tables on both databases (docs/scaling.md), a committed delete of a
    user clears the owner of their runs on the runs' database."""
    child = _run(
        tmp_path,
        """
        alice, run = alice_on_both()
        alice.delete()
        print("OWNER", owner_of(run))
        """,
    )
    assert child.returncode == 0, (child.stdout + child.stderr)[-3000:]
    assert "OWNER None" in child.stdout, child.stdout


def test_the_admin_s_confirmation_page_of_a_user_s_delete_keeps_their_runs_owner(
    tmp_path: Path,
) -> None:
    """The page that asks "Are you sure?" deletes nothing, but Django collects what a
    delete would take to list it: the owner was cleared while collecting (found by a
    review)."""
    child = _run(
        tmp_path,
        """
        from django.test import Client
        admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
        alice, run = alice_on_both()
        client = Client(raise_request_exception=False)
        client.force_login(admin)
        response = client.get(f"/admin/auth/user/{alice.pk}/delete/")
        assert response.status_code == 200, response.status_code
        assert User.objects.filter(pk=alice.pk).exists()
        print("KEPT" if owner_of(run) == alice.pk else "DETACHED")
        """,
    )
    assert child.returncode == 0, (child.stdout + child.stderr)[-3000:]
    assert "KEPT" in child.stdout, child.stdout


def test_a_user_delete_that_rolls_back_keeps_their_runs_owner(tmp_path: Path) -> None:
    """The owner is cleared once the delete is committed (found by a review)."""
    child = _run(
        tmp_path,
        """
        from django.db import transaction
        alice, run = alice_on_both()
        pk = alice.pk  # delete() clears the instance's
        try:
            with transaction.atomic():
                alice.delete()
                raise RuntimeError("the view's next step failed")
        except RuntimeError:
            pass
        assert User.objects.filter(pk=pk).exists()
        print("KEPT" if owner_of(run) == pk else "DETACHED")
        """,
    )
    assert child.returncode == 0, (child.stdout + child.stderr)[-3000:]
    assert "KEPT" in child.stdout, child.stdout
