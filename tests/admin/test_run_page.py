"""A run's page: timeline, JSON (redacted), traceback, attempts, children, logs, buttons."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobstatus import contrib
from django_jobstatus.models import JobLog, JobRun, Status

URL = "/admin/django_jobstatus/jobrun/"


def page(client, run, query: str = "") -> str:
    response = client.get(f"{URL}{run.pk}/change/{query}")
    assert response.status_code == 200
    return response.content.decode()


def test_every_part_of_a_failed_run(admin_client, make_run):
    now = timezone.now()
    run = make_run(
        "reports.build",
        status=Status.FAILED,
        created_at=now - timedelta(minutes=10),
        queued_at=now - timedelta(minutes=10),
        started_at=now - timedelta(minutes=6),
        finished_at=now - timedelta(minutes=5),
        params={"year": 2026, "auth": {"Password": "hunter2"}},
        data={"rows": [1, 2]},
        result={"token": "abc123", "ok": False},
        error="ValueError: no rows",
        traceback='Traceback (most recent call last):\n  File "r.py", line 3, in build\nValueError: no rows <b>',
        attempt=2,
        attempts=[
            {
                "attempt": 1,
                "status": "retrying",
                "started_at": (now - timedelta(minutes=8)).isoformat(),
                "finished_at": (now - timedelta(minutes=7)).isoformat(),
                "worker": "host:1",
                "error": "TimeoutError",
            }
        ],
        worker="host:2",
    )
    html = page(admin_client, run)
    for label in ("created", "queued", "started", "finished", "waiting", "duration"):
        assert label in html
    assert "2 min 00 s" in html  # waiting, to the first attempt's start
    assert "1 min 00 s" in html  # duration of the last attempt
    assert "hunter2" not in html and "abc123" not in html
    assert "&quot;Password&quot;: &quot;********&quot;" in html
    assert "&quot;token&quot;: &quot;********&quot;" in html
    assert (
        '<pre class="jobstatus-json">{\n  &quot;rows&quot;: [\n    1,\n    2\n  ]\n}</pre>'
        in html
    )
    assert '<pre class="jobstatus-traceback">Traceback (most recent call last):' in html
    assert "ValueError: no rows &lt;b&gt;" in html
    assert "TimeoutError" in html and "host:1" in html  # the attempts history
    assert 'name="_save"' not in html  # read-only
    assert "Request kill" not in html  # finished


def test_post_to_the_page_changes_nothing(admin_client, make_run):
    run = make_run("a", message="kept")
    response = admin_client.post(f"{URL}{run.pk}/change/", {"message": "changed"})
    assert response.status_code == 405
    run.refresh_from_db()
    assert run.message == "kept"


def test_progress_and_kill_button_while_active(admin_client, make_run):
    run = make_run("a", progress_current=40, progress_total=80, step="loading")
    html = page(admin_client, run)
    assert "50% (40 / 80)" in html
    assert "Request kill" in html
    response = admin_client.post(f"{URL}{run.pk}/kill/", follow=True)
    assert "Asked the run to stop." in response.content.decode()
    run.refresh_from_db()
    assert run.kill_requested
    assert "Request kill" not in page(admin_client, run)
    assert admin_client.get(f"{URL}{run.pk}/kill/").status_code == 403  # POST only


@pytest.mark.parametrize("status", [Status.RUNNING, Status.FAILED])
def test_a_run_short_of_its_total_never_reads_100_percent(
    admin_client, make_run, status
):
    """999 of 1,000 items read "100%" (rounded), on a run's page, in the changelist, the
    dashboard and the JSON the live pages label from, running or failed: as if the work
    were all done. Labels round down (JobRun.percent_done)."""
    run = make_run(
        "imports.big", status=status, progress_current=999, progress_total=1000
    )
    labels = re.compile(r'<span class="jobstatus-progress-label">([^<]*)</span>')
    assert labels.findall(page(admin_client, run))[0] == "99% (999 / 1000)"
    listed = admin_client.get(URL).content.decode()
    assert labels.findall(listed)[0].startswith("99%")
    live = admin_client.get(f"{URL}{run.pk}/live/").json()["run"]
    assert (live["progress"], live["percent_done"]) == (0.999, 99)
    if status == Status.RUNNING:
        dashboard = admin_client.get(f"{URL}dashboard/")
        assert labels.findall(dashboard.content.decode())[0] == "99%"
        data = admin_client.get(f"{URL}dashboard/data/").json()
        assert data["active"][0]["percent_done"] == 99
    run.progress_current = 1000
    run.save()
    assert labels.findall(page(admin_client, run))[0] == "100% (1000 / 1000)"


def test_retry_button(admin_client, make_run):
    run = make_run("a", status=Status.FAILED, source="command")
    assert (
        "Retry"
        not in page(admin_client, run)
        .split('class="object-tools"')[1]
        .split("</ul>")[0]
    )
    response = admin_client.post(f"{URL}{run.pk}/retry/", follow=True)
    assert "cannot be retried" in response.content.decode()

    class Backend:
        def kill(self, run, *, force=False):  # pragma: no cover
            pass

        def retry(self, run):
            return JobRun.objects.enqueue(run.job_name, source=run.source)

    contrib.register("command", Backend())
    try:
        assert "Retry" in page(admin_client, run)
        response = admin_client.post(f"{URL}{run.pk}/retry/")
    finally:
        contrib.unregister("command")
    new = JobRun.objects.for_job("a").queued().get()
    assert response["Location"].endswith(f"{new.pk}/change/")


def test_no_retry_of_an_active_run(admin_client, make_run, retry_backend):
    run = make_run("a", status=Status.RUNNING, source="tests_backend")
    tools = page(admin_client, run).split('class="object-tools"')[1].split("</ul>")[0]
    assert "Retry" not in tools
    response = admin_client.post(f"{URL}{run.pk}/retry/", follow=True)
    assert "It is still running: only finished runs are retried." in (
        response.content.decode()
    )
    assert retry_backend == []
    assert list(JobRun.objects.all()) == [run]


def test_children_counted_by_status(admin_client, make_run):
    parent = make_run("batch")
    for status in (Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED, Status.RUNNING):
        make_run("batch.part", status=status, parent=parent)
    html = page(admin_client, parent)
    assert "2 Succeeded" in html and "1 Failed" in html and "1 Running" in html
    assert f"?parent={parent.pk}" in html
    child = parent.children.first()
    response = admin_client.get(f"{URL}?parent={parent.pk}")
    assert len(response.context["cl"].result_list) == 4
    assert str(parent) in page(admin_client, child)  # the parent link


def test_logs_inline_newest_200_with_level_filter(
    admin_client, make_run, django_assert_max_num_queries
):
    run = make_run("a")
    start = timezone.now() - timedelta(hours=1)
    JobLog.objects.bulk_create(
        JobLog(
            run=run,
            level=logging.ERROR if i % 50 == 0 else logging.INFO,
            message=f"line {i}",
            created_at=start + timedelta(seconds=i),
        )
        for i in range(450)
    )
    with django_assert_max_num_queries(12):
        html = page(admin_client, run)
    assert html.count('class="jobstatus-log-row"') == 200
    assert "line 449" in html and "line 250" in html and "line 249<" not in html
    assert "The newest 200 lines are shown." in html
    assert f"/admin/django_jobstatus/joblog/?run={run.pk}" in html
    html = page(admin_client, run, "?log_level=40")
    assert html.count('class="jobstatus-log-row"') == 9
    assert "The newest 200 lines are shown." not in html
    assert f"/admin/django_jobstatus/joblog/?run={run.pk}&amp;level=40" in html


def test_script_in_message_and_logs_is_escaped(admin_client, make_run):
    evil = "<script>alert(1)</script>"
    run = make_run(evil, message=evil, step=evil, error=evil)
    run.log(40, evil)
    for html in (
        page(admin_client, run),
        admin_client.get(URL).content.decode(),
        admin_client.get("/admin/django_jobstatus/joblog/").content.decode(),
    ):
        assert evil not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_timeline_and_the_attempts_are_in_the_current_time_zone(
    admin_client, make_run, settings
):
    """TIME_ZONE "America/New_York": the log lines said 07:00, and the timeline above
    them 12:00 UTC, as if the job had started five hours after its first line; the
    earlier attempts showed their stored UTC text."""
    import re
    from datetime import UTC, datetime

    settings.TIME_ZONE = "America/New_York"
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    run = make_run(
        "tz.job",
        status=Status.SUCCEEDED,
        created_at=at,
        queued_at=at,
        started_at=at,
        finished_at=at,
        attempt=2,
        attempts=[
            {
                "attempt": 1,
                "status": "retrying",
                "started_at": "2026-12-01T11:00:00+00:00",
                "finished_at": "2026-12-01T11:30:00+00:00",
                "worker": "w:1",
                "error": "x",
            }
        ],
    )
    html = page(admin_client, run)
    timeline = re.search(r'<ol class="jobstatus-timeline">(.*?)</ol>', html, re.S)
    assert timeline is not None
    assert "2026-12-01 07:00:00 EST" in timeline.group(1)
    assert "12:00:00" not in timeline.group(1)
    attempts = re.search(r'<table class="jobstatus-attempts">(.*?)</table>', html, re.S)
    assert attempts is not None
    assert "2026-12-01 06:00:00" in attempts.group(1)
    assert "2026-12-01 06:30:00" in attempts.group(1)
    assert "T11:00:00+00:00</td>" not in attempts.group(1)
