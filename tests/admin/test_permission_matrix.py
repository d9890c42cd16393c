"""One permission rule on every admin page, action and button: seeing needs view; acting needs
view and the action's permission (issue 11: change-only staff could open the changelist and the
dashboard, delete-only staff the purge preview)."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import Permission, User

from django_jobstatus.models import JobRun, Status
from tests.matrix import USERS, may

pytestmark = pytest.mark.django_db

RUNS = "/admin/django_jobstatus/jobrun/"
LOGS = "/admin/django_jobstatus/joblog/"


@pytest.fixture(params=list(USERS))
def who(request, client):
    spec = USERS[request.param]
    if spec is not None:
        kinds, staff, superuser = spec
        user = User.objects.create_user(
            "someone", is_staff=staff, is_superuser=superuser
        )
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="django_jobstatus",
                codename__in=[
                    f"{kind}_{model}"
                    for kind in kinds
                    for model in ("jobrun", "joblog")
                ],
            )
        )
        client.force_login(user)
    return spec, client


@pytest.fixture
def runs(make_run):
    run = make_run("secret.job")
    run.log(logging.INFO, "secret line")
    old = make_run("secret.job", status=Status.SUCCEEDED)
    JobRun.objects.filter(pk=old.pk).update(
        created_at=old.created_at.replace(year=2000)
    )
    make_run("secret.job", status=Status.SUCCEEDED)  # the newest stays (KEEP_LAST)
    return run, old


def refused(spec, response):
    if spec is None or not spec[1]:  # anonymous or not staff: the login page
        assert response.status_code == 302, response.status_code
        assert "/admin/login/" in response["Location"]
    else:
        assert response.status_code == 403, response.status_code
    assert b"secret" not in response.content


def test_seeing_needs_view(who, runs):
    spec, client = who
    run, _old = runs
    line = run.logs.get()
    for url in [
        RUNS,
        f"{RUNS}{run.pk}/change/",
        LOGS,
        f"{LOGS}{line.pk}/change/",
        f"{RUNS}dashboard/",
        f"{RUNS}dashboard/data/",
        "/admin/django_jobstatus/dashboard/",
    ]:
        response = client.get(url)
        if may(spec, "view"):
            assert response.status_code in (200, 302), url
            if response.status_code == 302:  # the index row leads to the dashboard
                assert response["Location"].endswith(f"{RUNS}dashboard/")
        else:
            refused(spec, response)


def test_the_purge_page_and_its_preview_need_view_and_delete(who, runs):
    spec, client = who
    _run, old = runs
    preview = client.get(f"{RUNS}dashboard/purge/")
    purge = client.post(f"{RUNS}dashboard/purge/", {"days": ""})
    if may(spec, "view", "delete"):
        assert preview.status_code == 200
        assert purge.status_code == 302
        assert not JobRun.objects.filter(pk=old.pk).exists()
    else:
        refused(spec, preview)
        refused(spec, purge)
        assert JobRun.objects.filter(pk=old.pk).exists()


def test_the_kill_button_needs_view_and_change(who, runs):
    spec, client = who
    run, _old = runs
    response = client.post(f"{RUNS}{run.pk}/kill/")
    run.refresh_from_db()
    if may(spec, "view", "change"):
        assert response.status_code == 302
        assert run.kill_requested
    else:
        refused(spec, response)
        assert not run.kill_requested


def test_the_retry_button_needs_view_and_change(who, runs):
    spec, client = who
    run, _old = runs
    response = client.post(f"{RUNS}{run.pk}/retry/")
    if may(spec, "view", "change"):
        assert response.status_code == 302  # back to the run, with a message
    else:
        refused(spec, response)


@pytest.mark.parametrize(
    ("action", "needed"),
    [
        ("request_kill", "change"),
        ("mark_killed", "change"),
        ("retry", "change"),
        ("delete_selected", "delete"),
    ],
)
def test_actions_need_view_and_their_permission(who, runs, action, needed):
    spec, client = who
    run, old = runs
    target = old if action == "delete_selected" else run
    data = {"action": action, "_selected_action": [str(target.pk)], "post": "yes"}
    response = client.post(RUNS, data)
    allowed = may(spec, "view", needed)
    if not may(spec, "view"):
        refused(spec, response)
    else:
        assert response.status_code in (200, 302)
    after = JobRun.objects.filter(pk=target.pk).first()
    if action == "request_kill":
        assert after.kill_requested is allowed
    elif action == "mark_killed":
        assert (after.status == Status.KILLED) is allowed
    elif action == "delete_selected":
        assert (after is None) is allowed
