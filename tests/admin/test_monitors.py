"""The monitors' admin, the incidents' list, the dashboard's health panel, the runs' monitor column."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, JobMonitorIncident, MonitorState, Status

MONITORS = "/admin/django_jobstatus/jobmonitor/"
RUNS = "/admin/django_jobstatus/jobrun/"
DASHBOARD = "/admin/django_jobstatus/jobrun/dashboard/"


def _form(**fields) -> dict[str, str]:
    data = {
        "job_name": "tests.nightly",
        "enabled": "on",
        "every": "",
        "cron": "",
        "grace": "00:05:00",
        "max_duration": "",
        "max_duration_p95_factor": "",
        "max_failures": "1",
    }
    data.update(fields)
    return data


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "0 25 * * *"}, "cron"),
        ({"every": "-01:00:00"}, "every"),
        ({"grace": "-1"}, "grace"),
        ({"job_name": "tests.unknown"}, "job_name"),
        ({"every": "1:00:00", "cron": "0 * * * *"}, "cron"),
    ],
)
def test_add_form_names_the_bad_field(admin_client, past_run, fields, field):
    past_run("tests.nightly")
    response = admin_client.post(f"{MONITORS}add/", _form(**fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field]
    assert not JobMonitor.objects.exists()


def test_add_form_saves_a_good_monitor(admin_client, past_run):
    past_run("tests.nightly")
    response = admin_client.post(
        f"{MONITORS}add/", _form(cron="0 2 * * *", max_duration="00:30:00")
    )
    assert response.status_code == 302
    monitor = JobMonitor.objects.get()
    assert (monitor.cron, monitor.max_duration) == ("0 2 * * *", timedelta(minutes=30))


def test_changelist_shows_state_last_run_and_open_incident(
    admin_client, monitor, past_run, django_assert_max_num_queries
):
    for index in range(5):
        monitor(f"tests.job{index}", max_failures=1, every=timedelta(hours=1))
        past_run(f"tests.job{index}", status=Status.FAILED)
    health.check()
    with django_assert_max_num_queries(12):  # no query per monitor
        response = admin_client.get(MONITORS)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('class="jobstatus-badge jobstatus-monitor-failing"') == 5
    assert html.count("/admin/django_jobstatus/jobmonitorincident/") >= 5
    assert "every 1 h 00 min" in html


def test_change_page_lists_the_incidents(admin_client, monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED, error="boom")
    health.check()
    past_run(ago=timedelta(seconds=1))
    health.check()
    html = admin_client.get(f"{MONITORS}{m.pk}/change/").content.decode()
    assert "The last run failed. boom" in html
    assert "All incidents of this monitor" in html


def test_incidents_list_is_read_only(admin_client, monitor, past_run):
    monitor(max_failures=1)
    past_run(status=Status.FAILED)
    health.check()
    incident = JobMonitorIncident.objects.get()
    listing = admin_client.get("/admin/django_jobstatus/jobmonitorincident/?open=yes")
    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [incident]
    page = admin_client.get(
        f"/admin/django_jobstatus/jobmonitorincident/{incident.pk}/change/"
    )
    assert page.status_code == 200
    assert not page.context["has_change_permission"]


def test_an_incident_page_says_why_no_alert_went_out(admin_client, monitor, past_run):
    """No alert target is set: the stamps stay empty, and their help says why that can be."""
    monitor(max_failures=1)
    past_run(status=Status.FAILED)
    health.check()
    incident = JobMonitorIncident.objects.get()
    assert incident.open_alert_at is None
    html = admin_client.get(
        f"/admin/django_jobstatus/jobmonitorincident/{incident.pk}/change/"
    ).content.decode()
    for reason, stamps in [
        ("no alert target is set", 1),
        ("the rate limit", 1),
        ("its opening was not announced", 1),
        ("it is queued: see when", 2),
        ("check_jobstatus sends it again (for a day)", 2),
    ]:
        assert html.count(reason) == stamps, reason


def test_check_now_action(admin_client, monitor, past_run):
    m = monitor(max_failures=1)
    past_run(status=Status.FAILED)
    response = admin_client.post(
        MONITORS, {"action": "check_now", "_selected_action": [m.pk]}, follow=True
    )
    assert "Checked 1 monitors; 1 changed state." in response.content.decode()
    m.refresh_from_db()
    assert m.state == MonitorState.FAILING


def test_dashboard_panel_lists_unhealthy_jobs_first(admin_client, monitor, past_run):
    monitor("tests.fine", every=timedelta(days=1))
    past_run("tests.fine")
    monitor("tests.slow", max_duration=timedelta(seconds=10))
    past_run("tests.slow", took=timedelta(minutes=1))
    monitor("tests.late", every=timedelta(minutes=10))  # its run was a day ago
    monitor("tests.failing", max_failures=1)
    past_run("tests.failing", status=Status.FAILED)
    health.check()
    response = admin_client.get(DASHBOARD)
    rows = response.context["health"]["rows"]
    assert [row["job_name"] for row in rows] == [
        "tests.failing",
        "tests.late",
        "tests.slow",
    ]
    html = response.content.decode()
    assert html.index('id="jobstatus-health"') < html.index("jobstatus-tabs")
    assert f'href="{RUNS}?job_name=tests.failing"' in html
    assert "1 healthy" in html


def test_no_panel_without_monitors(admin_client, db):
    response = admin_client.get(DASHBOARD)
    assert response.context["health"] is None
    assert 'id="jobstatus-health"' not in response.content.decode()


def test_runs_changelist_monitor_column_and_filter(
    admin_client, monitor, past_run, make_run
):
    monitor("tests.nightly", max_failures=1)
    past_run("tests.nightly", status=Status.FAILED)
    make_run("tests.unwatched")
    health.check()
    response = admin_client.get(RUNS)
    html = response.content.decode()
    assert html.count('class="jobstatus-badge jobstatus-monitor-failing"') == 2
    for query, expected in [
        ("monitor=failing", {"tests.nightly"}),
        ("monitor=unhealthy", {"tests.nightly"}),
        ("monitor=healthy", set()),
        ("monitor=any", {"tests.nightly"}),
        ("monitor=none", {"tests.unwatched"}),
    ]:
        result = admin_client.get(f"{RUNS}?{query}").context["cl"].result_list
        assert {run.job_name for run in result} == expected, query


INCIDENTS = "/admin/django_jobstatus/jobmonitorincident/"


@pytest.mark.parametrize(
    "codenames",
    [
        ("change_jobmonitor",),
        ("add_jobmonitor",),
        ("delete_jobmonitor",),
        ("add_jobmonitor", "change_jobmonitor", "delete_jobmonitor"),
        ("delete_jobmonitorincident",),
    ],
)
def test_monitor_pages_need_the_view_permission(
    staff_client, monitor, past_run, codenames
):
    """The admin's one rule on the monitors' pages too: change, add or delete alone see and do nothing."""
    past_run("tests.secret", status=Status.FAILED, error="SecretError: boom")
    m = monitor("tests.secret", max_failures=1)
    health.check()
    incident = JobMonitorIncident.objects.get()
    client = staff_client(*codenames)
    for url in [
        MONITORS,
        f"{MONITORS}{m.pk}/change/",
        f"{MONITORS}add/",
        f"{MONITORS}{m.pk}/delete/",
        INCIDENTS,
        f"{INCIDENTS}{incident.pk}/change/",
        f"{INCIDENTS}{incident.pk}/delete/",
    ]:
        response = client.get(url)
        assert response.status_code == 403, (url, response.status_code)
        assert b"SecretError" not in response.content
    client.post(f"{MONITORS}{m.pk}/change/", _form(job_name="tests.secret", enabled=""))
    client.post(f"{MONITORS}{m.pk}/delete/", {"post": "yes"})
    client.post(f"{INCIDENTS}{incident.pk}/delete/", {"post": "yes"})
    m.refresh_from_db()
    assert m.enabled
    assert JobMonitorIncident.objects.filter(pk=incident.pk).exists()


def test_monitor_pages_open_with_view_and_act_with_view_and_change(
    staff_client, monitor
):
    m = monitor("tests.nightly")
    viewer = staff_client("view_jobmonitor")
    assert viewer.get(MONITORS).status_code == 200
    assert viewer.get(f"{MONITORS}{m.pk}/change/").status_code == 200
    assert viewer.get(f"{MONITORS}add/").status_code == 403
    editor = staff_client("view_jobmonitor", "change_jobmonitor", "add_jobmonitor")
    response = editor.post(f"{MONITORS}{m.pk}/change/", _form(enabled=""))
    assert response.status_code == 302
    m.refresh_from_db()
    assert not m.enabled
    assert editor.get(f"{MONITORS}add/").status_code == 200


def test_next_expected_is_the_time_the_state_is_judged_by(
    admin_client, monitor, past_run
):
    """The newest run was queued and never started: lateness counts from the last start,
    and so does the page, which showed a time to come beside a late state."""
    from django.utils import timezone

    from django_jobstatus.models import JobRun

    m = monitor(every=timedelta(hours=1))
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2))
    JobRun.objects.create(job_name=m.job_name, status=Status.QUEUED)
    health.check()
    expected = health.assess(m).next_expected_at
    assert expected is not None and expected < timezone.now()
    for url in (MONITORS, f"{MONITORS}{m.pk}/change/"):
        html = admin_client.get(url).content.decode()
        assert expected.strftime("%Y-%m-%d %H:%M") in html
        assert 'jobstatus-monitor-late"' in html


def test_enabling_a_monitor_again_stamps_when_and_shows_it(
    admin_client, monitor, past_run
):
    """Its next expected run counts from then, not from a run before the pause."""
    from django.utils import formats, timezone

    from django_jobstatus.models import JobRun

    m = monitor(every=timedelta(hours=1), enabled=False)
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=3))
    response = admin_client.post(f"{MONITORS}{m.pk}/change/", _form(every="01:00:00"))
    assert response.status_code == 302
    m.refresh_from_db()
    assert m.enabled and m.enabled_at is not None
    assert health.assess(m).state == MonitorState.HEALTHY
    html = admin_client.get(f"{MONITORS}{m.pk}/change/").content.decode()
    shown = formats.localize(timezone.template_localtime(m.enabled_at))
    assert f'<div class="readonly">{shown}</div>' in html  # read-only, on the page
    assert 'name="enabled_at"' not in html


@override_settings(TIME_ZONE="Asia/Tokyo")
def test_monitor_pages_show_times_in_the_current_time_zone(admin_client, make_run):
    """The last run, the next expected run and the incidents are shown in the site's time
    zone, as the runs' changelist shows the runs: never as unlabelled UTC beside it."""
    at = datetime(2024, 1, 1, 0, 30, tzinfo=UTC)  # 09:30 in Tokyo
    make_run(
        "nightly.report",
        status=Status.SUCCEEDED,
        created_at=at,
        queued_at=at,
        started_at=at,
        finished_at=at + timedelta(seconds=5),
    )
    m = JobMonitor.objects.create(
        job_name="nightly.report", every=timedelta(days=1), grace=timedelta(hours=1)
    )
    JobMonitorIncident.objects.create(
        monitor=m,
        state="late",
        opened_at=at - timedelta(days=1),  # 2023-12-31 09:30 in Tokyo
        resolved_at=at - timedelta(hours=23, minutes=45),  # 2023-12-31 09:45
        detail="late",
    )
    JobMonitorIncident.objects.create(
        monitor=m, state="late", opened_at=at + timedelta(days=2), detail="late"
    )
    expected = health.expected_at(m)
    assert expected is not None
    local = timezone.localtime(expected).strftime("%Y-%m-%d %H:%M")

    runs = admin_client.get(RUNS).content.decode()
    assert "2024-01-01 09:30" in runs  # the runs' changelist: the current time zone
    listed = admin_client.get(MONITORS).content.decode()
    assert "2024-01-01 09:30" in listed  # the last run
    assert "since 2024-01-03 09:30" in listed  # the open incident
    page = admin_client.get(f"{MONITORS}{m.pk}/change/").content.decode()
    for shown in ("2023-12-31 09:30", "2023-12-31 09:45", "2024-01-03 09:30", local):
        assert shown in page
    utc = (
        "2024-01-01 00:30",
        "2023-12-31 00:30",
        "2023-12-31 00:45",
        "2024-01-03 00:30",
    )
    assert not [when for when in utc if when in listed or when in page]
    assert expected.strftime("%Y-%m-%d %H:%M") not in page


@pytest.fixture
def monitor_with_incident(monitor, past_run):
    """A failing monitor with its open incident."""
    watched = monitor("tests.nightly", max_failures=1)
    past_run(
        "tests.nightly", ago=timedelta(minutes=2), status=Status.FAILED, error="Boom"
    )
    health.check(["tests.nightly"])
    assert JobMonitorIncident.objects.filter(monitor=watched).exists()
    return watched


@pytest.mark.parametrize("how", ["its page", "the bulk action"])
def test_the_monitor_s_delete_permission_deletes_it_with_its_incidents(
    staff_client, monitor_with_incident, how
):
    """docs/admin.md: acting needs view plus the action's permission. A monitor that had
    ever failed needed the incidents' view and delete permissions too (its page said
    "Cannot delete", its POST and the bulk delete were a 403), as the API does not; and
    the page listed each incident (found by a red-team pass)."""
    client = staff_client("view_jobmonitor", "delete_jobmonitor")
    pk = monitor_with_incident.pk
    if how == "its page":
        page = client.get(f"{MONITORS}{pk}/delete/")
        assert page.status_code == 200
        text = page.content.decode()
        assert "Cannot delete" not in text
        assert "Boom" not in text  # no incident's details
        response = client.post(f"{MONITORS}{pk}/delete/", {"post": "yes"})
    else:
        response = client.post(
            MONITORS,
            {"action": "delete_selected", "_selected_action": [str(pk)], "post": "yes"},
        )
    assert response.status_code == 302, response.status_code
    assert not JobMonitor.objects.filter(pk=pk).exists()
    assert not JobMonitorIncident.objects.exists()


def test_a_monitor_is_not_deleted_without_its_delete_permission(
    staff_client, monitor_with_incident
):
    client = staff_client("view_jobmonitor")
    pk = monitor_with_incident.pk
    assert client.post(f"{MONITORS}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert JobMonitor.objects.filter(pk=pk).exists()
