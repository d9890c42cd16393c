"""The dashboard, its JSON view, the admin index link, and the purge page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from django_jobstatus.fingerprints import fingerprint
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
            error="ValueError: no rows 12\nmore",
            error_fingerprint=fingerprint("ValueError: no rows 12"),
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


@pytest.mark.parametrize(
    ("failed", "succeeded", "shown"),
    [(1, 2000, "<0.1%"), (1999, 1, ">99.9%"), (1, 1, "50.0%"), (0, 3, "0.0%")],
)
def test_the_failure_rate_never_rounds_to_none_or_all(
    admin_client, failed, succeeded, shown
):
    """One failure in 2,001 runs read "0.0%" (without the warning colour), and 1,999 in
    2,000 "100.0%": the rate said the opposite of the counts beside it."""
    now = timezone.now()
    JobRun.objects.bulk_create(
        JobRun(
            job_name="nightly.sync",
            status=status,
            created_at=now - timedelta(minutes=3),
            started_at=now - timedelta(minutes=2),
            finished_at=now - timedelta(minutes=1),
        )
        for status, n in ((Status.FAILED, failed), (Status.SUCCEEDED, succeeded))
        for _ in range(n)
    )
    html = admin_client.get(URL).content.decode()
    rates = re.findall(r'<span class="jobstatus-rate([^"]*)">([^<]*)</span>', html)
    assert [
        (text.replace("&lt;", "<").replace("&gt;", ">")) for _css, text in rates
    ] == [shown]
    assert ("warn" in rates[0][0] or "bad" in rates[0][0]) == bool(failed)


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
    assert [(group["job_name"], group["count"]) for group in ctx["failures"]] == [
        ("reports.build", 1)
    ]
    assert "<strong>ValueError</strong>: no rows &lt;n&gt;" in html  # the fingerprint
    jobs = {row["job_name"]: row for row in ctx["jobs"]}
    assert jobs["reports.build"]["total"] == 2
    assert jobs["reports.build"]["failure_pct"] == 50.0
    assert jobs["reports.build"]["latest"].pk == runs["failed"].pk
    assert "?job_name=reports.build&amp;finished=24h" in html
    assert (
        "<svg" in html
        and 'class="jobstatus-bar-succeeded"' in html
        and 'class="jobstatus-bar-failed"' in html
    )
    assert ctx["chart"]["totals"] == {"succeeded": 1, "failed": 1, "other": 0}
    assert 'data-poll="5"' in html
    assert "/static/django_jobstatus/js/jobstatus.js" in html
    assert 'href="/admin/django_jobstatus/jobrun/"' in html  # breadcrumbs


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
@pytest.mark.django_db(transaction=True)  # autocommit, as a request runs
def test_fifty_jobs_and_monitors_cost_the_dashboard_ten_queries(
    admin_client, make_run, monitor, django_assert_max_num_queries, window
):
    from django.core.cache import cache

    from django_jobstatus import health

    now = timezone.now()
    for i in range(50):
        for age in (5, 1):  # the newer run is each job's latest
            make_run(
                f"job.{i:02}",
                status=Status.SUCCEEDED,
                created_at=now - timedelta(minutes=age),
                finished_at=now - timedelta(minutes=age),
            )
        make_run(
            f"job.{i:02}",
            status=Status.FAILED,
            created_at=now - timedelta(days=2),
            finished_at=now - timedelta(days=2),
            error_fingerprint="KeyError: '…'",
        )
    for i in range(3):  # failing monitors, each with an open incident
        monitor(f"job.{i:02}", max_failures=1, every=timedelta(days=30))
        make_run(f"job.{i:02}", status=Status.FAILED)
    health.check()
    admin_client.get(URL, {"window": window})  # the session, the user; the roll-ups
    cache.clear()
    # 10: the session and the user; the window's figures (roll-ups, then the runs since
    # the last closed hour); the active runs with their counts; the stuck runs; each
    # job's latest run; the failure groups; the health panel's counts and rows.
    with django_assert_max_num_queries(10):
        response = admin_client.get(URL, {"window": window})
    jobs = response.context["jobs"]
    assert len(jobs) == 50
    assert all(row["latest"].created_at >= now - timedelta(minutes=1) for row in jobs)
    assert len(response.context["health"]["rows"]) == 3
    with django_assert_max_num_queries(10):
        assert admin_client.get(DATA, {"window": window}).status_code == 200


@pytest.mark.django_db(transaction=True)  # autocommit, as a request runs
def test_a_week_of_many_failures_counts_only_its_newest_groups(
    admin_client, django_assert_max_num_queries, monkeypatch
):
    """The roll-ups say the week holds more failures than a read of its newest ones: the
    panel's groups come from that read, then only theirs are counted (still ten queries),
    and they are the groups of every failure of the week."""
    from django.core.cache import cache
    from django.test.utils import CaptureQueriesContext

    from django_jobstatus import querysets
    from django_jobstatus.admin.dashboard import FAILURES_LIMIT
    from django_jobstatus.models import uuid7
    from django_jobstatus.querysets import GROUP_SCAN

    monkeypatch.setattr(querysets, "GROUPED_AT_ONCE", 500)
    now = timezone.now()
    JobRun.objects.bulk_create(
        JobRun(
            id=uuid7(),
            job_name=f"job{i % 15}",
            status=Status.LOST if i % 9 == 0 else Status.FAILED,
            error_fingerprint=f"KeyError: case {i % 4}",
            created_at=now - timedelta(hours=2 + i * 0.1),
            finished_at=now - timedelta(hours=2 + i * 0.1),
        )
        for i in range(FAILURES_LIMIT * GROUP_SCAN + 100)
    )
    admin_client.get(URL, {"window": "7d"})  # the session, the user; the roll-ups
    cache.clear()
    with (
        django_assert_max_num_queries(10),
        CaptureQueriesContext(connection) as queries,
    ):
        response = admin_client.get(URL, {"window": "7d"})
    assert any('"error_fingerprint" IN' in q["sql"] for q in queries.captured_queries)
    shown = [
        {key: group[key] for key in ("job_name", "error_fingerprint", "count", "lost")}
        for group in response.context["failures"]
    ]
    every = JobRun.objects.failure_groups(
        response.context["generated_at"] - timedelta(days=7), limit=FAILURES_LIMIT
    )
    assert shown == [
        {key: group[key] for key in ("job_name", "error_fingerprint", "count", "lost")}
        for group in every
    ]
    assert len(shown) == FAILURES_LIMIT


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
    admin_client.get(DATA, {"window": "24h"})  # rolls up the window's closed hours
    with django_assert_max_num_queries(10):
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
    # How long each has run, by the server's clock: the script counts on from it.
    stale = next(run for run in data["active"] if run["job_name"] == "stuck.job")
    assert 3 * 3600 <= stale["elapsed"] < 3 * 3600 + 60
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


def test_the_dashboard_row_s_proxy_serves_no_page_of_a_run(staff_client, make_run):
    """Django's read-only form of the proxy would show the params, data and result unmasked."""
    run = make_run(
        "secret.job",
        params={"password": "hunter2", "user": 7},
        data={"secret": "s3cr3t-value"},
        result={"token": "t0k3n-value"},
    )
    viewer = staff_client("view_jobrun")
    for page in ("change", "history", "delete"):
        response = viewer.get(f"/admin/django_jobstatus/dashboard/{run.pk}/{page}/")
        html = response.content.decode()
        shown = [s for s in ("hunter2", "s3cr3t-value", "t0k3n-value") if s in html]
        assert shown == [], (page, response.status_code, shown)
        assert response.status_code == 404, page
    assert viewer.get("/admin/django_jobstatus/dashboard/add/").status_code == 404
    assert viewer.get("/admin/django_jobstatus/dashboard/")["Location"] == URL


def test_the_health_panel_shows_an_incident_s_detail_only_to_who_may_read_incidents(
    staff_client, make_run, monitor
):
    """The open incident's detail quotes the failed run's error: without
    ``view_jobmonitorincident`` the panel names the job and its state, not the reason
    (as the monitor's page and the API's ``open_incident`` do)."""
    from django_jobstatus import health
    from django_jobstatus.models import JobMonitorIncident

    monitor("secret.job", max_failures=1, every=timedelta(days=30))
    make_run("secret.job", status=Status.FAILED, error="OSError: s3cr3t-dsn")
    health.check()
    detail = JobMonitorIncident.objects.get(resolved_at__isnull=True).detail
    assert "s3cr3t-dsn" in detail
    shown = staff_client("view_jobrun", "view_jobmonitorincident")
    assert "s3cr3t-dsn" in shown.get(URL).content.decode()
    assert "s3cr3t-dsn" in shown.get(DATA).json()["panels"]["health"]
    assert ">why</th>" in shown.get(DATA).json()["panels"]["health"]
    viewer = staff_client("view_jobrun")
    page = viewer.get(URL)
    assert page.status_code == 200
    assert [row["job_name"] for row in page.context["health"]["rows"]] == ["secret.job"]
    assert "s3cr3t-dsn" not in page.content.decode()
    panel = viewer.get(DATA).json()["panels"]["health"]
    assert "s3cr3t-dsn" not in panel
    assert ">why</th>" not in panel  # nor a column left empty


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


def _old_runs(make_run, jobs, per_job=1, lines=0):
    """``per_job`` runs of 60 days ago for each of ``jobs`` job names, each with ``lines``
    log lines, and one new run of each job (the newest run of a job stays)."""
    ago = timezone.now() - timedelta(days=60)
    for job in range(jobs):
        for _ in range(per_job):
            old = make_run(
                f"jobs.job{job:02d}",
                status=Status.SUCCEEDED,
                created_at=ago,
                finished_at=ago,
            )
            for line in range(lines):
                old.log(20, f"line {line}")
        make_run(f"jobs.job{job:02d}", status=Status.SUCCEEDED)


def test_the_purge_page_reads_as_many_queries_for_40_jobs_as_for_one(
    admin_client, make_run, django_assert_max_num_queries
):
    """It used to read the newest runs of each job (kept) one job at a time: a query per job."""
    _old_runs(make_run, jobs=40, lines=1)
    with django_assert_max_num_queries(9):
        response = admin_client.get(URL + "purge/")
    preview = response.context["preview"]
    assert (preview.runs, preview.logs) == (40, 40)
    assert not preview.more_runs
    assert not preview.more_logs


def test_the_purge_page_counts_runs_up_to_a_cap_and_says_there_are_more(
    admin_client, make_run, monkeypatch
):
    """A million runs to go took the page 5 s to count: it counts up to a cap, then says "more than"."""
    from django_jobstatus import retention

    monkeypatch.setattr(retention, "PREVIEW_RUNS", 4)
    _old_runs(make_run, jobs=2, per_job=3)
    response = admin_client.get(URL + "purge/")
    html = response.content.decode()
    assert response.context["preview"].more_runs
    assert "More than 4 runs would go" in html
    assert "Yes, purge them" in html
    monkeypatch.setattr(retention, "PREVIEW_RUNS", 6)
    response = admin_client.get(URL + "purge/")
    assert not response.context["preview"].more_runs
    assert response.context["preview"].runs == 6
    assert "Yes, purge 6 runs" in response.content.decode()
    response = admin_client.post(URL + "purge/", {"days": ""}, follow=True)
    assert "Purged 6 runs" in response.content.decode()
    assert JobRun.objects.count() == 2  # the newest run of each job


def test_the_purge_page_counts_log_lines_up_to_a_cap(
    admin_client, make_run, monkeypatch
):
    from django_jobstatus import retention

    monkeypatch.setattr(retention, "PREVIEW_LINES", 5)
    _old_runs(make_run, jobs=2, lines=3)
    response = admin_client.get(URL + "purge/")
    preview = response.context["preview"]
    assert (preview.runs, preview.more_runs, preview.more_logs) == (2, False, True)
    assert [row["runs"] for row in preview.rows] == [1, 1]
    assert "more than 5" in response.content.decode()
    monkeypatch.setattr(retention, "PREVIEW_LINES", 6)
    preview = admin_client.get(URL + "purge/").context["preview"]
    assert (preview.logs, preview.more_logs) == (6, False)
    assert [row["logs"] for row in preview.rows] == [3, 3]


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


def test_every_panel_of_the_json_view_shows_a_change(admin_client, runs, make_run):
    """The JSON sends every panel rendered: a new failure shows in the tabs, the chart,
    the jobs, the failures, and a newly stuck run in the stuck runs."""
    before = admin_client.get(DATA, {"window": "7d"}).json()
    assert set(before["panels"]) == {
        "tabs",
        "chart",
        "jobs",
        "stuck",
        "failures",
        "health",
    }
    assert "new.job" not in before["panels"]["jobs"]
    make_run(
        "new.job",
        status=Status.FAILED,
        error_fingerprint="OSError: disk full",
    )
    make_run(
        "newly.stuck",
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    after = admin_client.get(DATA, {"window": "7d"}).json()
    assert after["total"] == before["total"] + 2
    assert after["counts"]["failed"] == before["counts"]["failed"] + 1
    assert (
        f'data-count="failed">{after["counts"]["failed"]}<' in after["panels"]["tabs"]
    )
    assert "new.job" in after["panels"]["jobs"]
    assert "OSError" in after["panels"]["failures"]
    assert "newly.stuck" in after["panels"]["stuck"]
    assert after["panels"]["chart"] != before["panels"]["chart"]
    assert "(2)" in after["panels"]["chart"]  # failed: 2 in the legend
    assert after["stale"] == before["stale"] + 1


def test_latest_failures_are_groups_not_one_noisy_job(admin_client, make_run):
    for i in range(12):
        make_run(
            "noisy.job",
            status=Status.FAILED,
            error=f"TimeoutError: request {i} took {i + 30} s",
            error_fingerprint=fingerprint(f"TimeoutError: request {i} took {i + 30} s"),
        )
    make_run(
        "quiet.job",
        status=Status.FAILED,
        error="KeyError: 'user 7'",
        error_fingerprint=fingerprint("KeyError: 'user 7'"),
        finished_at=timezone.now() - timedelta(minutes=10),
    )
    response = admin_client.get(URL)
    groups = response.context["failures"]
    assert [(g["job_name"], g["error_class"], g["count"]) for g in groups] == [
        ("noisy.job", "TimeoutError", 12),
        ("quiet.job", "KeyError", 1),
    ]
    html = response.content.decode()
    assert "12 times" in html
    assert "/admin/django_jobstatus/jobrun/failures/?window=24h" in html
    assert "error_fingerprint=TimeoutError" in html  # each group opens its runs


def test_poll_zero_says_the_page_is_not_live(admin_client, runs):
    html = admin_client.get(URL, {"poll": "0"}).content.decode()
    assert "not live" in html
    assert "every 0 s" not in html
    assert "live, every 5 s" in admin_client.get(URL).content.decode()


def _listed(admin_client, url):
    response = admin_client.get(url.replace("&amp;", "&"))
    assert response.status_code == 200
    return {run.pk for run in response.context["cl"].result_list}


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_a_count_s_link_lists_the_runs_it_counts(admin_client, make_run, window):
    """A tab, a job's row and a failure group count the runs that finished in the window;
    their links list those runs: not the runs created in it (a run created before the
    window, or a failure of the group from last month)."""
    now = timezone.now()
    error = {
        "status": Status.FAILED,
        "error": "ValueError: no rows",
        "error_fingerprint": fingerprint("ValueError: no rows"),
    }
    thirty_days = now - timedelta(days=30)
    long = make_run(
        "reports.build",
        **error,
        created_at=thirty_days,
        started_at=thirty_days,
        finished_at=now - timedelta(minutes=2),
    )
    twenty_days = now - timedelta(days=20)  # the same cause, long before the window
    make_run("reports.build", **error, created_at=twenty_days, finished_at=twenty_days)
    ctx = admin_client.get(URL, {"window": window}).context
    [tab] = [tab for tab in ctx["tabs"] if tab["status"] == Status.FAILED]
    assert tab["count"] == 1
    assert _listed(admin_client, tab["url"]) == {long.pk}
    [job] = ctx["jobs"]
    assert (job["total"], job["failed"]) == (1, 1)
    assert _listed(admin_client, job["url"]) == {long.pk}
    assert _listed(admin_client, job["failed_url"]) == {long.pk}
    [group] = ctx["failures"]
    assert group["count"] == 1
    assert _listed(admin_client, group["url"]) == {long.pk}


def test_a_run_deleted_after_its_hour_was_counted_stays_counted_and_the_page_says_so(
    admin_client, make_run
):
    """The roll-ups keep what happened: the run's hour is not counted again when it is
    deleted, and the dashboard says so above the jobs table (docs/admin.md)."""
    ago = timezone.now() - timedelta(hours=3)
    run = make_run(
        "reports.build", status=Status.FAILED, created_at=ago, finished_at=ago
    )
    admin_client.get(URL)  # rolls the hour up
    run.delete()
    response = admin_client.get(URL)
    [tab] = [tab for tab in response.context["tabs"] if tab["status"] == "failed"]
    assert tab["count"] == 1
    assert "runs deleted after their hour was counted stay counted" in (
        response.content.decode()
    )
    hour = admin_client.get(URL, {"window": "1h"}).content.decode()
    assert "stay counted" not in hour  # the last hour is read from the runs


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_the_total_s_link_lists_the_runs_it_counts(admin_client, make_run, window):
    """ "All runs" counts the runs finished in the window and the runs active now; its
    link lists those: not the runs created in the window."""
    now = timezone.now()
    month = now - timedelta(days=30)
    counted = {
        make_run("a", status=Status.FAILED, created_at=month, finished_at=now).pk,
        make_run("b", created_at=month, heartbeat_at=now).pk,  # running for a month
        make_run("c", status=Status.QUEUED).pk,
    }
    make_run("d", status=Status.SUCCEEDED, created_at=month, finished_at=month)
    response = admin_client.get(URL, {"window": window})
    assert response.context["total"] == len(counted)
    [link] = re.findall(
        r'href="([^"]*)"[^>]*>\s*<span[^>]*data-count="total"',
        str(response.content.decode()),
    )
    assert _listed(admin_client, link) == counted
