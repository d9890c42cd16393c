"""The dashboard, its JSON view, the admin index link, and the purge page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from django_jobstatus.models import JobRun, Status

URL = "/admin/django_jobstatus/jobrun/dashboard/"
DATA = "/admin/django_jobstatus/jobrun/dashboard/data/"


@pytest.fixture
def runs(make_run):
    now = timezone.now()
    made = {
        "ok": make_run(
            "reports.build",
            status=Status.SUCCEEDED,
            started_at=now - timedelta(seconds=30),
            finished_at=now - timedelta(seconds=10),
        ),
        "failed": make_run(
            "reports.build",
            status=Status.FAILED,
            error="ValueError: no rows\nmore",
            finished_at=now,
        ),
        "running": make_run(
            "imports.nightly",
            progress_current=25,
            progress_total=50,
            step="loading",
            message="Loading <b>rows</b>",
        ),
        "stale": make_run(
            "stuck.job",
            heartbeat_at=now - timedelta(hours=2),
            started_at=now - timedelta(hours=3),
        ),
        "old": make_run(
            "reports.build",
            status=Status.SUCCEEDED,
            created_at=now - timedelta(days=3),
            finished_at=now - timedelta(days=3),
        ),
    }
    return made


def test_url_name():
    assert reverse("admin:django_jobstatus_jobrun_dashboard") == URL


def test_dashboard(admin_client, runs, django_assert_max_num_queries):
    with django_assert_max_num_queries(20):
        response = admin_client.get(URL)
    assert response.status_code == 200
    assert response.templates[0].name == "django_jobstatus/dashboard.html"
    ctx = response.context
    html = response.content.decode()
    counts = {tab["status"]: tab["count"] for tab in ctx["tabs"]}
    assert counts == {
        "queued": 0,
        "running": 2,
        "retrying": 0,
        "succeeded": 1,
        "failed": 1,
        "killed": 0,
        "lost": 0,
    }
    assert ctx["total"] == 4  # the 3-day-old run is outside the 24 h window
    assert [run["job_name"] for run in ctx["active"]] == [
        "stuck.job",
        "imports.nightly",
    ]
    assert 'style="width: 50%"' in html and ">50%<" in html
    assert "Loading &lt;b&gt;rows&lt;/b&gt;" in html
    assert [run.pk for run in ctx["stuck"]] == [runs["stale"].pk]
    assert [run.pk for run in ctx["failures"]] == [runs["failed"].pk]
    assert "more" in html  # the error's last line
    jobs = {row["job_name"]: row for row in ctx["jobs"]}
    assert jobs["reports.build"]["total"] == 2
    assert jobs["reports.build"]["failure_pct"] == 50.0
    assert jobs["reports.build"]["latest"].pk == runs["failed"].pk
    assert "?job_name=reports.build&amp;created=24h" in html
    assert (
        "<svg" in html
        and 'class="jobstatus-bar-succeeded"' in html
        and 'class="jobstatus-bar-failed"' in html
    )
    assert ctx["chart"]["totals"] == {"succeeded": 1, "failed": 1, "other": 0}
    assert 'data-poll="5"' in html
    assert "/static/django_jobstatus/js/jobstatus.js" in html
    assert 'href="/admin/django_jobstatus/jobrun/"' in html  # breadcrumbs


@pytest.mark.parametrize("window", ["24h", "7d"])
@pytest.mark.django_db(transaction=True)  # autocommit, as a request runs
def test_fifty_jobs_cost_the_dashboard_no_more_queries_than_one(
    admin_client, make_run, django_assert_max_num_queries, window
):
    from django.core.cache import cache

    now = timezone.now()
    for i in range(50):
        for age in (5, 1):  # the newer run is each job's latest
            make_run(
                f"job.{i:02}",
                status=Status.SUCCEEDED,
                created_at=now - timedelta(minutes=age),
                finished_at=now - timedelta(minutes=age),
            )
    admin_client.get(URL)  # the session and the user, loaded once
    cache.clear()
    # 10: the session, the user and the runs' eight (two of them set and put back the sort
    # memory on PostgreSQL), whatever the number of jobs; and 1 for the health panel's
    # count of monitors (3 when monitors exist: counts, the unhealthy ones, their incidents).
    with django_assert_max_num_queries(11):
        response = admin_client.get(URL, {"window": window})
    jobs = response.context["jobs"]
    assert len(jobs) == 50
    assert all(row["latest"].created_at == now - timedelta(minutes=1) for row in jobs)


@pytest.mark.parametrize(
    ("window", "total", "bars"), [("1h", 4, 13), ("24h", 4, 25), ("7d", 5, 169)]
)
def test_windows(admin_client, runs, window, total, bars):
    response = admin_client.get(URL, {"window": window})
    assert response.context["total"] == total
    assert len(response.context["chart"]["bars"]) == bars


def test_poll_is_opt_out(admin_client, runs):
    assert 'data-poll="0"' in admin_client.get(URL, {"poll": "0"}).content.decode()
    assert 'data-poll="2"' in admin_client.get(URL, {"poll": "2"}).content.decode()


def test_json_view(admin_client, runs, django_assert_max_num_queries):
    with django_assert_max_num_queries(6):
        response = admin_client.get(DATA, {"window": "24h"})
    data = response.json()
    assert data["counts"]["running"] == 2
    assert data["total"] == 4
    assert data["stale"] == 1
    running = next(
        run for run in data["active"] if run["job_name"] == "imports.nightly"
    )
    assert running["progress"] == 0.5  # a share, as in the API
    assert running["step"] == "loading"
    assert (
        running["message"] == "Loading <b>rows</b>"
    )  # JSON; the script writes it as text
    assert running["url"] == reverse(
        "admin:django_jobstatus_jobrun_change", args=[runs["running"].pk]
    )
    runs["running"].set_progress(40)
    assert (
        next(
            run
            for run in admin_client.get(DATA).json()["active"]
            if run["job_name"] == "imports.nightly"
        )["progress"]
        == 0.8
    )


def test_admin_index_links_to_the_dashboard(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert "/admin/django_jobstatus/dashboard/" in html
    response = admin_client.get("/admin/django_jobstatus/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == URL


def test_purge_dry_run_then_confirm(admin_client, make_run):
    now = timezone.now()
    old = make_run(
        "reports.build",
        status=Status.SUCCEEDED,
        created_at=now - timedelta(days=60),
        finished_at=now - timedelta(days=60),
    )
    old.log(20, "x")
    keep = make_run("reports.build", status=Status.SUCCEEDED)
    assert (
        "/admin/django_jobstatus/jobrun/dashboard/purge/"
        in admin_client.get(URL).content.decode()
    )
    response = admin_client.get(URL + "purge/")
    assert response.context["preview"].runs == 1
    assert response.context["preview"].logs == 1
    assert JobRun.objects.filter(pk=old.pk).exists()  # the dry run deleted nothing
    response = admin_client.post(URL + "purge/", {"days": ""}, follow=True)
    assert "Purged 1 run and 1 log line." in response.content.decode()
    assert list(JobRun.objects.all()) == [keep]


def test_purge_now_says_when_the_database_stays_locked(
    admin_client, make_run, monkeypatch
):
    from django.db import OperationalError

    from django_jobstatus import retention

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(retention, "purge", locked)
    response = admin_client.post(URL + "purge/", {"days": "30"}, follow=True)
    assert response.status_code == 200
    assert "The database stayed busy" in response.content.decode()


def test_purge_needs_delete_permission(staff_client, make_run):
    client = staff_client("view_jobrun", "change_jobrun")
    old = make_run(
        "a", status=Status.SUCCEEDED, created_at=timezone.now() - timedelta(days=60)
    )
    make_run("a", status=Status.SUCCEEDED)
    assert "dashboard/purge/" not in client.get(URL).content.decode()
    assert client.get(URL + "purge/").status_code == 403
    assert client.post(URL + "purge/").status_code == 403
    assert JobRun.objects.filter(pk=old.pk).exists()


def test_the_weeks_figures_are_cached_but_the_live_parts_are_not(
    admin_client, runs, make_run, django_assert_max_num_queries
):
    first = admin_client.get(URL, {"window": "7d"})
    assert first.context["total"] == 5
    assert "figures as of" in first.content.decode()
    make_run("new.job", status=Status.SUCCEEDED)
    again = admin_client.get(URL, {"window": "7d"})
    assert again.context["total"] == 5  # the cached figures
    assert "new.job" not in [row["job_name"] for row in again.context["jobs"]]
    assert len(again.context["active"]) == 2  # live
    assert (
        admin_client.get(DATA, {"window": "7d"}).json()["total"] == 6
    )  # the JSON view is live
    assert admin_client.get(URL, {"window": "24h"}).context["total"] == 5  # not cached
