"""Under ATOMIC_REQUESTS, the views that commit short transactions of their own (a purge's
batches, the dashboard's roll-ups) stay out of the request's one transaction: inside it, a
purge held every run it deleted locked until the response, and a request killed at a
timeout lost the roll-ups it had made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobstatus.models import JobRun, JobRunHour, Status
from tests.api.conftest import api, client_for, make_user

__all__ = ["api", "client_for", "make_user"]  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = "/admin/django_jobstatus/jobrun/"


@pytest.fixture(autouse=True)
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


def _savepoints() -> int:
    # A block opened with savepoint=False (bulk_create's) notes None.
    return sum(sid is not None for sid in connection.savepoint_ids)


@contextlib.contextmanager
def nesting(marker: str) -> Iterator[list[tuple[int, int]]]:
    """At each statement holding ``marker``: how many atomic blocks were open, and how many
    savepoints (a block opened inside another transaction makes one)."""
    found: list[tuple[int, int]] = []

    def record(execute, sql, *args):
        if marker in sql:
            found.append((len(connection.atomic_blocks), _savepoints()))
        return execute(sql, *args)

    with connection.execute_wrapper(record):
        yield found


def _old_runs(make_run, n: int = 3) -> list[JobRun]:
    ago = timezone.now() - timedelta(days=60)
    runs = [
        make_run("tests.old", status=Status.SUCCEEDED, created_at=ago, finished_at=ago)
        for _ in range(n)
    ]
    for run in runs:
        run.log(20, "a line")
    return runs


def test_other_admin_views_do_run_in_the_request_transaction(admin_client, make_run):
    make_run("tests.job")
    with nesting('FROM "django_jobstatus_jobrun"') as found:
        assert admin_client.get(RUNS).status_code == 200
    assert found and set(found) == {(1, 0)}  # the request's transaction


def test_the_admin_purge_commits_batch_by_batch(admin_client, make_run):
    _old_runs(make_run)
    keep = make_run("tests.old", status=Status.SUCCEEDED)
    with nesting("DELETE") as found:
        response = admin_client.post(f"{RUNS}dashboard/purge/", {"days": ""})
    assert response.status_code == 302
    assert list(JobRun.objects.all()) == [keep]
    # Each batch a transaction of its own, not a savepoint in the request's.
    assert found and {savepoints for _, savepoints in found} == {0}


def test_the_failures_delete_all_commits_batch_by_batch(admin_client, make_run):
    for i in range(3):
        make_run("tests.x", status=Status.RUNNING).mark_failed(error=f"E: {i}")
    data = {"job_name": "tests.x", "fingerprint": "E: <n>", "confirm": "yes"}
    with nesting("DELETE") as found:
        response = admin_client.post(f"{RUNS}failures/delete/", data)
    assert response.status_code == 302
    assert not JobRun.objects.exists()
    assert found and {savepoints for _, savepoints in found} == {0}


@pytest.mark.parametrize("path", ["dashboard/", "dashboard/data/"])
def test_the_dashboard_commits_its_roll_ups_itself(admin_client, make_run, path):
    ago = timezone.now() - timedelta(hours=30)
    make_run("tests.done", status=Status.SUCCEEDED, created_at=ago, finished_at=ago)
    with nesting('INSERT INTO "django_jobstatus_jobrunhour"') as found:
        assert admin_client.get(f"{RUNS}{path}?window=7d").status_code == 200
    assert JobRunHour.objects.filter(job_name="tests.done").exists()
    assert found and {savepoints for _, savepoints in found} == {0}


def test_the_api_bulk_delete_commits_batch_by_batch(api, make_run):
    runs = _old_runs(make_run)
    with nesting("DELETE") as found:
        response = api.post(
            "/api/jobstatus/runs/delete/",
            {"ids": [str(run.pk) for run in runs]},
            format="json",
        )
    assert response.status_code == 200, response.content
    assert response.json()["deleted"] == 3
    assert not JobRun.objects.exists()
    assert found and {savepoints for _, savepoints in found} == {0}


@pytest.fixture
def failing_backend() -> Iterator[list[str]]:
    """An integration for source ``tests_db_error`` whose retry of a run with
    ``params={"bad": True}`` fails in the database (a CheckConstraint); the others are
    enqueued again. Yields the job names of the runs it recorded."""
    from django_jobstatus import contrib

    recorded: list[str] = []

    class Backend:
        def kill(self, run: JobRun, *, force: bool = False) -> None:  # pragma: no cover
            pass

        def retry(self, run: JobRun) -> JobRun:
            if run.params.get("bad"):
                JobRun.objects.create(
                    job_name=run.job_name, progress_current=2, progress_total=1
                )
            recorded.append(run.job_name)
            return JobRun.objects.enqueue(run.job_name, source=run.source)

    contrib.register("tests_db_error", Backend())
    yield recorded
    contrib.unregister("tests_db_error")


def test_a_bulk_retry_s_new_runs_outlive_a_database_error_in_another_retry(
    api, make_run, failing_backend
):
    """Each retry is its own savepoint: a database error in one did roll back the request's
    transaction, and the new runs the answer listed as retried were never there."""
    first = make_run("tests.first", status=Status.FAILED, source="tests_db_error")
    bad = make_run(
        "tests.bad", status=Status.FAILED, source="tests_db_error", params={"bad": True}
    )
    last = make_run("tests.last", status=Status.FAILED, source="tests_db_error")
    response = api.post(
        "/api/jobstatus/runs/retry/",
        {"ids": [str(run.pk) for run in (first, bad, last)]},
        format="json",
    )
    assert response.status_code == 202, response.content
    data = response.json()
    assert [row["id"] for row in data["not_retried"]] == [str(bad.pk)]
    assert data["not_retried"][0]["error"] is True
    new_ids = [row["new_id"] for row in data["retried"]]
    assert [row["id"] for row in data["retried"]] == [str(first.pk), str(last.pk)]
    assert JobRun.objects.filter(pk__in=new_ids).count() == 2
