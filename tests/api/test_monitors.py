"""monitors/: state, newest run, next expected run, open incident; writes validated like the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, MonitorState, Status

URL = "/api/jobstatus/monitors/"


@pytest.fixture
def monitor_api(make_user, client_for):
    """A client for a staff user with every JobMonitor permission and view_jobmonitorincident."""
    from django.contrib.auth.models import Permission

    user = make_user()
    user.user_permissions.add(
        *Permission.objects.filter(codename__endswith="_jobmonitor"),
        Permission.objects.get(codename="view_jobmonitorincident"),
    )
    return client_for(user)


@pytest.fixture
def monitor_viewer(make_user, client_for):
    """Staff with view_jobmonitor only: may see monitors, not incidents nor runs."""
    from django.contrib.auth.models import Permission

    user = make_user()
    user.user_permissions.add(Permission.objects.get(codename="view_jobmonitor"))
    return client_for(user)


SECRET = "db password is hunter2"  # noqa: S105 (an error that must not be shown)


@pytest.fixture
def failing_monitor(monitor, past_run):
    """A monitor whose open incident's detail quotes a failed run's error."""
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED, error=f"RuntimeError: {SECRET}")
    health.check()
    assert m.incidents.filter(detail__contains=SECRET).exists()
    return m


def test_list_shows_state_last_run_next_expected_and_open_incident(
    monitor_api, monitor, past_run, django_assert_max_num_queries
):
    for index in range(4):
        monitor(f"tests.job{index}", every=timedelta(hours=1), max_failures=1)
    newest = past_run("tests.job1", status=Status.FAILED, error="boom")
    health.check()
    with django_assert_max_num_queries(8):  # session and user, count, page, incidents
        response = monitor_api.get(URL)
    assert response.status_code == 200
    rows = {row["job_name"]: row for row in response.json()["results"]}
    assert response.json()["count"] == 4
    failing = rows["tests.job1"]
    assert failing["state"] == "failing"
    assert failing["last_run"]["id"] == str(newest.pk)
    assert failing["last_run"]["status"] == "failed"
    assert failing["open_incident"]["detail"] == "The last run failed. boom"
    assert failing["every"] == 3600.0
    assert failing["next_expected_at"] is not None
    assert rows["tests.job0"]["state"] == "late"  # its only run is a day old
    assert rows["tests.job0"]["open_incident"]["state"] == "late"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=failing", ["tests.b"]),
        ("state=unhealthy", ["tests.b"]),
        ("state=healthy,disabled", ["tests.a", "tests.c"]),
        ("enabled=false", ["tests.c"]),
        ("job_name=tests.a,tests.c", ["tests.a", "tests.c"]),
    ],
)
def test_filters(monitor_api, monitor, past_run, query, expected):
    monitor("tests.a")
    monitor("tests.b", max_failures=1)
    monitor("tests.c", enabled=False)
    past_run("tests.b", status=Status.FAILED)
    health.check()
    response = monitor_api.get(f"{URL}?{query}")
    assert response.status_code == 200
    assert [row["job_name"] for row in response.json()["results"]] == expected


def test_a_bad_filter_value_is_a_400(monitor_api, db):
    response = monitor_api.get(f"{URL}?state=sad")
    assert response.status_code == 400
    assert "state" in response.json()


def test_create_and_change(monitor_api, past_run):
    past_run("tests.nightly")
    response = monitor_api.post(
        URL,
        {"job_name": "tests.nightly", "cron": "0 2 * * *", "grace": 600},
        format="json",
    )
    assert response.status_code == 201, response.json()
    monitor = JobMonitor.objects.get()
    assert (monitor.cron, monitor.grace) == ("0 2 * * *", timedelta(minutes=10))
    response = monitor_api.patch(
        f"{URL}{monitor.pk}/", {"max_duration": 1800}, format="json"
    )
    assert response.status_code == 200, response.json()
    monitor.refresh_from_db()
    assert monitor.max_duration == timedelta(minutes=30)
    assert monitor.state == MonitorState.HEALTHY


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "0 2 * *"}, "cron"),
        ({"every": -60}, "every"),
        ({"grace": "soon"}, "grace"),
        ({"max_duration": -1}, "max_duration"),
        ({"max_duration": 1e300}, "max_duration"),
        ({"every": 1e12}, "every"),
        ({"grace": None}, "grace"),
        ({"job_name": "tests.unknown"}, "job_name"),
        ({"every": 60, "cron": "* * * * *"}, "cron"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(monitor_api, past_run, body, field):
    past_run("tests.nightly")
    response = monitor_api.post(
        URL, {"job_name": "tests.nightly", **body}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not JobMonitor.objects.exists()


def test_a_bad_change_saves_nothing(monitor_api, monitor):
    m = monitor(every=timedelta(hours=1))
    response = monitor_api.patch(
        f"{URL}{m.pk}/", {"every": 0, "max_failures": 9}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["every"]
    m.refresh_from_db()
    assert (m.every, m.max_failures) == (timedelta(hours=1), 1)


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_an_unknown_field_is_a_400_naming_it(monitor_api, monitor, past_run, method):
    """``{"enabeld": false}`` is not a 200 that leaves the monitor enabled."""
    m = monitor(every=timedelta(hours=1))
    past_run("tests.other")
    url = URL if method == "post" else f"{URL}{m.pk}/"
    name = "tests.other" if method == "post" else "tests.nightly"
    body = {"job_name": name, "every": 60, "enabeld": False}
    response = getattr(monitor_api, method)(url, body, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["enabeld"]
    m.refresh_from_db()
    assert (m.enabled, m.every) == (True, timedelta(hours=1))
    assert JobMonitor.objects.count() == 1


def test_an_unknown_field_with_a_lone_surrogate_is_a_400_naming_it_escaped(
    monitor_api, past_run
):
    """A key holding a lone surrogate (valid JSON) is named escaped: raw, the 400 could not be
    encoded, and would be a 500."""
    past_run("tests.other")
    response = monitor_api.post(
        URL,
        '{"job_name": "tests.other", "every": 60, "\\ud800": 1}',
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["\\ud800"]
    assert not JobMonitor.objects.exists()


def test_a_cron_with_a_lone_surrogate_is_a_400_naming_cron(monitor_api, monitor):
    """The cron error quotes the expression with the surrogate escaped, not raw (a 500)."""
    m = monitor(every=timedelta(hours=1))
    response = monitor_api.patch(
        f"{URL}{m.pk}/",
        '{"cron": "0 2 * * *\\ud800", "every": null}',
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["cron"]
    assert "0 2 * * *\\ud800" in response.json()["cron"][0]
    m.refresh_from_db()
    assert (m.cron, m.every) == ("", timedelta(hours=1))


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_a_body_nested_100000_deep_is_a_400(monitor_api, monitor, method):
    """A body deeper than Python parses is a 400 saying so, not a 500, and changes nothing."""
    m = monitor(every=timedelta(hours=1))
    url = URL if method == "post" else f"{URL}{m.pk}/"
    body = "[" * 100_000 + "]" * 100_000
    response = getattr(monitor_api, method)(url, body, content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    m.refresh_from_db()
    assert m.every == timedelta(hours=1)
    assert JobMonitor.objects.count() == 1


def test_state_is_read_only(monitor_api, monitor):
    m = monitor()
    response = monitor_api.patch(f"{URL}{m.pk}/", {"state": "late"}, format="json")
    assert response.status_code == 200
    m.refresh_from_db()
    assert m.state == MonitorState.HEALTHY


def test_incidents_of_a_monitor(monitor_api, monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED)
    health.check()
    past_run(ago=timedelta(seconds=1))
    health.check()
    response = monitor_api.get(f"{URL}{m.pk}/incidents/")
    assert response.status_code == 200
    (incident,) = response.json()["results"]
    assert incident["state"] == "failing"
    assert incident["resolved_at"] is not None


def test_incidents_are_refused_without_view_jobmonitorincident(
    failing_monitor, monitor_viewer
):
    """Their details quote failed runs' errors, which the admin hides from this user too."""
    response = monitor_viewer.get(f"{URL}{failing_monitor.pk}/incidents/")
    assert SECRET not in response.content.decode(), response.json()
    assert response.status_code == 403


def test_open_incident_s_detail_is_null_without_view_jobmonitorincident(
    failing_monitor, monitor_viewer, monitor_api
):
    response = monitor_viewer.get(URL)
    assert response.status_code == 200
    assert SECRET not in response.content.decode(), response.json()
    (row,) = response.json()["results"]
    assert row["open_incident"]["state"] == "failing"
    assert row["open_incident"]["detail"] is None
    assert (
        monitor_viewer.get(f"{URL}{failing_monitor.pk}/").json()["open_incident"][
            "detail"
        ]
        is None
    )
    (row,) = monitor_api.get(URL).json()["results"]
    assert SECRET in row["open_incident"]["detail"]


@pytest.mark.parametrize("incidents", [False, True])
@pytest.mark.parametrize("page", ["abc", "0", "-1", "1e3", "1.0", " 1", "²"])
def test_a_page_that_is_not_a_whole_number_of_1_or_more_is_a_400_naming_it(
    monitor_api, monitor, incidents, page
):
    """docs/api.md: a bad parameter is a 400 naming it. ``monitors/?page=abc`` (or ``0``,
    ``-1``, ``1e3``) answered DRF's ``404 {"detail": "Invalid page."}``, which names no
    parameter and reads as "no such monitor", where ``page_size=abc`` was a 400 naming
    ``page_size``. A monitor's incidents have the same numbered pages."""
    m = monitor()
    url = f"{URL}{m.pk}/incidents/" if incidents else URL
    response = monitor_api.get(url, {"page": page})
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["page"]


@pytest.mark.parametrize("incidents", [False, True])
def test_the_last_page_and_a_page_past_it_are_still_a_200_and_a_404(
    monitor_api, monitor, incidents
):
    m = monitor()
    url = f"{URL}{m.pk}/incidents/" if incidents else URL
    for page, expected in (("", 200), ("1", 200), ("last", 200), ("2", 404)):
        assert monitor_api.get(url, {"page": page}).status_code == expected, page
    assert monitor_api.get(url, {"page": "9" * 5000}).status_code == 404


@pytest.mark.parametrize(
    ("perms", "method", "expected"),
    [
        ((), "get", 403),
        (("view",), "get", 200),
        (("view",), "post", 403),
        (("view", "add"), "post", 201),
    ],
)
def test_permissions(make_user, client_for, past_run, perms, method, expected):
    from django.contrib.auth.models import Permission

    past_run("tests.nightly")
    user = make_user("view", "change", "delete")  # every JobRun permission: not enough
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=f"{perm}_jobmonitor"))
    client = client_for(user)
    if method == "get":
        response = client.get(URL)
    else:
        response = client.post(URL, {"job_name": "tests.nightly"}, format="json")
    assert response.status_code == expected
    assert client_for(None).get(URL).status_code in (401, 403)


def test_next_expected_at_is_the_time_the_state_is_judged_by(
    monitor_api, monitor, past_run
):
    """Counted from the newest run's start, not its creation: a run queued two hours ago
    that started ten minutes ago makes the next start due in fifty minutes."""
    from django.utils import timezone
    from rest_framework import serializers

    from django_jobstatus.models import JobRun

    m = monitor(every=timedelta(hours=1))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2), status=Status.RUNNING)
    JobRun.objects.update(started_at=timezone.now() - timedelta(minutes=10))
    health.check()
    expected = health.assess(m).next_expected_at
    assert expected is not None and expected > timezone.now()
    for url in (URL, f"{URL}{m.pk}/"):
        body = monitor_api.get(url).json()
        row = body["results"][0] if "results" in body else body
        assert row["state"] == "healthy"
        assert row["next_expected_at"] == serializers.DateTimeField().to_representation(
            expected
        )


def test_enabling_a_monitor_again_stamps_enabled_at(monitor_api, monitor):
    m = monitor(enabled=False)
    response = monitor_api.patch(
        f"{URL}{m.pk}/", {"enabled": True, "enabled_at": None}, format="json"
    )
    assert response.status_code == 200, response.json()
    m.refresh_from_db()
    assert m.enabled_at is not None
    assert response.json()["enabled_at"] is not None
    # Read-only: a value given is ignored.
    response = monitor_api.patch(
        f"{URL}{m.pk}/", {"enabled_at": "2020-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 200
    assert JobMonitor.objects.get(pk=m.pk).enabled_at == m.enabled_at


def test_the_answer_to_a_create_names_the_jobs_newest_run(monitor_api, past_run):
    """POST monitors/ for a job that ran an hour ago answers ``"last_run": null``, which
    the schema defines as "the job's newest run; null when it has none", though a monitor
    can only be created for a job that has run. A GET of the same monitor a moment later
    shows the run. The create's instance is a fresh ``JobMonitor()`` with none of the
    annotations of ``health.with_last_run()`` that ``get_last_run()`` reads."""
    run = past_run("tests.nightly", ago=timedelta(hours=1))
    response = monitor_api.post(
        URL, {"job_name": "tests.nightly", "every": 86400}, format="json"
    )
    assert response.status_code == 201, response.json()
    later = monitor_api.get(f"{URL}{response.json()['id']}/").json()
    assert later["last_run"]["id"] == str(run.pk)
    assert response.json()["last_run"] == later["last_run"]


def test_the_answer_to_a_move_to_another_job_shows_that_jobs_run(
    monitor_api, monitor, past_run
):
    """PATCH monitors/{id}/ moving a monitor from tests.nightly to tests.other answers
    ``"job_name": "tests.other"`` beside the *old* job's newest run (succeeded), while
    tests.other's newest run failed: the instance keeps the annotations it was read
    with, before the save. ``next_expected_at`` is also counted from the old job's
    last start (``last_start_at`` annotation)."""
    m = monitor("tests.nightly", every=timedelta(hours=1))
    past_run("tests.nightly", ago=timedelta(minutes=5))
    other = past_run("tests.other", ago=timedelta(hours=3), status=Status.FAILED)
    response = monitor_api.patch(
        f"{URL}{m.pk}/", {"job_name": "tests.other"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert JobMonitor.objects.get(pk=m.pk).job_name == "tests.other"
    body = response.json()
    later = monitor_api.get(f"{URL}{m.pk}/").json()
    assert body["last_run"]["id"] == str(other.pk), body["last_run"]
    assert body["next_expected_at"] == later["next_expected_at"]


def test_a_paused_monitor_shows_no_next_expected_run(monitor_api, monitor, past_run):
    """A monitor turned off (``enabled: false``) reads ``state: disabled`` and expects
    nothing (``health.assess()`` gives ``next_expected_at=None``), yet monitors/ shows
    ``next_expected_at`` two hours in the past for it (and the admin's "next expected"
    column the same). The docs say the next expected run shown "is the time the state
    is judged by"; a disabled monitor is judged by no time, and once turned on again it
    counts from ``enabled_at``, not from that time. ``get_next_expected_at()`` (and
    ``JobMonitorAdmin.next_expected_display``) call ``health.expected_at()``, which
    never looks at ``enabled``."""
    from django_jobstatus import health
    from django_jobstatus.models import JobRun

    m = monitor(every=timedelta(hours=1))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=3))
    m.enabled = False
    m.save()
    health.check()
    assert health.assess(m).next_expected_at is None
    body = monitor_api.get(f"{URL}{m.pk}/").json()
    assert body["state"] == "disabled"
    assert body["next_expected_at"] is None, body["next_expected_at"]
