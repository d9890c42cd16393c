"""Issue 11: hostile and careless input never widens a bulk action, never leaks, never 500s."""

from __future__ import annotations

import base64
import json
import re

import pytest

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


@pytest.fixture
def active(make_run):
    """Two active runs and a finished one; the bulk tests check none of them is asked to stop."""
    return [make_run("a"), make_run("b", status=Status.QUEUED), make_run("c")]


def assert_nobody_asked():
    assert not JobRun.objects.kill_requested().exists()


# 1. Empty or blank filter values never widen a bulk action.


@pytest.mark.parametrize(
    "query",
    [
        "job_name=",
        "job_name=%20",
        "status=",
        "status=,",
        "q=",
        "q=%20%20",
        "params=",
        "period=",
        "source=",
        "subject=",
        "created_after=",
        "job_name=&status=&q=",
    ],
)
def test_bulk_kill_with_only_empty_filters_is_400_and_asks_nobody(api, active, query):
    response = api.post(f"{BASE}kill/?{query}", {}, format="json")
    assert response.status_code == 400, response.content
    # "Give ids or a filter", or for status=, the bad value itself.
    assert list(response.json()) in (["ids"], ["status"])
    assert_nobody_asked()


def test_bulk_kill_with_an_empty_parent_is_400(api, active):
    response = api.post(f"{BASE}kill/?parent=", {}, format="json")
    assert response.status_code == 400
    assert "parent" in response.json()
    assert_nobody_asked()


@pytest.mark.parametrize("value", ["{}", "%7B%7D", "%20{%20}%20"])
@pytest.mark.parametrize("action", ["kill", "retry", "delete"])
def test_bulk_actions_with_an_empty_params_object_are_400_and_touch_nobody(
    api, make_run, action, value
):
    """``params={}`` contains every run's params: like ``params=``, it is no filter, so a
    bulk action with only it is the "ids or a filter" 400 and asks, enqueues or deletes nothing."""
    make_run("a", params={"user_id": 7})
    make_run("b", status=Status.QUEUED)
    make_run("c", status=Status.SUCCEEDED)
    response = api.post(f"{BASE}{action}/?params={value}", {}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["ids"]
    assert_nobody_asked()
    assert JobRun.objects.count() == 3


@pytest.mark.parametrize("name", ["backend_id", "jobname", "status_", "cursor"])
def test_bulk_kill_with_an_unknown_parameter_is_400_naming_it(api, active, name):
    response = api.post(f"{BASE}kill/?{name}=x&job_name=a", {}, format="json")
    assert response.status_code == 400, response.content
    assert name in response.json()
    assert_nobody_asked()


def test_bulk_kill_with_a_real_filter_still_works(api, active):
    response = api.post(f"{BASE}kill/?job_name=a&status=", {}, format="json")
    assert response.json() | {"matched": 1, "active": 1, "asked": 1} == response.json()
    # has_errors=false is a value, not an empty filter.
    response = api.post(f"{BASE}kill/?has_errors=false", {}, format="json")
    assert response.json()["asked"] == 2


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}?backend_id=X",
        f"{BASE}?jobname=a",
        f"{BASE}stats/?foo=1",
        "LOGS?ordering=level",
        "LOGS?status=failed",
    ],
)
def test_unknown_parameters_on_lists_are_400_naming_them(api, run, url):
    response = api.get(url.replace("LOGS", f"{BASE}{run.pk}/logs/"))
    assert response.status_code == 400, response.content
    name = url.rsplit("?", 1)[1].split("=")[0]
    assert name in response.json()


def test_drf_parameters_are_not_unknown(api, run):
    for url in [
        f"{BASE}?format=json&page_size=5&ordering=-created_at&cursor=",
        f"{BASE}stats/?bucket=day&format=json",
        f"{BASE}{run.pk}/logs/?page_size=5&format=json",
    ]:
        assert api.get(url).status_code == 200, url


# 4. 500s become 400s naming the field.


@pytest.mark.parametrize("period", ["999999999w", "999999999d 999999999d", "1e10d"])
@pytest.mark.parametrize("path", ["", "stats/", "LOGS"])
def test_a_period_too_long_is_400(api, run, path, period):
    url = f"{BASE}{run.pk}/logs/" if path == "LOGS" else f"{BASE}{path}"
    response = api.get(url, {"period": period})
    assert response.status_code == 400, response.content
    assert "period" in response.json()


def test_a_period_too_long_on_bulk_kill_is_400(api, active):
    response = api.post(f"{BASE}kill/?period=999999999w", {}, format="json")
    assert response.status_code == 400
    assert "period" in response.json()
    assert_nobody_asked()


@pytest.mark.parametrize("path", ["kill/", "retry/", "delete/", "{run}/kill/"])
def test_an_unknown_body_key_with_a_lone_surrogate_is_400_naming_it_escaped(
    api, active, path
):
    """A key holding a lone surrogate (valid JSON) is named escaped: raw, the 400 could not be
    encoded, and would be a 500."""
    url = BASE + path.format(run=active[0].pk)
    response = api.post(url, '{"\\ud800": 1}', content_type="application/json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["\\ud800"]
    assert_nobody_asked()
    assert JobRun.objects.count() == 3


def nested(depth):
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "params",
    [
        nested(3000),
        nested(400),
        '{"a":"\\u0000"}',
        '{"\\u0000":1}',
        '{"a":"\\ud800"}',
        '{"\\udfff":"x"}',
    ],
)
def test_params_that_no_database_can_compare_are_400(api, run, params):
    response = api.get(BASE, {"params": params})
    assert response.status_code == 400, response.content
    assert "params" in response.json()


def test_params_nested_a_little_still_filter(api, make_run):
    make_run(params={"a": {"b": {"c": 1}}})
    response = api.get(BASE, {"params": '{"a": {"b": {"c": 1}}}'})
    assert len(response.json()["results"]) == 1


def cursor(payload):
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


PK = "0190b6f4-0000-7000-8000-000000000000"


@pytest.mark.parametrize(
    ("ordering", "value"),
    [
        ("job_name", "a\x00b"),
        ("job_name", "\ud800"),
        ("-created_at", "0001-01-01T00:00:00+01:00"),
        ("-created_at", "9999-12-31T23:59:59-01:00"),
        ("duration", 2**63),
        ("duration", -(2**63) - 1),
        ("duration", 10**30),
    ],
)
def test_cursors_no_database_can_compare_are_400(api, run, ordering, value):
    raw = cursor({"o": ordering, "v": value, "i": PK, "p": False})
    response = api.get(BASE, {"ordering": ordering, "cursor": raw})
    assert response.status_code == 400, response.content
    assert "cursor" in response.json()


def test_a_cursor_with_an_offset_postgresql_cannot_hold_still_pages(api, make_run):
    make_run("a")
    raw = cursor(
        {"o": "-created_at", "v": "2999-01-01T00:00:00+21:17", "i": PK, "p": False}
    )
    response = api.get(BASE, {"cursor": raw})
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == 1


def test_a_bulk_kill_body_nested_100000_deep_is_400(api, active):
    body = '{"ids":' + "[" * 100_000 + "]" * 100_000 + "}"
    response = api.post(f"{BASE}kill/", body, content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    assert_nobody_asked()


def test_a_kill_body_nested_100000_deep_is_400(api, active):
    """The kill of one run parses its body as the bulk actions do: too deep is a 400, not a 500."""
    body = "[" * 100_000 + "]" * 100_000
    response = api.post(
        f"{BASE}{active[0].pk}/kill/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert "detail" in response.json()
    assert_nobody_asked()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_after", "0001-01-01T00:00:00+01:00"),
        ("created_before", "9999-12-31T23:59:59-01:00"),
        ("created_after", "2026-02-28"),
        ("created_after", "1767225600000"),
        ("started_before", "-1000"),
        # An offset PostgreSQL cannot hold (it stops at 15:59): compared in UTC.
        ("created_before", "1528-05-10T18:18:53+21:17"),
        ("created_after", "2026-01-01T00:00:00-23:59"),
        # RFC 3339 (the schema's date-time) allows a lower-case t and z: they were refused.
        ("created_after", "2026-01-01t08:00:00z"),
        ("created_before", "2026-01-01T08:00:00z"),
    ],
)
def test_dates_in_the_schema_are_accepted(api, run, field, value):
    """Every value the schema allows is answered, even one past the database's range."""
    assert api.get(BASE, {field: value}).status_code == 200


def test_a_lower_case_t_and_z_mean_what_upper_case_ones_do(api, make_run):
    from datetime import UTC, datetime

    run = make_run("a", created_at=datetime(2026, 1, 1, 8, tzinfo=UTC))
    for moment, expected in (
        ("2026-01-01t08:00:00z", [str(run.pk)]),
        ("2026-01-01t08:00:01z", []),
    ):
        found = api.get(BASE, {"created_after": moment}).json()["results"]
        assert [row["id"] for row in found] == expected, moment


# A date-time as RFC 3339 writes it: no offset with seconds (-04:56:02).
RFC_3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@pytest.mark.parametrize(
    ("time_zone", "field", "value", "shown"),
    [
        ("Europe/Berlin", "created_before", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ("America/New_York", "created_after", "0001-01-01T00:00Z", "0001-01-01T00:00:00Z"),
        # New York's offset was -04:56:02 then, which RFC 3339 cannot write.
        ("America/New_York", "created_after", "1800-01-01T00:00Z", "1800-01-01T00:00:00Z"),
        # Local time, as every moment answered, when it can write the bound.
        ("Europe/Berlin", "created_after", "2020-01-01T08:00Z", "2020-01-01T09:00:00+01:00"),
    ],
)  # fmt: skip
def test_stats_answer_any_bound_the_filters_accept(
    api, run, settings, time_zone, field, value, shown
):
    """With TIME_ZONE = "Europe/Berlin", ``runs/stats/?created_before=9999-12-31T23:59:59Z``
    (a bound "until forever", which the filter accepts) answered
    ``400 ["Datetime value out of range."]``, a list naming no parameter: the filter was
    fine, but the answer's ``until`` could not be written in local time (the year 10000).
    ``created_after=0001-01-01T00:00Z`` in New York did the same with ``since``."""
    settings.TIME_ZONE = time_zone
    response = api.get(f"{BASE}stats/", {field: value})
    assert response.status_code == 200, response.content
    bound = response.json()["since" if field == "created_after" else "until"]
    assert bound == shown
    assert RFC_3339.fullmatch(bound)
    assert [job["job_name"] for job in response.json()["jobs"]] == [run.job_name]


# 8. Unknown HTTP methods are 405 for a user who may see the API.


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "PUT", "PATCH"])
def test_unknown_methods_are_405_for_a_permitted_user(
    make_user, client_for, run, method
):
    client = client_for(make_user("view"))
    for url in [BASE, f"{BASE}{run.pk}/", f"{BASE}stats/"]:
        response = client.generic(method, url)
        assert response.status_code == 405, (method, url, response.status_code)


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND"])
def test_unknown_methods_are_still_refused_to_others(make_user, client_for, method):
    assert client_for(None).generic(method, BASE).status_code in (401, 403)
    assert client_for(make_user()).generic(method, BASE).status_code == 403


@pytest.mark.parametrize("ids", [[False], [0], [1], [True]])
def test_bulk_kill_ids_must_be_uuid_strings(api, active, ids):
    # DRF's UUIDField reads an integer (and false, as 0) as a UUID.
    response = api.post(f"{BASE}kill/", {"ids": ids}, format="json")
    assert response.status_code == 400
    assert "ids" in response.json()


# Held in issue 11, kept: a session login cannot act through the API without the CSRF token.


def test_api_posts_with_a_session_need_the_csrf_token(admin_user, run):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.get(BASE).status_code == 200  # the session is good for reading
    for url, body in [
        (f"{BASE}{run.pk}/kill/", {}),
        (f"{BASE}kill/", {"ids": [str(run.pk)]}),
    ]:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 403, url
        assert "CSRF" in response.json()["detail"]
    assert client.delete(f"{BASE}{run.pk}/").status_code == 403
    run.refresh_from_db()
    assert run.kill_requested_at is None


@pytest.mark.parametrize("force", [0, 1, "yes", "true"])
def test_bulk_kill_force_must_be_a_json_boolean(api, active, force):
    response = api.post(f"{BASE}kill/", {"ids": [], "force": force}, format="json")
    assert response.status_code == 400, response.content
    assert "force" in response.json()
    assert_nobody_asked()


@pytest.mark.postgres
def test_basic_credentials_the_database_cannot_look_up_are_refused_not_a_500(
    client, settings
):
    settings.JOBSTATUS = {
        **settings.JOBSTATUS,
        "API_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.BasicAuthentication"
        ],
    }
    token = base64.b64encode(b"nul\x00user:secret").decode()
    for path in (BASE, "/api/jobstatus/metrics/", "/api/jobstatus/monitors/"):
        response = client.get(path, HTTP_AUTHORIZATION=f"Basic {token}")
        assert response.status_code in (401, 403), (path, response.content)
