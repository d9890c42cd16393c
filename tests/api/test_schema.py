"""The OpenAPI schema: valid, served with Swagger UI from static files, and fuzzed by schemathesis."""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from django_jobstatus.models import JobMonitor, JobRun

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.api.urls")]

PATHS = [
    "/runs/",
    "/runs/{id}/",
    "/runs/{id}/logs/",
    "/runs/{id}/kill/",
    "/runs/kill/",
    "/runs/latest/",
    "/runs/stats/",
    "/monitors/",
    "/monitors/{id}/",
    "/monitors/{id}/incidents/",
    "/metrics/",
    "/runs/{id}/retry/",
    "/runs/export/",
    "/runs/retry/",
    "/runs/delete/",
]


def test_schema_is_valid_and_describes_every_endpoint(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    paths = schema["paths"]
    assert {f"/api/jobstatus{path}" for path in PATHS} <= set(paths)
    list_parameters = {
        parameter["name"]
        for parameter in paths["/api/jobstatus/runs/"]["get"]["parameters"]
    }
    assert {
        "status", "job_name", "source", "subject", "owner", "parent", "has_errors", "kill_requested",
        "created_after", "created_before", "started_after", "started_before", "finished_after", "finished_before",
        "period", "q", "params", "ordering", "cursor", "page_size",
        "worker", "queue", "backend_job_id",
    } <= list_parameters  # fmt: skip
    for path, item in paths.items():
        for method, operation in item.items():
            if path.startswith("/api/jobstatus/"):
                assert operation.get("summary"), (path, method)
                for parameter in operation.get("parameters", []):
                    assert parameter.get("description"), (
                        path,
                        method,
                        parameter["name"],
                    )
    logs_parameters = {
        parameter["name"]
        for parameter in paths["/api/jobstatus/runs/{id}/logs/"]["get"]["parameters"]
    }
    assert {
        "level",
        "level_exact",
        "message",
        "after",
        "before",
        "period",
        "cursor",
        "page_size",
    } <= logs_parameters
    assert paths["/api/jobstatus/runs/{id}/kill/"]["post"]["responses"].keys() >= {
        "202",
        "404",
        "409",
    }
    assert paths["/api/jobstatus/runs/{id}/"]["delete"]["responses"].keys() >= {
        "204",
        "409",
    }


def test_every_operation_that_reads_a_body_lists_its_415(make_user, client_for, run):
    """A body that is not JSON (a form to a JSON-only endpoint, text to any) answers 415:
    the schema lists it for each operation with a request body, and each one answers it."""
    paths = SchemaGenerator(urlconf="tests.api.urls").get_schema(
        request=None, public=True
    )["paths"]
    with_body = {
        (path, method): operation
        for path, item in paths.items()
        for method, operation in item.items()
        if path.startswith("/api/jobstatus/") and "requestBody" in operation
    }
    assert len(with_body) >= 6, sorted(with_body)
    api = client_for(make_user(superuser=True))
    monitor = JobMonitor.objects.create(job_name=run.job_name)
    for (path, method), operation in with_body.items():
        assert "415" in operation["responses"], (path, method)
        url = path.format(id=monitor.pk if "monitors" in path else run.pk)
        response = getattr(api, method)(url, "x", content_type="text/plain")
        assert response.status_code == 415, (path, method, response.content)


def test_schema_generation_gives_no_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        SchemaGenerator().get_schema(request=None, public=True)
    assert not [
        record
        for record in caplog.records
        if "drf_spectacular" in record.name or "spectacular" in record.getMessage()
    ]


def test_swagger_ui_is_served_from_static_files_without_a_cdn(client):
    import drf_spectacular_sidecar

    sidecar = {
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
    }
    # A CSRF token is random: this one holds "cdn", as one in a make test run did.
    token = "0cdn" + "a" * 60
    with (
        patched_settings(sidecar),
        mock.patch("django.template.context_processors.get_token", return_value=token),
    ):
        html = client.get("/api/docs/").content.decode()
    assert token in html
    bundle = "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
    assert f"/static/{bundle}" in html
    # Every script, style sheet and icon comes from this site: no address with a host (a
    # CDN). Not a search for "cdn" in the page: its random CSRF token may hold those letters.
    addresses = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html)
    assert any(bundle in address for address in addresses)
    assert [a for a in addresses if re.match(r"(?:[a-z]+:)?//", a, re.I)] == []
    assert "unpkg.com" not in html and "cdn.jsdelivr" not in html
    assert (Path(drf_spectacular_sidecar.__file__).parent / "static" / bundle).is_file()


# Schemathesis: every operation, positive and negative inputs, every check (as the CLI's
# --checks all), as a superuser and anonymously.

USER, PASSWORD = "fuzzer", "fuzz-password"


@pytest.fixture
def fuzz_data(db, settings, django_user_model):
    """A superuser for Basic auth (fast hashing), and a few runs for the lists to show."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.JOBSTATUS = {
        "API_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.BasicAuthentication"
        ]
    }
    django_user_model.objects.create_superuser(USER, password=PASSWORD)
    parent = JobRun.objects.start("fuzz.parent", params={"user_id": 7, "password": "x"})
    parent.log(40, "boom")
    JobRun.objects.enqueue("fuzz.child", parent=parent)
    done = JobRun.objects.start("fuzz.done")
    done.mark_succeeded({"token": "t"})
    # The raw WSGI app closes the connection after each request when it is inside a
    # transaction (the test's); Django's test Client avoids that the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield done
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


# The schema as /api/schema/ serves it (same generator); built at collection, without the database.
# (schemathesis.pytest.from_fixture would load it from the live view, but it does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(
    SchemaGenerator(urlconf="tests.api.urls").get_schema(request=None, public=True)
)
schema.app = get_wsgi_application()
schema.config.generation.update(modes=list(GenerationMode), max_examples=25)
schema = schema.include(path_regex="^/api/jobstatus/")
AUTH = {
    "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
}


FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


# The routes beside runs/{id}/: runs/kill/, runs/stats/…
RUN_ROUTES = {"delete", "export", "kill", "latest", "retry", "stats"}


def excluded_checks(case):
    """The checks a case cannot pass for a reason OpenAPI cannot say; each one is explained."""
    excluded = []
    if case.query and case.query.get("cursor"):
        # A cursor is opaque: only the next and previous links of a page are valid ones.
        excluded.append(positive_data_acceptance)
    if case.operation.path in {
        f"/api/jobstatus/runs/{name}/" for name in ("kill", "retry", "delete")
    }:
        # "ids, or at least one filter with a value" spans the body and the query string.
        excluded.append(positive_data_acceptance)
    if (case.path_parameters or {}).get("id") in RUN_ROUTES:
        # An invalid run id that is the name of a route beside runs/{id}/ (GET runs/kill/)
        # reaches that route, which answers 405 to the method: another operation's answer.
        excluded.append(status_code_conformance)
    if case.operation.path == "/api/jobstatus/monitors/" and case.method == "POST":
        # A monitor's job must have recorded runs: the database decides, not the schema.
        excluded.append(positive_data_acceptance)
    return excluded


@schema.parametrize()
@FUZZ
def test_api_passes_every_check_as_a_superuser(case, fuzz_data):
    case.call_and_validate(auth=(USER, PASSWORD), excluded_checks=excluded_checks(case))


# Anonymous requests are refused before any query: the SQLite run is enough.
@pytest.mark.engine_agnostic
@schema.parametrize()
@FUZZ
def test_api_passes_every_check_anonymously(case, fuzz_data):
    case.call_and_validate(excluded_checks=excluded_checks(case))


def test_fuzz_data_is_reachable_through_the_wsgi_app(fuzz_data):
    """The fuzz test's requests reach the app as the superuser and see the fixture's runs."""
    from django.test import Client

    response = Client().get("/api/jobstatus/runs/?status=succeeded", headers=AUTH)
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [str(fuzz_data.pk)]
    assert response.json()["results"][0]["result"] == {"token": "********"}


# Answers checked against the schema, through the WSGI app as the fuzz superuser.


def _conforming(path: str, **case: Any) -> Any:
    """GET ``path``'s answer; fails unless its status and body are the ones the schema documents."""
    operation = schema[f"/api/jobstatus{path}"]["GET"]
    request = operation.Case(headers=AUTH, **case)
    response = request.call()
    request.validate_response(
        response, checks=[status_code_conformance, response_schema_conformance]
    )
    return response


def test_a_monitor_without_a_cadence_answers_the_null_next_expected_at_the_schema_allows(
    fuzz_data,
):
    """A monitor that watches only failures or durations (no ``every``, no ``cron``) is
    answered with ``"next_expected_at": null``, as its help text says; the schema typed the
    field as a date-time that is never null, so a client generated from it failed on the answer.
    """
    monitor = JobMonitor.objects.create(job_name="fuzz.done", max_failures=3)
    response = _conforming("/monitors/{id}/", path_parameters={"id": monitor.pk})
    assert response.json()["next_expected_at"] is None


def test_a_bad_page_size_of_a_monitor_s_incidents_is_a_400_the_schema_lists(fuzz_data):
    """``monitors/{id}/incidents/?page_size=0`` (below the schema's minimum) answers 400
    naming ``page_size``; the operation listed only 200, 401, 403 and 404, so a client
    built from the schema had no type for the error (schemathesis never saw it: its fixture
    has no monitor, so every incidents request was a 404 first)."""
    monitor = JobMonitor.objects.create(job_name="fuzz.done", max_failures=3)
    response = _conforming(
        "/monitors/{id}/incidents/",
        path_parameters={"id": monitor.pk},
        query={"page_size": 0},
    )
    assert response.status_code == 400
    assert list(response.json()) == ["page_size"]


def test_every_operation_lists_the_formats_it_answers_in(make_user, client_for, run):
    """``?format=`` picks the answer's renderer on every endpoint, and a format the view
    has not is a 400 naming it: the schema lists the parameter, its values and the 400 (it
    did not, and one run, its delete and its retry listed no 400)."""
    paths = SchemaGenerator(urlconf="tests.api.urls").get_schema(
        request=None, public=True
    )["paths"]
    api = client_for(make_user(superuser=True))
    monitor = JobMonitor.objects.create(job_name=run.job_name)
    listed = 0
    for path, item in paths.items():
        if not path.startswith("/api/jobstatus/") or path.endswith("/metrics/"):
            continue
        for method, operation in item.items():
            (format_,) = [p for p in operation["parameters"] if p["name"] == "format"]
            assert "400" in operation["responses"], (path, method)
            listed += 1
            if method != "get":
                continue
            url = path.format(id=monitor.pk if "monitors" in path else run.pk)
            url += "?job_name=" + run.job_name if path.endswith("/latest/") else ""
            glue = "&" if "?" in url else "?"
            for value in format_["schema"]["enum"]:
                response = api.get(f"{url}{glue}format={value}")
                assert response.status_code == 200, (path, value, response.content)
            response = api.get(f"{url}{glue}format=yaml")
            assert response.status_code == 400, (path, response.content)
            assert "format" in response.json(), path
    assert listed >= 19
