"""runs/retry/ and runs/delete/: many runs at once, with bulk kill's safety rules."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from subprocess import Popen

import pytest

from django_jobstatus.models import JobLog, JobRun, Status
from tests.api.conftest import BASE
from tests.contrib.workers import db_proxy

__all__ = ["db_proxy"]  # a fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(retry_backend):
    return retry_backend


def ids(*runs: JobRun) -> dict[str, list[str]]:
    return {"ids": [str(run.pk) for run in runs]}


# Bulk retry.


def test_bulk_retry_answers_each_new_run_and_each_refusal(api, make_run, backend):
    failed = make_run("mail.send", status=Status.FAILED, source="tests_backend")
    running = make_run("mail.send", source="tests_backend")
    manual = make_run("report", status=Status.FAILED, source="command")
    broken = make_run(
        "mail.send",
        status=Status.FAILED,
        source="tests_backend",
        params={"broken": True},
    )
    response = api.post(
        f"{BASE}retry/", ids(failed, running, manual, broken), format="json"
    )
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["matched"] == 4
    [retried] = data["retried"]
    new = JobRun.objects.get(pk=retried["new_id"])
    assert (retried["id"], retried["job_name"]) == (str(failed.pk), "mail.send")
    assert (new.job_name, new.status) == ("mail.send", Status.QUEUED)
    assert backend == [failed.pk]
    refused = {row["id"]: row for row in data["not_retried"]}
    assert refused.keys() == {str(running.pk), str(manual.pk), str(broken.pk)}
    assert refused[str(running.pk)] == {
        "id": str(running.pk),
        "job_name": "mail.send",
        "reason": "It is still running: only finished runs are retried.",
        "error": False,
    }
    assert refused[str(manual.pk)]["reason"] == (
        "No enabled integration can enqueue source 'command' again."
    )
    assert refused[str(manual.pk)]["error"] is False
    assert refused[str(broken.pk)]["reason"] == (
        "ConnectionError: Error 111 connecting to 127.0.0.1:1. Refused."
    )
    assert refused[str(broken.pk)]["error"] is True


def test_bulk_retry_by_list_filters(api, make_run, backend):
    one = make_run("imports", status=Status.FAILED, source="tests_backend")
    make_run("imports", status=Status.SUCCEEDED, source="tests_backend")
    make_run("exports", status=Status.FAILED, source="tests_backend")
    response = api.post(f"{BASE}retry/?job_name=imports&status=failed")
    assert response.status_code == 202
    assert [row["id"] for row in response.json()["retried"]] == [str(one.pk)]
    assert backend == [one.pk]


def test_bulk_retry_needs_ids_or_a_filter_with_a_value(api, make_run, backend):
    make_run(status=Status.FAILED, source="tests_backend")
    for query, body in [
        ("", {}),
        ("", {"ids": []}),
        ("?job_name=", {}),
        ("?status=,", {}),
    ]:
        response = api.post(f"{BASE}retry/{query}", body, format="json")
        assert response.status_code == 400, query
        assert "ids" in response.json()
    assert backend == []


def test_bulk_retry_bad_input_names_the_field(api, backend):
    for query, body, field in [
        ("", {"ids": ["nope"]}, "ids"),
        ("", {"ids": "x"}, "ids"),
        ("?status=done", {}, "status"),
        ("?jobname=a", {}, "jobname"),
    ]:
        response = api.post(f"{BASE}retry/{query}", body, format="json")
        assert response.status_code == 400, (query, body)
        assert field in response.json(), response.json()
    response = api.post(f"{BASE}retry/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


def test_bulk_retry_refuses_more_runs_than_it_enqueues_at_once(
    api, make_run, backend, monkeypatch
):
    monkeypatch.setattr("django_jobstatus.api.views.BULK_MAX", 2)
    for _ in range(3):
        make_run("imports", status=Status.FAILED, source="tests_backend")
    response = api.post(f"{BASE}retry/?job_name=imports")
    assert response.status_code == 400
    assert response.json()["ids"] == [
        "The ids and filters pick 3 runs; retry at most 2 at a time."
    ]
    assert backend == []


def test_bulk_retry_of_another_owners_runs_finds_nothing(
    settings, client_for, make_user, make_run, backend
):
    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}
    owner, other = make_user(staff=False), make_user(staff=False)
    theirs = make_run(status=Status.FAILED, source="tests_backend", owner=other)
    mine = make_run(status=Status.FAILED, source="tests_backend", owner=owner)
    response = client_for(owner).post(f"{BASE}retry/", ids(theirs, mine), format="json")
    assert response.status_code == 202
    assert response.json()["matched"] == 1
    assert backend == [mine.pk]


# Bulk delete.


def test_bulk_delete_removes_finished_runs_and_says_how_many_were_left(api, make_run):
    done = make_run(status=Status.SUCCEEDED)
    done.log(logging.INFO, "one")
    done.log(logging.INFO, "two")
    failed = make_run(status=Status.FAILED)
    running = make_run()
    queued = make_run(status=Status.QUEUED)
    untouched = make_run(status=Status.SUCCEEDED)
    response = api.post(
        f"{BASE}delete/", ids(done, failed, running, queued), format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "matched": 4,
        "deleted": 2,
        "logs": 2,
        "not_finished": 2,
        "held": 0,
    }
    assert set(JobRun.objects.values_list("pk", flat=True)) == {
        running.pk,
        queued.pk,
        untouched.pk,
    }
    assert not JobLog.objects.filter(run_id=done.pk).exists()


def test_bulk_delete_by_list_filters(api, make_run):
    make_run("imports", status=Status.FAILED)
    make_run("imports", status=Status.SUCCEEDED)
    kept = make_run("exports", status=Status.FAILED)
    response = api.post(f"{BASE}delete/?job_name=imports")
    assert response.json() == {
        "matched": 2,
        "deleted": 2,
        "logs": 0,
        "not_finished": 0,
        "held": 0,
    }
    assert list(JobRun.objects.values_list("pk", flat=True)) == [kept.pk]


def test_bulk_delete_by_params_and_text_deletes_only_what_the_list_shows(api, make_run):
    picked = make_run("mail", status=Status.FAILED, params={"user_id": 7, "n": 1})
    picked.log(logging.ERROR, "boom")
    make_run("mail", status=Status.FAILED, params={"user_id": 8})
    make_run("other", status=Status.FAILED, params={"user_id": 7})
    query = 'params={"user_id": 7}&q=mai'
    listed = [row["id"] for row in api.get(f"{BASE}?{query}").json()["results"]]
    assert listed == [str(picked.pk)]
    response = api.post(f"{BASE}delete/?{query}")
    assert response.json() == {
        "matched": 1,
        "deleted": 1,
        "logs": 1,
        "not_finished": 0,
        "held": 0,
    }
    assert not JobRun.objects.filter(pk=picked.pk).exists()
    assert JobRun.objects.count() == 2


def test_bulk_delete_needs_ids_or_a_filter_with_a_value(api, make_run):
    run = make_run(status=Status.SUCCEEDED)
    for query, body in [
        ("", {}),
        ("", {"ids": []}),
        ("?q=%20", {}),
        ("?job_name=", {}),
    ]:
        response = api.post(f"{BASE}delete/{query}", body, format="json")
        assert response.status_code == 400, query
        assert "ids" in response.json()
    for query, body, field in [
        ("", {"ids": [None]}, "ids"),
        ("?finished_before=soon", {}, "finished_before"),
        ("?status=finishd", {}, "status"),
    ]:
        response = api.post(f"{BASE}delete/{query}", body, format="json")
        assert response.status_code == 400, query
        assert field in response.json()
    assert JobRun.objects.filter(pk=run.pk).exists()


def test_bulk_delete_of_unknown_ids_deletes_nothing(api, make_run):
    run = make_run(status=Status.SUCCEEDED)
    response = api.post(f"{BASE}delete/", {"ids": [str(uuid.uuid4())]}, format="json")
    assert response.json() == {
        "matched": 0,
        "deleted": 0,
        "logs": 0,
        "not_finished": 0,
        "held": 0,
    }
    assert JobRun.objects.filter(pk=run.pk).exists()


def test_an_owner_may_not_bulk_delete(settings, client_for, make_user, make_run):
    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}
    owner = make_user(staff=False)
    mine = make_run(status=Status.SUCCEEDED, owner=owner)
    response = client_for(owner).post(f"{BASE}delete/", ids(mine), format="json")
    assert response.status_code == 403
    assert JobRun.objects.filter(pk=mine.pk).exists()


# Through a real integration.


def test_bulk_retry_through_celery_whose_broker_is_away(api, make_run, away_celery):
    """Celery's own error, from a real publish to a broker nobody listens on."""
    run = make_run(
        "tests.add",
        status=Status.FAILED,
        source="celery",
        params={"args": [1, 2], "kwargs": {}},
    )
    response = api.post(f"{BASE}retry/", ids(run), format="json")
    assert response.status_code == 202, response.content
    [refused] = response.json()["not_retried"]
    assert refused["error"] is True
    assert "refused" in refused["reason"].lower()
    assert response.json()["retried"] == []
    # The queued run recorded at publish is gone again: no run waits for ever.
    assert list(JobRun.objects.values_list("pk", flat=True)) == [run.pk]


@pytest.fixture
def celery_worker(db_proxy, tmp_path_factory) -> Iterator[Popen[bytes]]:
    from tests.contrib.workers import celery_worker as started_celery_worker

    with started_celery_worker(
        db_proxy,
        tmp_path_factory,
        pool="solo",
        queue="jobstatus-api-tests",
        prefix="jobstatus-api-tests",
    ) as process:
        yield process


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_bulk_retry_through_a_real_celery_worker(api, make_run, celery_worker):
    """The retried task goes through a real Redis broker and runs in a real worker."""
    from django_jobstatus.contrib import celery as jobstatus_celery
    from tests.contrib.celery_app import app
    from tests.contrib.workers import refreshed, wait_for

    jobstatus_celery.connect(app)
    try:
        runs = [
            make_run(
                "tests.add",
                status=Status.FAILED,
                source="celery",
                queue="jobstatus-api-tests",
                params={"args": [n, 1], "kwargs": {}},
            )
            for n in (1, 2)
        ]
        response = api.post(f"{BASE}retry/?job_name=tests.add&status=failed")
    finally:
        jobstatus_celery.disconnect()
    assert response.status_code == 202, response.content
    assert response.json()["not_retried"] == []
    retried = {row["id"]: row["new_id"] for row in response.json()["retried"]}
    assert retried.keys() == {str(run.pk) for run in runs}
    for new_id in retried.values():
        new = JobRun.objects.get(pk=new_id)
        wait_for(
            lambda new=new: refreshed(new).is_finished,
            timeout=60,
            what=f"retried run {new.pk} to finish",
            process=celery_worker,
            log=celery_worker.log,  # type: ignore[attr-defined]
        )
    results = sorted(
        JobRun.objects.filter(pk__in=retried.values()).values_list("status", "result")
    )
    assert results == [(Status.SUCCEEDED, 2), (Status.SUCCEEDED, 3)]


def test_a_bulk_delete_the_database_stops_partway_says_how_many_went(
    api, make_run, monkeypatch
):
    """Its batches commit one by one: an error after the first is no 500 hiding them."""
    from django.db import OperationalError

    from django_jobstatus import retention

    runs = [make_run("tests.partway", status=Status.FAILED) for _ in range(3)]
    monkeypatch.setattr(retention, "PURGE_BATCH_SIZE", 1)
    batch = retention._Batches._batch_with_retries
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError("server closed the connection unexpectedly")
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(retention._Batches, "_batch_with_retries", failing)
    response = api.post(
        f"{BASE}delete/", ids(*runs), format="json", HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 503, response.content
    left = JobRun.objects.filter(pk__in=[run.pk for run in runs]).count()
    assert response.json()["deleted"] == 3 - left == 1
    assert "server closed the connection" in response.json()["detail"]


@pytest.mark.parametrize("action", ["kill", "retry", "delete"])
def test_an_empty_ids_list_with_a_filter_picks_no_run(api, make_run, backend, action):
    """Ids given are a selection, even an empty one: a client sending the rows it
    selected (none) with its view's filter killed, retried or deleted every run of it."""
    running = make_run("x", source="tests_backend")
    done = make_run("x", status=Status.FAILED, source="tests_backend")
    response = api.post(f"{BASE}{action}/?job_name=x", {"ids": []}, format="json")
    assert response.status_code in (200, 202), response.content
    assert response.json()["matched"] == 0, response.content
    running.refresh_from_db()
    assert running.kill_requested_at is None
    assert JobRun.objects.filter(pk=done.pk).exists()
    assert backend == []
