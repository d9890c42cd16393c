"""Malformed input answers 400 (404 for ids) with JSON naming the field; never 500."""

from __future__ import annotations

import base64
import json

import pytest

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "done"),
        ("status", "running,nope"),
        ("owner", "abc"),
        ("parent", "not-a-uuid"),
        ("has_errors", "maybe"),
        ("kill_requested", "2"),
        ("created_after", "yesterday-ish"),
        ("created_before", "2026-13-01"),
        ("started_after", "1e400"),
        ("started_before", "99999999999999999999"),
        ("finished_after", "2026-01-01T25:00"),
        ("finished_before", "NaN"),
        ("period", "1y"),
        ("period", "0h"),
        ("period", "today and tomorrow"),
        ("params", "{not json"),
        ("params", "[1, 2]"),
        ("params", '"text"'),
        ("page_size", "0"),
        ("page_size", "-5"),
        ("page_size", "100000"),
        ("page_size", "ten"),
        ("ordering", "priority"),
        ("ordering", "--created_at"),
        ("cursor", "garbage"),
        # Issue 11: an empty parent is not "no filter"; and values outside the schema.
        ("parent", ""),
        ("parent", " "),
        ("status", "running,nope"),
        ("period", "1000000000w"),
        ("has_errors", "maybe"),
        ("owner", "1.5"),
    ],
)
def test_bad_list_parameters_are_400_naming_the_field(api, run, field, value):
    response = api.get(BASE, {field: value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field]
    assert body[field]


@pytest.mark.parametrize(
    "params",
    ['{"token": "guess"}', '{"user": {"PassWord": "x"}}', '{"a": [{"api_key": 1}]}'],
)
def test_a_redacted_key_cannot_be_filtered_on(api, make_run, params):
    # Else the masked value could be found by guessing, one filter at a time.
    make_run(
        params={"token": "guess", "user": {"PassWord": "x"}, "a": [{"api_key": 1}]}
    )
    response = api.get(BASE, {"params": params})
    assert response.status_code == 400, response.content
    assert "is redacted (REDACT_KEYS)" in response.json()["params"][0]


def test_the_bad_status_value_is_named(api):
    message = api.get(BASE, {"status": "running,nope"}).json()["status"][0]
    assert "'nope'" in message
    assert "running" in message


def cursor(payload):
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "payload",
    [
        {
            "o": "-started_at",
            "v": None,
            "i": "0190b6f4-0000-7000-8000-000000000000",
            "p": False,
        },  # another ordering
        {
            "o": "-created_at",
            "v": "not a date",
            "i": "0190b6f4-0000-7000-8000-000000000000",
            "p": False,
        },
        {"o": "-created_at", "v": "2026-01-01T00:00:00Z", "i": "nope", "p": False},
        {
            "o": "-created_at",
            "v": "2026-01-01T00:00:00Z",
            "i": "0190b6f4-0000-7000-8000-000000000000",
            "p": "yes",
        },
        {
            "o": "-created_at",
            "v": 5,
            "i": "0190b6f4-0000-7000-8000-000000000000",
            "p": False,
        },
        ["a", "list"],
    ],
)
def test_tampered_cursors_are_400(api, payload):
    response = api.get(BASE, {"cursor": cursor(payload)})
    assert response.status_code == 400
    assert "cursor" in response.json()


def test_a_duration_cursor_must_hold_microseconds(api):
    response = api.get(
        BASE,
        {
            "ordering": "duration",
            "cursor": cursor(
                {
                    "o": "duration",
                    "v": "1s",
                    "i": "0190b6f4-0000-7000-8000-000000000000",
                    "p": False,
                }
            ),
        },
    )
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["{}/", "{}/logs/", "{}/kill/"])
@pytest.mark.parametrize("bad_id", ["abc", "1", "0190b6f4-0000-7000-8000", "%00"])
def test_malformed_ids_are_404_as_json(api, path, bad_id):
    url = BASE + path.format(bad_id)
    response = api.post(url) if path.endswith("kill/") else api.get(url)
    assert response.status_code == 404
    assert "detail" in response.json()


def test_malformed_id_on_delete_is_404(api):
    assert api.delete(f"{BASE}abc/").status_code == 404


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("runs/?format=", "xml"),
        ("runs/{run}/?format=", "yaml"),
        ("runs/{run}/logs/?format=", "csv"),
        ("runs/stats/?format=", "csv"),
        ("runs/latest/?job_name=a&format=", "yaml"),
        ("runs/kill/?job_name=a&format=", "yaml"),
        ("monitors/?format=", "yaml"),
        ("?format=", "yaml"),
    ],
)
def test_an_unknown_format_is_a_400_naming_format(api, make_run, path, value):
    """An unknown ``?format=`` is a bad parameter, not DRF's 404 "Not found.", which for a run
    that exists would say it is missing; and an action with one does nothing."""
    run = make_run("a")
    url = "/api/jobstatus/" + path.format(run=run.pk) + value
    response = api.post(url, {}, format="json") if "kill" in path else api.get(url)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["format"]
    message = response.json()["format"][0]
    assert repr(value) in message
    assert "json" in message
    assert not JobRun.objects.kill_requested().exists()


@pytest.mark.parametrize(
    "body",
    [
        '{"ids": "0190b6f4-0000-7000-8000-000000000000"}',
        '{"ids": [{}]}',
        "[1]",
        '{"ids": ["x"]}',
    ],
)
def test_bad_bulk_kill_bodies_are_400(api, run, body):
    response = api.post(f"{BASE}kill/", body, content_type="application/json")
    assert response.status_code == 400
    run.refresh_from_db()
    assert run.kill_requested_at is None


def test_bulk_kill_with_a_bad_filter_is_400_and_kills_nothing(api, run):
    response = api.post(f"{BASE}kill/?status=bogus")
    assert response.status_code == 400
    assert "status" in response.json()
    run.refresh_from_db()
    assert run.kill_requested_at is None


@pytest.mark.parametrize(
    ("url", "status", "field"),
    [
        (f"{BASE}?owner=99999999999999999999999", 400, "owner"),
        (f"{BASE}?owner=-1", 200, None),
        ("LOGS?level=99999", 200, None),
        ("LOGS?level_exact=99999", 200, None),
        (f"{BASE}?subject=a%00b", 400, "subject"),
        (f"{BASE}?q=%00", 400, "q"),
        (f"{BASE}?source=x%00", 400, "source"),
        (f"{BASE}?job_name=x%00", 400, "job_name"),
        (f"{BASE}latest/?job_name=a%00", 400, "job_name"),
        (f'{BASE}?params={{"a":1e400}}', 400, "params"),
        (f'{BASE}?params={{"a":NaN}}', 400, "params"),
        (f'{BASE}?params={{"a%00":1}}', 400, "params"),
        (f'{BASE}?params={{"a":99999999999999999999999999}}', 200, None),
        (f"{BASE}?created_after=1e20", 400, "created_after"),
        (f"{BASE}?created_after=-99999999999999", 400, "created_after"),
    ],
)
def test_edge_values_answer_400_or_nothing_never_500(api, run, url, status, field):
    """Values that reach the database's limits (PostgreSQL rejects NUL, SQLite big integers)."""
    response = api.get(url.replace("LOGS", f"{BASE}{run.pk}/logs/"))
    assert response.status_code == status, response.content
    if field:
        assert field in response.json()


@pytest.mark.parametrize("action", ["kill", "retry", "delete"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"idz": ["0190b6f4-0000-7000-8000-000000000000"]}', "idz"),
        ('{"id": ["0190b6f4-0000-7000-8000-000000000000"]}', "id"),
        ('{"ids": [], "forse": true}', "forse"),
        ('{"\\u0000": 1}', "\x00"),
    ],
)
def test_an_unknown_field_in_a_bulk_body_is_400_naming_it(
    api, make_run, action, body, field
):
    """A misspelt ``ids`` never leaves the filters to pick every run they match."""
    picked = make_run("tests.typo", status=Status.FAILED)
    response = api.post(
        f"{BASE}{action}/?job_name=tests.typo", body, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert JobRun.objects.filter(pk=picked.pk).exists()
    assert JobRun.objects.count() == 1  # nothing enqueued again


def test_an_unknown_field_in_a_kill_body_is_400_naming_it(api, run):
    """``{"forse": true}`` is not a kill that is quietly not forced."""
    response = api.post(f"{BASE}{run.pk}/kill/", {"forse": True}, format="json")
    assert response.status_code == 400, response.content
    assert "forse" in response.json()
    run.refresh_from_db()
    assert run.kill_requested_at is None


@pytest.mark.parametrize(
    "body",
    [
        '{"ids": [1e400]}',
        '{"ids": [99999999999999999999999999999999999999999]}',
        '{"ids": ["0190b6f4-0000-7000-8000-00000000000\\u0000"]}',
        '{"ids": [["0190b6f4-0000-7000-8000-000000000000"]]}',
        '{"ids": null}',
        '{"ids": ["0190b6f4-0000-7000-8000-000000000000"], "force": [true]}',
        '{"ids": ["0190b6f4-0000-7000-8000-000000000000"], "force": "true"}',
        '{"ids": ["0190b6f4-0000-7000-8000-000000000000"], "force": 1}',
    ],
)
@pytest.mark.parametrize("action", ["kill", "retry", "delete"])
def test_bad_bulk_values_are_400_naming_the_field(api, run, action, body):
    response = api.post(f"{BASE}{action}/", body, content_type="application/json")
    if action != "kill" and '"force"' in body:
        # force is the bulk kill's: elsewhere it is an unknown field.
        assert response.status_code == 400, response.content
        assert "force" in response.json()
        return
    assert response.status_code == 400, response.content
    assert set(response.json()) <= {"ids", "force"}, response.json()
    run.refresh_from_db()
    assert run.kill_requested_at is None


@pytest.mark.parametrize(
    "body", ['{"force": [true]}', '{"force": "yes"}', '{"force": null}', "[]"]
)
def test_bad_kill_bodies_are_400(api, run, body):
    response = api.post(f"{BASE}{run.pk}/kill/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    run.refresh_from_db()
    assert run.kill_requested_at is None


@pytest.mark.parametrize(
    ("method", "url", "field"),
    [
        ("post", "delete/?job_name=x&status=failed&status=", "status"),
        ("post", "kill/?status=running&job_name=imports&job_name=", "job_name"),
        ("post", "retry/?job_name=x&job_name=", "job_name"),
        ("get", "?status=failed&status=succeeded", "status"),
        ("get", "?job_name=x&page_size=1&page_size=500", "page_size"),
        ("get", "export/?format=csv&format=jsonl", "format"),
    ],
)
def test_a_parameter_given_twice_is_a_400_naming_it(api, make_run, method, url, field):
    """Django's forms read a parameter's last value only: ``status=failed&status=``
    filtered nothing, and a bulk delete of a job's failed runs deleted its succeeded ones
    too; ``job_name=imports&job_name=`` asked every running run of every job to stop."""
    failed = make_run("x", status=Status.FAILED)
    succeeded = make_run("x", status=Status.SUCCEEDED)
    imports = make_run("imports")
    other = make_run("billing")
    response = getattr(api, method)(f"{BASE}{url}", {}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert JobRun.objects.filter(pk__in=[failed.pk, succeeded.pk]).count() == 2
    assert not JobRun.objects.filter(
        pk__in=[imports.pk, other.pk], kill_requested_at__isnull=False
    ).exists()
