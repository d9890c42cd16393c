"""One permission rule on every endpoint: seeing needs view; acting needs view and the action's permission."""

from __future__ import annotations

import pytest

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE
from tests.matrix import USERS, may

pytestmark = pytest.mark.django_db


@pytest.fixture(params=list(USERS))
def who(request, make_user, client_for):
    spec = USERS[request.param]
    user = (
        None if spec is None else make_user(*spec[0], staff=spec[1], superuser=spec[2])
    )
    return spec, client_for(user)


@pytest.fixture
def runs(make_run):
    run = make_run("secret.job", params={"user_id": 7})
    finished = make_run("secret.job", status=Status.SUCCEEDED)
    return run, finished


def refused(response):
    assert response.status_code in (401, 403), (response.status_code, response.content)
    assert "secret.job" not in response.content.decode()


def test_reading_needs_view(who, runs):
    spec, client = who
    run, _finished = runs
    for url in [
        BASE.removesuffix("runs/"),
        BASE,
        f"{BASE}{run.pk}/",
        f"{BASE}{run.pk}/logs/",
        f"{BASE}latest/?job_name=secret.job",
        f"{BASE}stats/",
    ]:
        response = client.get(url)
        if may(spec, "view"):
            assert response.status_code == 200, url
        else:
            refused(response)


def test_killing_needs_view_and_change(who, runs):
    spec, client = who
    run, _finished = runs
    for response, allowed in [
        (client.post(f"{BASE}{run.pk}/kill/"), 202),
        (client.post(f"{BASE}kill/", {"ids": [str(run.pk)]}, format="json"), 200),
    ]:
        if may(spec, "view", "change"):
            assert response.status_code == allowed
        else:
            refused(response)
            assert not JobRun.objects.kill_requested().exists()


def test_retrying_needs_view_and_change(who, runs, retry_backend):
    spec, client = who
    _run, finished = runs
    finished.source = "tests_backend"
    finished.save(update_fields=["source"])
    body = {"ids": [str(finished.pk)]}
    for response in [
        client.post(f"{BASE}{finished.pk}/retry/"),
        client.post(f"{BASE}retry/", body, format="json"),
    ]:
        if may(spec, "view", "change"):
            assert response.status_code == 202
        else:
            refused(response)
    allowed = may(spec, "view", "change")
    assert retry_backend == ([finished.pk, finished.pk] if allowed else [])


def test_deleting_needs_view_and_delete(who, make_run, runs):
    spec, client = who
    _run, finished = runs
    other = make_run("secret.job", status=Status.FAILED)
    for response, allowed, gone in [
        (client.delete(f"{BASE}{finished.pk}/"), 204, finished),
        (
            client.post(f"{BASE}delete/", {"ids": [str(other.pk)]}, format="json"),
            200,
            other,
        ),
    ]:
        if may(spec, "view", "delete"):
            assert response.status_code == allowed
            assert not JobRun.objects.filter(pk=gone.pk).exists()
        else:
            refused(response)
            assert JobRun.objects.filter(pk=gone.pk).exists()
