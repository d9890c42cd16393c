"""metrics/: Prometheus text (or OpenMetrics) from the tables, read back with prometheus_client's parsers."""

from __future__ import annotations

import http.client
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest

pytest.importorskip("prometheus_client")

from django.utils import timezone
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from django_jobstatus import checks, health
from django_jobstatus.models import JobRun, Status

URL = "/api/jobstatus/metrics/"
TOKEN = "scraper-token-0123456789"  # noqa: S105


class RefusesBearer(BaseAuthentication):
    """Like a JWT authenticator: any Bearer token it does not know is a 401."""

    def authenticate(self, request):
        if request.META.get("HTTP_AUTHORIZATION", "").startswith("Bearer "):
            raise AuthenticationFailed("unknown token")
        return None

    def authenticate_header(self, request):
        return "Bearer"


def _samples(text: str, parse=text_string_to_metric_families) -> dict:
    found = {}
    for family in parse(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def history(monitor, past_run):
    for _ in range(3):
        past_run("tests.import", took=timedelta(seconds=10))
    past_run("tests.import", took=timedelta(seconds=30), status=Status.FAILED)
    past_run("tests.old", ago=timedelta(hours=5))  # outside the window
    ninety_seconds_ago = timezone.now() - timedelta(seconds=90)
    JobRun.objects.enqueue(
        "tests.mail", created_at=ninety_seconds_ago, queued_at=ninety_seconds_ago
    )
    JobRun.objects.start("tests.import")
    monitor("tests.import", max_failures=1)
    health.check()


def test_figures_by_job_and_status(api, history, django_assert_max_num_queries):
    with django_assert_max_num_queries(
        7
    ):  # session, user, and at most four for the figures
        response = api.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.content.decode())
    recent = "jobstatus_recent_runs"
    assert (
        samples[(recent, (("job_name", "tests.import"), ("status", "succeeded")))] == 3
    )
    assert samples[(recent, (("job_name", "tests.import"), ("status", "failed")))] == 1
    assert samples[(recent, (("job_name", "tests.import"), ("status", "running")))] == 1
    assert not [
        labels for _name, labels in samples if ("job_name", "tests.old") in labels
    ]
    active = "jobstatus_active_runs"
    assert samples[(active, (("job_name", "tests.import"), ("status", "running")))] == 1
    assert samples[(active, (("job_name", "tests.mail"), ("status", "queued")))] == 1
    age = samples[
        ("jobstatus_oldest_queued_age_seconds", (("job_name", "tests.mail"),))
    ]
    assert 90 <= age < 600  # created 90 s ago
    p50 = samples[
        ("jobstatus_run_duration_p50_seconds", (("job_name", "tests.import"),))
    ]
    p95 = samples[
        ("jobstatus_run_duration_p95_seconds", (("job_name", "tests.import"),))
    ]
    assert p50 == pytest.approx(10)
    assert p95 == pytest.approx(27, abs=0.1)  # 10, 10, 10, 30: interpolated
    state = "jobstatus_monitor_state"
    labels = lambda value: (("job_name", "tests.import"), (state, value))  # noqa: E731
    assert samples[(state, labels("failing"))] == 1
    assert samples[(state, labels("healthy"))] == 0


def test_openmetrics_when_the_scraper_asks(api, history):
    response = api.get(URL, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    text = response.content.decode()
    assert text.endswith("# EOF\n")
    samples = _samples(text, openmetrics_families)
    state = "jobstatus_monitor_state"
    assert samples[(state, (("job_name", "tests.import"), (state, "failing")))] == 1


def test_an_empty_table_gives_valid_output(api, db):
    response = api.get(URL)
    assert response.status_code == 200
    names = {
        family.name
        for family in text_string_to_metric_families(response.content.decode())
    }
    assert "jobstatus_monitor_state" in names


@pytest.mark.parametrize(("perms", "expected"), [((), 403), (("view",), 200)])
def test_protected_like_the_api(make_user, client_for, db, perms, expected):
    assert client_for(make_user(*perms)).get(URL).status_code == expected
    assert client_for(None).get(URL).status_code in (401, 403)


def test_never_for_a_user_who_sees_only_their_own_runs(
    make_user, client_for, settings, db
):
    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}
    owner = make_user(staff=False)
    assert client_for(owner).get("/api/jobstatus/runs/").status_code == 200
    assert client_for(owner).get(URL).status_code == 403


def test_bearer_token_for_scrapers(client, settings, db):
    settings.JOBSTATUS = {
        "METRICS_BEARER_TOKEN": TOKEN,
        # A Bearer-token authenticator of the project's must not refuse the scraper's token.
        "API_AUTHENTICATION_CLASSES": ["tests.api.test_metrics.RefusesBearer"],
    }
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get(URL).status_code in (401, 403)
    # The token opens metrics/ only.
    runs = client.get("/api/jobstatus/runs/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert runs.status_code in (401, 403)


def _scrape(live_server: Any, authorization: bytes) -> int:
    """The status of a GET of metrics/ over real HTTP, the header sent as these bytes."""
    address = urlparse(live_server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest("GET", URL)
        connection.putheader("Authorization", authorization)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize(
    "token",
    [
        "geheimnis-schlüssel-0123456789",  # not ASCII
        "scraper-token-0123456789 ",  # a space at the end (pasted from a secret store)
    ],
)
def test_a_token_a_header_cannot_carry_as_is_is_e006_and_still_lets_the_scraper_in(
    live_server: Any, settings: Any, token: str
) -> None:
    """The checks held METRICS_BEARER_TOKEN to 16 characters only, and the view compared
    the header with f"Bearer {token}": a token that is not ASCII arrives as its UTF-8
    bytes decoded latin-1, the space at the end is stripped by the server, and every
    scrape was a 401. The checks refuse such a token (visible ASCII only), and a server
    that never ran them compares the bytes sent."""
    settings.JOBSTATUS = {**settings.JOBSTATUS, "METRICS_BEARER_TOKEN": token}
    assert [m.id for m in checks.check_alerts()] == ["jobstatus.E006"]
    # What Prometheus sends: the configured credentials, UTF-8 encoded.
    assert _scrape(live_server, f"Bearer {token}".encode()) == 200
    assert _scrape(live_server, b"Bearer scraper-token-0123456789x") in (401, 403)


def test_the_token_is_compared_whole(client, settings, db):
    """The scheme is case-insensitive (RFC 9110); the token is neither a prefix nor blank."""
    settings.JOBSTATUS = {"METRICS_BEARER_TOKEN": TOKEN}
    assert client.get(URL, HTTP_AUTHORIZATION=f"bearer  {TOKEN}").status_code == 200
    for sent in ("Bearer", "Bearer ", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN):
        assert client.get(URL, HTTP_AUTHORIZATION=sent).status_code in (401, 403), sent
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer töken").status_code in (401, 403)
    settings.JOBSTATUS = {"METRICS_BEARER_TOKEN": " " * 20}  # E006; opens nothing
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer ").status_code in (401, 403)


def test_statuses_without_runs_in_the_window_are_left_out(api, history):
    samples = _samples(api.get(URL).content.decode())
    recent = "jobstatus_recent_runs"
    assert (recent, (("job_name", "tests.import"), ("status", "lost"))) not in samples


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=abc",
        "text/plain; version=x.y",
    ],
)
def test_a_malformed_accept_header_gets_the_text_format(api, history, accept):
    """A scraper's Accept header is a preference: one the parser cannot read gets the
    Prometheus text format, never a 500 (prometheus_client's choose_encoder raised a
    TypeError on a version that is not a number)."""
    response = api.get(URL, HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = _samples(response.content.decode())
    labels = (("job_name", "tests.import"), ("status", "failed"))
    assert samples[("jobstatus_recent_runs", labels)] == 1
