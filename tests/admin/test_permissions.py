"""A staff user without view_jobrun sees nothing of the app."""

from __future__ import annotations

import pytest

from django_jobstatus.models import JobMonitorIncident, MonitorState, Status

PAGES = [
    "/admin/django_jobstatus/jobrun/",
    "/admin/django_jobstatus/joblog/",
    "/admin/django_jobstatus/jobrun/dashboard/",
    "/admin/django_jobstatus/jobrun/dashboard/data/",
    "/admin/django_jobstatus/dashboard/",
    "/admin/django_jobstatus/",
]


@pytest.mark.parametrize("url", PAGES)
def test_staff_without_view_permission_gets_nothing(staff_client, make_run, url):
    client = staff_client()
    assert client.get(url).status_code in {403, 404}


def test_staff_without_view_permission_sees_no_run_page_or_link(staff_client, make_run):
    run = make_run("secret.job", status=Status.SUCCEEDED)
    client = staff_client()
    assert client.get(
        f"/admin/django_jobstatus/jobrun/{run.pk}/change/"
    ).status_code in {403, 404}
    assert client.post(
        f"/admin/django_jobstatus/jobrun/{run.pk}/kill/"
    ).status_code in {403, 404}
    index = client.get("/admin/").content.decode()
    assert "django_jobstatus" not in index
    assert "Job status" not in index


def test_view_permission_opens_everything_read_only(staff_client, make_run):
    run = make_run("a")
    client = staff_client("view_jobrun", "view_joblog")
    for url in PAGES:
        assert client.get(url, follow=True).status_code == 200, url
    html = client.get("/admin/").content.decode()
    assert "/admin/django_jobstatus/dashboard/" in html
    assert "/admin/django_jobstatus/jobrun/" in html
    assert (
        client.get(f"/admin/django_jobstatus/jobrun/{run.pk}/change/").status_code
        == 200
    )


@pytest.mark.django_db
def test_a_monitor_page_shows_its_incidents_only_to_who_may_see_incidents(
    staff_client, monitor, past_run
):
    """A user with view_jobmonitor alone is refused the incidents' pages and the runs',
    but the monitor's page listed its incidents with their details, which quote the
    failed runs' errors (a card number, an address)."""
    watched = monitor("tests.nightly", max_failures=1)
    error = "ValueError: card 4111-1111-1111-1111 declined for ann@example.com"
    run = past_run("tests.nightly", status=Status.FAILED, error=error)
    JobMonitorIncident.objects.create(
        monitor=watched,
        state=MonitorState.FAILING,
        detail=f"The last run failed. {error}",
        run_id=run.pk,
    )
    page = f"/admin/django_jobstatus/jobmonitor/{watched.pk}/change/"
    monitors_only = staff_client("view_jobmonitor").get(page)
    assert monitors_only.status_code == 200
    assert "4111" not in monitors_only.content.decode()
    both = staff_client("view_jobmonitor", "view_jobmonitorincident").get(page)
    assert "4111-1111-1111-1111" in both.content.decode()
