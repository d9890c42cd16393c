"""A staff user without view_jobrun sees nothing of the app."""

from __future__ import annotations

import pytest

from django_jobstatus.models import Status

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
