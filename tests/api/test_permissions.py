"""Who may do what: anonymous, non-staff, staff per model permission, the owner scope, and settings."""

from __future__ import annotations

import base64

import pytest

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


def every_request(run, finished):
    """(method, url, body) for every endpoint."""
    return [
        ("get", BASE, None),
        ("get", f"{BASE}{run.pk}/", None),
        ("get", f"{BASE}{run.pk}/logs/", None),
        ("get", f"{BASE}latest/?job_name={run.job_name}", None),
        ("get", f"{BASE}stats/", None),
        ("post", f"{BASE}{run.pk}/kill/", None),
        ("post", f"{BASE}kill/", {"ids": [str(run.pk)]}),
        ("delete", f"{BASE}{finished.pk}/", None),
    ]


@pytest.fixture
def runs(make_run):
    run = make_run("secret.job", params={"user_id": 7})
    finished = make_run("secret.job", status=Status.SUCCEEDED)
    return run, finished


def call(client, method, url, body):
    return (
        getattr(client, method)(url, body, format="json")
        if body
        else getattr(client, method)(url)
    )


def assert_refused(response, statuses=(401, 403)):
    assert response.status_code in statuses, (response.status_code, response.content)
    assert "secret.job" not in response.content.decode()
    assert "results" not in response.json()


def assert_untouched(run, finished):
    run.refresh_from_db()
    assert run.kill_requested_at is None
    assert JobRun.objects.filter(pk=finished.pk).exists()


def test_anonymous_gets_no_data_and_changes_nothing(client_for, runs):
    client = client_for(None)
    for method, url, body in every_request(*runs):
        assert_refused(call(client, method, url, body))
    assert_untouched(*runs)


def test_anonymous_gets_401_with_an_authentication_scheme_that_has_a_challenge(
    client_for, runs, settings
):
    settings.JOBSTATUS = {
        "API_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.BasicAuthentication"
        ]
    }
    response = client_for(None).get(BASE)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")


def test_basic_authentication_when_configured(client, make_user, runs, settings):
    settings.JOBSTATUS = {
        "API_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.BasicAuthentication"
        ]
    }
    user = make_user("view")
    user.set_password("pw")
    user.save()
    token = base64.b64encode(f"{user.username}:pw".encode()).decode()
    assert client.get(BASE, HTTP_AUTHORIZATION=f"Basic {token}").status_code == 200


def test_non_staff_is_refused_even_with_the_model_permissions(
    make_user, client_for, runs
):
    client = client_for(make_user("view", "change", "delete", staff=False))
    for method, url, body in every_request(*runs):
        assert_refused(call(client, method, url, body), statuses=(403,))
    assert_untouched(*runs)


def test_staff_without_any_permission_is_refused(make_user, client_for, runs):
    client = client_for(make_user())
    for method, url, body in every_request(*runs):
        assert_refused(call(client, method, url, body), statuses=(403,))
    assert_untouched(*runs)


def test_view_permission_reads_but_cannot_kill_or_delete(make_user, client_for, runs):
    run, finished = runs
    client = client_for(make_user("view"))
    assert client.get(BASE).status_code == 200
    assert client.get(f"{BASE}{run.pk}/").status_code == 200
    assert client.get(f"{BASE}{run.pk}/logs/").status_code == 200
    assert client.get(f"{BASE}stats/").status_code == 200
    assert client.get(f"{BASE}latest/?job_name=secret.job").status_code == 200
    for method, url, body in every_request(run, finished)[5:]:
        assert call(client, method, url, body).status_code == 403
    assert_untouched(run, finished)


def test_change_permission_alone_can_neither_read_nor_kill(make_user, client_for, runs):
    # Acting needs view too: else a kill's 202 body would show the run (issue 11).
    run, finished = runs
    client = client_for(make_user("change"))
    assert client.get(BASE).status_code == 403
    response = client.post(f"{BASE}{run.pk}/kill/")
    assert response.status_code == 403
    assert "secret.job" not in response.content.decode()
    assert_untouched(run, finished)


def test_view_and_change_kill_but_cannot_delete(make_user, client_for, runs):
    run, finished = runs
    client = client_for(make_user("view", "change"))
    assert client.delete(f"{BASE}{finished.pk}/").status_code == 403
    assert client.post(f"{BASE}{run.pk}/kill/").status_code == 202
    assert (
        client.post(f"{BASE}kill/", {"ids": [str(run.pk)]}, format="json").status_code
        == 200
    )


def test_view_and_delete_delete_but_cannot_kill(make_user, client_for, runs):
    run, finished = runs
    client = client_for(make_user("view", "delete"))
    assert client.post(f"{BASE}{run.pk}/kill/").status_code == 403
    assert client.delete(f"{BASE}{finished.pk}/").status_code == 204


def test_superuser_may_do_everything(make_user, client_for, runs):
    run, finished = runs
    client = client_for(make_user(superuser=True))
    assert client.get(BASE).status_code == 200
    assert client.post(f"{BASE}{run.pk}/kill/").status_code == 202
    assert client.delete(f"{BASE}{finished.pk}/").status_code == 204


# The owner scope.


@pytest.fixture
def scoped(settings):
    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}


def test_owner_scope_shows_a_user_only_their_runs(
    scoped, make_user, client_for, make_run
):
    alice, bob = make_user(staff=False), make_user(staff=False)
    mine = make_run("export", owner=alice)
    theirs = make_run("export", owner=bob)
    make_run("export")
    client = client_for(alice)
    assert [row["id"] for row in client.get(BASE).json()["results"]] == [str(mine.pk)]
    assert client.get(f"{BASE}{mine.pk}/").status_code == 200
    assert client.get(f"{BASE}{theirs.pk}/").status_code == 404
    assert client.get(f"{BASE}{theirs.pk}/logs/").status_code == 404
    assert client.get(f"{BASE}latest/?job_name=export").json()["id"] == str(mine.pk)
    assert [job["total"] for job in client.get(f"{BASE}stats/").json()["jobs"]] == [1]


def test_owner_scope_lets_a_user_kill_only_their_runs_and_delete_none(
    scoped, make_user, client_for, make_run
):
    alice, bob = make_user(staff=False), make_user(staff=False)
    mine = make_run("export", owner=alice)
    theirs = make_run("export", owner=bob)
    done = make_run("export", owner=alice, status=Status.SUCCEEDED)
    client = client_for(alice)
    assert client.post(f"{BASE}{theirs.pk}/kill/").status_code == 404
    assert client.post(f"{BASE}kill/?job_name=export").json() == {
        "matched": 2,
        "active": 1,
        "asked": 1,
        "killed": 0,
        "in_batches": 0,
        "not_stopped": [],
    }
    assert client.post(f"{BASE}{mine.pk}/kill/").status_code == 202
    assert client.delete(f"{BASE}{done.pk}/").status_code == 403
    theirs.refresh_from_db()
    assert theirs.kill_requested_at is None
    assert JobRun.objects.filter(pk=done.pk).exists()


def test_owner_scope_lets_a_user_follow_the_run_their_retry_enqueued(
    scoped, make_user, client_for, make_run, retry_backend
):
    alice = make_user(staff=False)
    failed = [
        make_run("export", owner=alice, status=Status.FAILED, source="tests_backend")
        for _ in range(2)
    ]
    client = client_for(alice)
    one = client.post(f"{BASE}{failed[0].pk}/retry/")
    assert one.status_code == 202, one.content
    bulk = client.post(f"{BASE}retry/", {"ids": [str(failed[1].pk)]}, format="json")
    assert bulk.status_code == 202, bulk.content
    new_ids = {one.json()["id"], bulk.json()["retried"][0]["new_id"]}
    assert set(
        JobRun.objects.filter(pk__in=new_ids).values_list("owner_id", flat=True)
    ) == {alice.pk}
    for new_id in new_ids:
        assert client.get(f"{BASE}{new_id}/").status_code == 200
    listed = {row["id"] for row in client.get(BASE).json()["results"]}
    assert listed == new_ids | {str(run.pk) for run in failed}


def test_owner_scope_leaves_staff_seeing_everything(
    scoped, make_user, client_for, make_run
):
    make_run(owner=make_user(staff=False))
    make_run()
    assert len(client_for(make_user("view")).get(BASE).json()["results"]) == 2


def test_owner_scope_still_refuses_anonymous(scoped, client_for, runs):
    assert_refused(client_for(None).get(BASE))


@pytest.mark.parametrize(
    "permission",
    [
        "rest_framework.permissions.IsAuthenticatedOrReadOnly",
        "rest_framework.permissions.AllowAny",
    ],
)
def test_owner_scope_shows_an_anonymous_caller_no_runs(
    settings, make_user, client_for, make_run, permission
):
    """Permission classes that let anonymous requests in: the owner scope still shows
    them what they own, nothing. ``owner_id=None`` matched every run without an owner
    (every run an integration records), with its params and error, and AllowAny let the
    caller kill them."""
    settings.JOBSTATUS = {
        "API_OWNER_SCOPED": True,
        "API_PERMISSION_CLASSES": [permission],
    }
    make_run("billing.export", owner=make_user(staff=False))
    ownerless = make_run(
        "payroll.secret", params={"account": "x"}, status=Status.FAILED, error="boom"
    )
    active = make_run("payroll.secret")
    client = client_for(None)
    assert client.get(BASE).json()["results"] == []
    assert client.get(f"{BASE}{ownerless.pk}/").status_code == 404
    assert client.get(f"{BASE}{ownerless.pk}/logs/").status_code == 404
    assert client.get(f"{BASE}stats/").json()["jobs"] == []
    exported = b"".join(client.get(f"{BASE}export/").streaming_content)
    assert b"payroll.secret" not in exported
    assert client.post(f"{BASE}{active.pk}/kill/").status_code in (403, 404)
    client.post(f"{BASE}kill/?job_name=payroll.secret")
    active.refresh_from_db()
    assert active.kill_requested_at is None


def test_permission_classes_come_from_settings(settings, client_for, runs):
    settings.JOBSTATUS = {
        "API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]
    }
    assert client_for(None).get(BASE).status_code == 200


def test_the_api_root_is_behind_the_same_permissions(client_for, api) -> None:
    root = BASE.removesuffix("runs/")
    anonymous = client_for().get(root)
    assert anonymous.status_code in (401, 403)
    assert "runs" not in anonymous.content.decode()
    allowed = api.get(root)
    assert allowed.status_code == 200
    assert allowed.json()["runs"].endswith(BASE)
