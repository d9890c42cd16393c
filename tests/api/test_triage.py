"""runs/<id>/retry/, runs/export/, and the worker, queue and backend_job_id filters."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.test import override_settings

from django_jobstatus import track
from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(retry_backend):
    return retry_backend


# Retry.


def test_retry_answers_the_new_run(api, make_run, backend):
    run = make_run("mail.send", status=Status.FAILED, source="tests_backend")
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["id"] != str(run.pk)
    assert (data["job_name"], data["status"]) == ("mail.send", "queued")
    assert backend == [run.pk]


@pytest.mark.parametrize("still", [Status.QUEUED, Status.RUNNING, Status.RETRYING])
def test_retry_of_an_active_run_is_a_409_like_the_bulk_retry(
    api, make_run, backend, still
):
    run = make_run("mail.send", status=still, source="tests_backend")
    bulk = api.post(f"{BASE}retry/", {"ids": [str(run.pk)]}, format="json").json()
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 409, response.content
    reason = f"It is still {still}: only finished runs are retried."
    assert response.json()["detail"] == bulk["not_retried"][0]["reason"] == reason
    assert backend == []
    assert JobRun.objects.count() == 1


def test_retry_without_an_integration_is_a_409(api, make_run):
    run = make_run(status=Status.FAILED, source="command")
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 409
    assert "cannot be retried" in response.json()["detail"]
    assert JobRun.objects.count() == 1


def test_the_brokers_error_is_a_503_not_a_500(api, make_run, backend):
    run = make_run(
        status=Status.FAILED, source="tests_backend", params={"broken": True}
    )
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "The task system could not enqueue the run again: "
        "ConnectionError: Error 111 connecting to 127.0.0.1:1. Refused."
    )


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"cut": True, "length": 2_000_000, "preview": "{"}, "too big to keep"),
        ({"args": ["<object at 0x7f>"], "repr": True}, "kept as text"),
    ],
)
def test_a_run_that_cannot_be_enqueued_as_recorded_is_a_409_not_a_503(
    api, make_run, backend, params, reason
):
    """A refusal that trying again later cannot change: a 503 says "try again"."""
    run = make_run(status=Status.FAILED, source="tests_backend", params=params)
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 409, response.content
    assert reason in response.json()["detail"]
    assert not response.json()["detail"].startswith("The task system")
    bulk = api.post(f"{BASE}retry/", {"ids": [str(run.pk)]}, format="json").json()
    [refused] = bulk["not_retried"]
    assert (refused["error"], reason in refused["reason"]) == (False, True)
    assert backend == []
    assert JobRun.objects.count() == 1


def test_retry_needs_the_change_permission(client_for, make_user, make_run, backend):
    run = make_run(status=Status.FAILED, source="tests_backend")
    assert (
        client_for(make_user("view")).post(f"{BASE}{run.pk}/retry/").status_code == 403
    )
    assert backend == []


def test_retry_of_a_missing_run_is_a_404(api):
    assert (
        api.post(f"{BASE}0190c3d2-8f1e-7a2b-9c4d-1234567890ab/retry/").status_code
        == 404
    )
    assert api.post(f"{BASE}nope/retry/").status_code == 404


# Export.


def lines(response) -> str:
    assert response.status_code == 200, (
        response.content if not response.streaming else ""
    )
    return b"".join(response.streaming_content).decode()


@override_settings(JOBSTATUS={"REDACT_KEYS": ["password"]})
def test_export_csv_with_filters_redacted(api, make_run):
    one = make_run("a", status=Status.FAILED, params={"password": "hunter2", "n": 1})
    make_run("a", status=Status.SUCCEEDED)
    make_run("b", status=Status.FAILED)
    response = api.get(f"{BASE}export/?job_name=a&status=failed&format=csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(lines(response))))
    assert [row["id"] for row in rows] == [str(one.pk)]
    assert json.loads(rows[0]["params"]) == {"n": 1, "password": "********"}


@override_settings(JOBSTATUS={"REDACT_KEYS": ["password"]})
def test_export_jsonl_masks_like_the_api(api, make_run):
    run = make_run("a", params={"nested": [{"Password": "x"}]})
    text = lines(api.get(f"{BASE}export/?format=jsonl"))
    exported = json.loads(text)
    shown = api.get(f"{BASE}{run.pk}/").json()
    assert (
        exported["params"] == shown["params"] == {"nested": [{"Password": "********"}]}
    )


def test_a_cut_value_s_preview_hides_keys_redacted_after_it_was_stored(
    api, make_run, settings
):
    """A value too big to keep is stored as a preview of its first characters, masked
    with the REDACT_KEYS of that moment. A key added to REDACT_KEYS later still showed
    its value in that preview, in the API, the export and the admin: the preview is now
    cut where the first such key begins."""
    settings.JOBSTATUS = {"JSON_MAX_LENGTH": 200}
    secret = {"user": "ann", "card_number": "4111-1111", "rows": ["x" * 50] * 10}
    with track("a", params=secret) as job:
        pass
    run = job.run
    stored = JobRun.objects.get(pk=run.pk).params
    assert stored["cut"] is True and "4111-1111" in stored["preview"]
    settings.JOBSTATUS = {"JSON_MAX_LENGTH": 200, "REDACT_KEYS": ["CARD_NUMBER"]}
    shown = api.get(f"{BASE}{run.pk}/").json()["params"]
    assert shown["preview"].startswith('{"user": "ann", ')
    assert "4111-1111" not in shown["preview"]
    assert "4111-1111" not in lines(api.get(f"{BASE}export/?format=jsonl"))
    # A key of that name inside a string is text, not a key: it is left as it is.
    with track(
        "b", params={"note": 'say "card_number": no', "rows": ["x" * 50] * 10}
    ) as job:
        pass
    run = job.run
    shown = api.get(f"{BASE}{run.pk}/").json()["params"]
    assert shown["preview"] == JobRun.objects.get(pk=run.pk).params["preview"]


def test_export_bad_input_is_a_400_in_json(api, make_run):
    response = api.get(f"{BASE}export/?format=xlsx")
    assert response.status_code == 400
    assert "format" in response.json()
    response = api.get(f"{BASE}export/?status=done&format=csv")
    assert response.status_code == 400
    assert "status" in response.json()


def test_export_defaults_to_csv(api, make_run):
    make_run()
    assert lines(api.get(f"{BASE}export/")).startswith("id,job_name,status")


# Filters.


def test_filters_by_worker_queue_and_backend_job_id(api, make_run):
    one = make_run(worker="w:1", queue="mail", backend_job_id="celery-abc")
    make_run(worker="w:2", queue="mail", backend_job_id="celery-def")
    make_run(worker="w:1", queue="reports")
    for query in ("worker=w:1&queue=mail", "backend_job_id=celery-abc"):
        found = api.get(f"{BASE}?{query}").json()["results"]
        assert [run["id"] for run in found] == [str(one.pk)], query


def test_a_real_celery_broker_that_is_away_is_a_503(api, make_run, away_celery):
    """Celery's own error, from a real publish to a broker nobody listens on."""
    run = make_run(
        "tests.add",
        status=Status.FAILED,
        source="celery",
        params={"args": [1, 2], "kwargs": {}},
    )
    response = api.post(f"{BASE}{run.pk}/retry/")
    assert response.status_code == 503, response.content
    detail = response.json()["detail"]
    assert detail.startswith("The task system could not enqueue the run again: ")
    assert "Error" in detail and "refused" in detail.lower()
    assert JobRun.objects.count() == 1
