"""JobStatusRouter: reads from READ_DATABASE (a replica), writes to DATABASE."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus.models import JobRun, Status

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

# Quoted: the roll-ups' table (django_jobstatus_jobrunhour) starts with the same name.
RUNS_TABLE = f'"{JobRun._meta.db_table}"'
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def routed(settings):
    settings.DATABASE_ROUTERS = ["django_jobstatus.routers.JobStatusRouter"]
    settings.JOBSTATUS = {"READ_DATABASE": "replica"}


def _ours(queries: CaptureQueriesContext, verb: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith(verb) and RUNS_TABLE in q["sql"]
    ]


def test_the_admin_reads_from_the_replica_and_writes_to_the_primary(
    routed, admin_client
):
    run = JobRun.objects.start("tests.replica")
    assert run._state.db == "default"
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        assert admin_client.get("/admin/django_jobstatus/jobrun/").status_code == 200
        assert (
            admin_client.get("/admin/django_jobstatus/jobrun/dashboard/").status_code
            == 200
        )
    assert _ours(replica, "SELECT")
    assert not _ours(primary, "SELECT")
    # A button's run is read where its write goes: the replica may lag behind it.
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        admin_client.post(f"/admin/django_jobstatus/jobrun/{run.pk}/kill/")
    assert _ours(primary, "SELECT") and not _ours(replica, "SELECT")
    assert _ours(primary, "UPDATE") and not _ours(replica, "UPDATE")
    run.refresh_from_db()
    assert run.kill_requested_at is not None


@pytest.mark.skipif(not django_settings.HAS_API, reason="needs the api extra")
def test_the_api_reads_from_the_replica(routed, admin_client):
    JobRun.objects.start("tests.replica")
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        response = admin_client.get("/api/jobstatus/runs/")
    assert response.status_code == 200
    assert [row["job_name"] for row in response.json()["results"]] == ["tests.replica"]
    assert _ours(replica, "SELECT") and not _ours(primary, "SELECT")


def test_purge_and_tracking_write_to_the_primary(routed):
    old = timezone.now() - timedelta(days=400)
    JobRun.objects.create(
        job_name="tests.old", status=Status.SUCCEEDED, created_at=old, finished_at=old
    )
    JobRun.objects.create(job_name="tests.old", status=Status.SUCCEEDED)
    with CaptureQueriesContext(connections["replica"]) as replica:
        result = JobRun.objects.purge(days=30)
    assert result.runs == 1
    assert not [q for q in replica.captured_queries if "DELETE" in q["sql"]]
    assert JobRun.objects.count() == 1


def test_without_a_replica_reads_go_to_database(settings):
    from django_jobstatus.routers import JobStatusRouter

    settings.JOBSTATUS = {"DATABASE": "replica"}
    router = JobStatusRouter()
    assert router.db_for_read(JobRun) == router.db_for_write(JobRun) == "replica"
    assert router.allow_migrate("default", "django_jobstatus") is False
    assert router.allow_migrate("default", "auth") is None


def test_a_kill_and_a_reap_write_to_the_primary(routed):
    from django_jobstatus.models import JobRun, Status

    queryset = JobRun.objects.running()
    assert queryset.db == "replica"
    assert queryset.writing().db == "default"
    assert JobRun.objects.using("replica").writing().db == "replica"
    assert JobRun.objects.create(job_name="x", status=Status.RUNNING).pk
    assert JobRun.objects.running().request_kill() == 1
    assert JobRun.objects.reap(timeout=3600).reaped == 0


def test_the_dashboard_reads_the_roll_ups_it_just_wrote_from_the_primary(
    routed, admin_client
):
    """A replica may not have the rows yet: what a request rolled up is read back where it
    was written, never cached empty for an hour. Later requests read the replica."""
    from django.core.cache import cache

    from django_jobstatus.models import JobRunHour

    table = JobRunHour._meta.db_table
    cache.clear()
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        assert (
            admin_client.get("/admin/django_jobstatus/jobrun/dashboard/").status_code
            == 200
        )
    written = [q["sql"] for q in primary.captured_queries if table in q["sql"]]
    assert any(sql.startswith("INSERT") for sql in written)
    inserted = max(i for i, sql in enumerate(written) if sql.startswith("INSERT"))
    # A SELECT, or on PostgreSQL the first "(SELECT" of a UNION.
    assert any(sql.lstrip("(").startswith("SELECT") for sql in written[inserted:])
    assert any(table in q["sql"] for q in replica.captured_queries)  # the first look
    cache.clear()
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        admin_client.get("/admin/django_jobstatus/jobrun/dashboard/")
    assert not [q for q in primary.captured_queries if table in q["sql"]]
    assert any(table in q["sql"] for q in replica.captured_queries)


@pytest.mark.postgres
def test_a_suite_that_read_the_replica_drops_its_test_database() -> None:
    """The replica and default__jobstatus are mirrors of default: their connections, left
    open by a test, kept PostgreSQL from dropping the test database at the end of the run."""
    name = f"{connections['default'].settings_dict['NAME']}_teardown"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
        + ["tests/test_checks.py::test_the_defaults_pass"],
        cwd=ROOT,
        env={**os.environ, "JOBSTATUS_TEST_DB": name},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = child.stdout + child.stderr
    assert child.returncode == 0, output
    assert "1 passed" in output and "teardown test databases" not in output, output
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
        assert cursor.fetchone() == (0,)
