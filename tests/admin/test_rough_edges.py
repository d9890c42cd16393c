"""Issue 15's rough edges that the server's HTML and JSON show (the layout ones are in tests/browser)."""

from __future__ import annotations

import importlib.metadata
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from django_jobstatus.admin.display import progress_bar
from django_jobstatus.models import JobRun, Status

URL = "/admin/django_jobstatus/jobrun/"
DASHBOARD = URL + "dashboard/"


def test_has_errors_on_a_run_page_is_a_neutral_marker_not_a_verdict(
    admin_client, make_run
):
    succeeded = make_run(status=Status.SUCCEEDED, has_errors=True)
    body = admin_client.get(f"{URL}{succeeded.pk}/change/").content.decode()
    assert "errors logged" in body
    # Django's boolean icons: a red ✗ / green ✓ read as the run's outcome.
    assert "icon-yes.svg" not in body and "icon-no.svg" not in body
    failed = make_run(status=Status.FAILED, has_errors=False)
    body = admin_client.get(f"{URL}{failed.pk}/change/").content.decode()
    assert "icon-yes.svg" not in body and "icon-no.svg" not in body
    assert "errors logged" not in body


def test_a_failed_run_in_the_list_shows_its_error_not_its_last_message(
    admin_client, make_run
):
    make_run(
        "a",
        status=Status.FAILED,
        message="Processed 40 of 100 rows",
        error="ValueError: row 41 has no date\nmore detail",
    )
    make_run("b", status=Status.RUNNING, message="Processed 3 of 9 rows")
    body = admin_client.get(URL).content.decode()
    assert "ValueError: row 41 has no date" in body
    assert "Processed 40 of 100 rows" not in body
    assert "Processed 3 of 9 rows" in body


def test_a_queued_run_does_not_wear_the_animated_bar(make_run):
    assert "jobstatus-indeterminate" not in progress_bar(make_run(status=Status.QUEUED))
    assert "jobstatus-indeterminate" in progress_bar(make_run(status=Status.RUNNING))


def test_a_queued_run_on_the_dashboard_is_not_animated(admin_client, make_run):
    queued = make_run("waits", status=Status.QUEUED)
    active = admin_client.get(DASHBOARD).context["active"]
    assert [run["id"] for run in active] == [str(queued.pk)]
    body = admin_client.get(DASHBOARD).content.decode()
    row = body[body.index(f'data-run="{queued.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "jobstatus-indeterminate" not in row


def test_stuck_runs_are_marked_in_active_now(admin_client, make_run):
    now = timezone.now()
    stuck = make_run(
        "stuck",
        heartbeat_at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=3),
    )
    fine = make_run("fine", heartbeat_at=now)
    data = admin_client.get(DASHBOARD + "data/").json()
    stale = {run["id"]: run["stale"] for run in data["active"]}
    assert stale == {str(stuck.pk): True, str(fine.pk): False}
    body = admin_client.get(DASHBOARD).content.decode()
    row = body[body.index(f'data-run="{stuck.pk}"') :]
    assert "jobstatus-stuck" in row[: row.index("</tr>")]


def test_dashboard_json_progress_is_a_share_like_the_api(admin_client, make_run):
    make_run(progress_current=25, progress_total=100)
    data = admin_client.get(DASHBOARD + "data/").json()
    assert data["active"][0]["progress"] == 0.25


def test_joblog_list_time_to_the_second(admin_client, make_run):
    run = make_run()
    line = run.log(20, "hello")
    body = admin_client.get("/admin/django_jobstatus/joblog/").content.decode()
    assert timezone.localtime(line.created_at).strftime("%H:%M:%S") in body


def test_titles_of_a_read_only_model(admin_client, make_run):
    run = make_run()
    listed = admin_client.get(URL)
    assert listed.context["title"] == "Job runs"
    assert "Select job run to change" not in listed.content.decode()
    page = admin_client.get(f"{URL}{run.pk}/change/")
    assert page.context["title"] == "Job run"
    assert "Change job run" not in page.content.decode()


def test_a_capped_count_says_plus(admin_client, make_run, monkeypatch):
    from django_jobstatus.admin import paginator

    monkeypatch.setattr(paginator.CappedCountPaginator, "cap", 3)
    for _ in range(5):
        make_run(status=Status.SUCCEEDED)
    body = admin_client.get(URL).content.decode()
    assert "3+ job runs" in body
    body = admin_client.get(URL + "?job_name=none").content.decode()
    assert "0 job runs" in body


def test_a_capped_count_groups_thousands(admin_client, db):
    from django.template.loader import render_to_string

    class Changelist:
        result_count = 10_000
        counted = 10_000
        count_is = "at least"
        paginator = type("P", (), {"cap": 10_000, "past_cap": True})()
        opts = JobRun._meta
        show_all = False
        can_show_all = False
        multi_page = False

    html = render_to_string(
        "admin/django_jobstatus/pagination.html",
        {"cl": Changelist(), "pagination_required": False, "page_range": []},
    )
    assert "10,000+ job runs" in html


@pytest.mark.parametrize(
    ("counted", "text"), [(130, "about 130 job runs"), (1, "about 1 job run")]
)
def test_an_estimated_count_says_about(db, counted, text):
    """PostgreSQL's estimate is not a count: the page says "about" (it said "130 job runs")."""
    from django.template.loader import render_to_string

    class Changelist:
        result_count = counted
        count_is = "about"
        paginator = type("P", (), {"cap": 10_000, "past_cap": False})()
        opts = JobRun._meta

    Changelist.counted = counted
    html = render_to_string(
        "admin/django_jobstatus/pagination.html",
        {"cl": Changelist(), "pagination_required": False, "page_range": []},
    )
    assert "jobstatus-estimated-count" in html
    assert text in " ".join(html.split())


def test_no_zero_minutes_ago(admin_client, make_run):
    make_run("just.failed", status=Status.FAILED, error="E")
    make_run("just.done", status=Status.SUCCEEDED)
    body = admin_client.get(DASHBOARD).content.decode()
    assert "0\xa0minutes" not in body and "0 minutes" not in body
    assert "just now" in body


@pytest.mark.parametrize(
    ("runs", "expected"),
    [(1, "Deleted 1 run and 0 log lines in 1 batch"), (2, "Deleted 2 runs")],
)
def test_purge_output_plurals(make_run, runs, expected):
    old = timezone.now() - timedelta(days=400)
    for _ in range(runs):
        make_run("x", status=Status.SUCCEEDED, created_at=old)
    make_run("x", status=Status.SUCCEEDED)  # the newest stays (KEEP_LAST)
    out = StringIO()
    call_command("purge_jobstatus", days=30, stdout=out)
    assert expected in out.getvalue()


def test_purge_dry_run_plurals(make_run):
    make_run(
        "x", status=Status.SUCCEEDED, created_at=timezone.now() - timedelta(days=400)
    )
    make_run("x", status=Status.SUCCEEDED)
    out = StringIO()
    call_command("purge_jobstatus", days=30, dry_run=True, stdout=out)
    assert "x succeeded: 1 run, 0 log lines" in out.getvalue()
    assert "Dry run: 1 run and 0 log lines would be deleted" in out.getvalue()


def test_swagger_shows_the_package_version():
    from testproject import settings

    assert settings.SPECTACULAR_SETTINGS["VERSION"] == importlib.metadata.version(
        "django-jobstatus"
    )
