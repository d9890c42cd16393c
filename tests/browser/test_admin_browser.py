"""The admin in a real browser: filters, bulk actions, a run's page, the live dashboard, escaping."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from django_jobstatus.models import JobRun, Status

pytestmark = pytest.mark.browser

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def make(job_name: str, status: str = Status.RUNNING, **fields: Any) -> JobRun:
    now = timezone.now()
    if status != Status.QUEUED:
        fields.setdefault("started_at", now)
    if status in Status.TERMINAL:
        fields.setdefault("finished_at", now)
    fields.setdefault("queued_at", now)
    return JobRun.objects.create(job_name=job_name, status=status, **fields)


def changelist(page: Any, query: str = "") -> None:
    page.goto(f"{page.base}/admin/django_jobstatus/jobrun/{query}")


def run_action(page: Any, run: JobRun, action: str) -> None:
    page.check(f'input[name="_selected_action"][value="{run.pk}"]')
    page.select_option('select[name="action"]', action)
    page.click('button[name="index"]')


def test_log_in_and_filter_the_changelist(admin_page, artifacts):
    make(
        "reports.build",
        Status.FAILED,
        error="ValueError: bad",
        message="No rows for 2026",
    )
    make(
        "reports.build",
        Status.SUCCEEDED,
        progress_current=10,
        progress_total=10,
        message="Built 10 pages",
    )
    make(
        "mail.send",
        Status.RUNNING,
        progress_current=3,
        progress_total=8,
        step="sending",
        message="3 of 8 sent",
    )
    changelist(admin_page)
    assert admin_page.locator("#result_list tbody tr").count() == 3
    admin_page.screenshot(path=str(artifacts / "changelist.png"))
    admin_page.locator("#changelist-filter").get_by_role(
        "link", name="Failed", exact=True
    ).click()
    admin_page.wait_for_url("**status=failed**")
    rows = admin_page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "reports.build" in rows.first.inner_text()
    admin_page.locator("#changelist-filter").get_by_role(
        "link", name="mail.send"
    ).click()
    admin_page.wait_for_url("**job_name=mail.send**")
    assert admin_page.locator("#result_list tbody tr").count() == 0
    admin_page.fill("#searchbar", "mail")
    admin_page.goto(f"{admin_page.base}/admin/django_jobstatus/jobrun/?q=mail")
    assert admin_page.locator("#result_list tbody tr").count() == 1


def test_each_bulk_action(admin_page):
    running = make("job.kill", Status.RUNNING)
    changelist(admin_page)
    run_action(admin_page, running, "request_kill")
    expect(admin_page.locator(".messagelist")).to_contain_text("Asked 1 run to stop")
    running.refresh_from_db()
    assert running.kill_requested

    run_action(admin_page, running, "mark_killed")
    expect(admin_page.locator(".messagelist")).to_contain_text("Marked 1 run as killed")
    running.refresh_from_db()
    assert running.status == Status.KILLED

    run_action(admin_page, running, "retry")
    expect(admin_page.locator(".messagelist")).to_contain_text("cannot be retried")

    active = make("job.active", Status.RUNNING)
    changelist(admin_page)
    page = admin_page
    page.check(f'input[name="_selected_action"][value="{running.pk}"]')
    page.check(f'input[name="_selected_action"][value="{active.pk}"]')
    page.select_option('select[name="action"]', "delete_selected")
    page.click('button[name="index"]')
    expect(page.locator(".messagelist")).to_contain_text(
        "Refused to delete 1 active run"
    )
    page.click('input[type="submit"]')  # Django's confirmation page: "Yes, I'm sure"
    page.wait_for_url("**/jobrun/")
    expect(page.locator(".messagelist")).to_contain_text("Successfully deleted 1")
    assert list(JobRun.objects.values_list("pk", flat=True)) == [active.pk]


def test_a_runs_page(admin_page, artifacts):
    parent = make(
        "batch.parent",
        Status.RUNNING,
        progress_current=40,
        progress_total=100,
        step="importing",
        message="Importing rows",
    )
    make("batch.child", Status.SUCCEEDED, parent=parent)
    # A child still running: a batch whose children have all ended settles at a kill.
    make("batch.child", Status.RUNNING, parent=parent)
    run = make(
        "reports.build",
        Status.FAILED,
        params={"year": 2026, "api_key": "hunter2"},
        result={"rows": 12},
        error="ValueError: no data",
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no data',
        parent=parent,
    )
    for i in range(5):
        run.log(20, "step %d done", i)
    run.log(40, "it broke")
    admin_page.goto(f"{admin_page.base}/admin/django_jobstatus/jobrun/{run.pk}/change/")
    body = admin_page.locator("#content").inner_text()
    assert "hunter2" not in body
    assert '"api_key": "********"' in body
    assert (
        "ValueError: no data"
        in admin_page.locator("pre.jobstatus-traceback").inner_text()
    )
    assert admin_page.locator(".jobstatus-log-row").count() == 6
    admin_page.get_by_role("link", name="ERROR+").click()
    expect(admin_page.locator(".jobstatus-log-row")).to_have_count(1)
    admin_page.screenshot(path=str(artifacts / "run_page.png"), full_page=True)

    admin_page.goto(
        f"{admin_page.base}/admin/django_jobstatus/jobrun/{parent.pk}/change/"
    )
    assert "3 children" in admin_page.locator("#content").inner_text()
    admin_page.get_by_role("button", name="Request kill").click()
    said = admin_page.locator(".messagelist")
    expect(said).to_contain_text("Asked the run to stop")
    expect(said).to_contain_text("Asked 1 run under this batch to stop.")
    parent.refresh_from_db()
    assert parent.kill_requested


def test_a_live_run_page_gets_every_line_however_many_arrive_at_once(admin_page):
    """More lines than one answer carries (50) between two polls: the page showed the
    newest 50 and never the ones in between. It now asks again until it has them all."""
    run = make("reports.live", Status.RUNNING)
    run.log(20, "first")
    admin_page.goto(
        f"{admin_page.base}/admin/django_jobstatus/jobrun/{run.pk}/change/?poll=1"
    )
    rows = admin_page.locator(".jobstatus-log-row")
    expect(rows).to_have_count(1)
    for i in range(120):
        run.log(20, "line %d", i)
    expect(rows).to_have_count(121, timeout=20_000)
    shown = admin_page.locator(".jobstatus-log-message").all_inner_texts()
    assert shown == [f"line {i}" for i in reversed(range(120))] + ["first"]


def test_dashboard_progress_advances_without_a_reload(admin_page, artifacts):
    now = timezone.now()
    for i in range(12):
        status = Status.FAILED if i % 4 == 0 else Status.SUCCEEDED
        make(
            f"demo.job{i % 3}",
            status,
            started_at=now - timezone.timedelta(hours=i, minutes=5),
            finished_at=now - timezone.timedelta(hours=i),
            created_at=now - timezone.timedelta(hours=i, minutes=6),
            error="RuntimeError: boom" if status == Status.FAILED else "",
        )
    run = make(
        "imports.nightly",
        Status.RUNNING,
        progress_current=10,
        progress_total=100,
        step="loading",
    )
    admin_page.goto(
        f"{admin_page.base}/admin/django_jobstatus/jobrun/dashboard/?poll=1"
    )
    label = admin_page.locator(f'tr[data-run="{run.pk}"] .jobstatus-progress-label')
    assert label.inner_text() == "10%"
    admin_page.evaluate("window.__notReloaded = true")
    # 999 of 1,000: the label rounds down (JobRun.percent_done), never to 100 %.
    run.set_progress(999, 1000, step="transforming")
    admin_page.wait_for_function(
        "id => { const el = document.querySelector(`tr[data-run='${id}'] .jobstatus-progress-label`); return el && el.textContent === '99%'; }",
        arg=str(run.pk),
        timeout=15_000,
    )
    assert admin_page.evaluate("window.__notReloaded") is True
    width = admin_page.locator(
        f'tr[data-run="{run.pk}"] .jobstatus-progress-bar'
    ).evaluate("el => el.style.width")
    assert width == "99.9%"
    admin_page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    # The admin's dark mode: the page keeps to its CSS variables.
    admin_page.emulate_media(color_scheme="dark")
    admin_page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.jobstatus-tab')).backgroundColor !== 'rgb(255, 255, 255)'",
        timeout=15_000,
    )
    admin_page.screenshot(path=str(artifacts / "dashboard-dark.png"), full_page=True)


@pytest.mark.parametrize("off", [timedelta(hours=1), -timedelta(hours=1)])
def test_a_running_run_s_time_does_not_depend_on_the_viewer_s_clock(
    admin_page, off: timedelta
) -> None:
    """The script counts on from the server's figure, never from the viewer's clock
    against the run's start: an hour ahead, that read "1 h 02 min"; behind, "0.0 s"."""
    run = make(
        "reports.build",
        Status.RUNNING,
        started_at=timezone.now() - timedelta(minutes=2),
    )
    # The viewer's machine clock is ``off`` from the servers' (time keeps flowing).
    admin_page.clock.install(time=datetime.now().astimezone() + off)
    changelist(admin_page, "?status=running")
    cell = admin_page.locator(f'tr:has(input[value="{run.pk}"]) .jobstatus-duration')
    # The script ticks at once and every second: after a few ticks, still two minutes.
    expect(cell).to_have_attribute("data-elapsed", re.compile(r"^1\d\d(\.\d+)?$"))
    expect(cell).to_have_text(re.compile(r"^2 min \d\d s$"), timeout=5_000)
    admin_page.wait_for_timeout(2_000)
    expect(cell).to_have_text(re.compile(r"^2 min \d\d s$"))


def test_script_in_a_message_or_log_is_shown_as_text(admin_page):
    run = make(
        XSS, Status.RUNNING, message=XSS, step=XSS, progress_current=1, progress_total=2
    )
    run.log(40, XSS)
    admin_page.goto(f"{admin_page.base}/admin/django_jobstatus/jobrun/")
    assert XSS in admin_page.locator("#result_list").inner_text()
    admin_page.goto(f"{admin_page.base}/admin/django_jobstatus/jobrun/{run.pk}/change/")
    assert XSS in admin_page.locator(".jobstatus-log-message").first.inner_text()
    admin_page.goto(f"{admin_page.base}/admin/django_jobstatus/joblog/")
    assert XSS in admin_page.locator("#result_list").inner_text()
    admin_page.goto(
        f"{admin_page.base}/admin/django_jobstatus/jobrun/dashboard/?poll=1"
    )
    # Wait for one poll so the script-built rows are checked too.
    admin_page.wait_for_function(
        "() => document.getElementById('jobstatus-dashboard').hasAttribute('data-updated')",
        timeout=15_000,
    )
    assert XSS in admin_page.locator("#jobstatus-active-rows").inner_text()
    assert admin_page.evaluate("typeof window.__xss") == "undefined"


PAYLOADS = [
    "<script>alert('s')</script>",
    '"><img src=x onerror=alert("i")>',
    "'><svg onload=alert('v')>",
    "</script><script>alert('c')</script>",
    "javascript:alert('j')",
    "{{ 7|add:7 }}<b onmouseover=alert('b')>x</b>",
]


def test_xss_payloads_in_every_field_open_no_dialog(admin_page):
    """Issue 11 held this: every field of a run and a log line, on every page, is text."""
    dialogs: list[str] = []
    admin_page.on(
        "dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss())
    )
    runs = []
    for n, payload in enumerate(PAYLOADS):
        text = f"{payload}{n}"
        run = make(
            text,
            Status.FAILED if n % 2 else Status.RUNNING,
            source=text,
            subject=text,
            queue=text,
            worker=text,
            backend_job_id=text,
            message=text,
            step=text,
            error=text,
            traceback=text,
            params={text: text, "nested": [text]},
            data={text: text},
            result={text: text},
            attempts=[{"attempt": 1, "status": text, "error": text, "worker": text}],
            progress_current=1,
            progress_total=2,
        )
        run.log(40, text, extra={text: text})
        runs.append(run)
    base = f"{admin_page.base}/admin/django_jobstatus"
    pages = [
        f"{base}/jobrun/",
        f"{base}/jobrun/?job_name={PAYLOADS[0]}0",
        f"{base}/jobrun/?q={PAYLOADS[1]}",
        f"{base}/joblog/",
        f"{base}/jobrun/dashboard/",
        f"{base}/jobrun/dashboard/purge/?days=0",
        *(f"{base}/jobrun/{run.pk}/change/" for run in runs),
        *(f"{base}/joblog/{run.logs.get().pk}/change/" for run in runs),
    ]
    for url in pages:
        admin_page.goto(url)
        admin_page.wait_for_load_state("load")
        admin_page.mouse.move(200, 300)  # mouseover payloads would fire now
        assert admin_page.evaluate("typeof window.__xss") == "undefined", url
    # The payloads were on the pages, as text.
    admin_page.goto(f"{base}/jobrun/{runs[0].pk}/change/")
    assert f"{PAYLOADS[0]}0" in admin_page.locator("#content").inner_text()
    assert dialogs == []


def test_a_bad_export_format_is_answered_as_text(admin_page):
    """``jobrun/export/?format=<img src=x onerror=…>`` answered its 400 as HTML, with the
    parameter in it unescaped: Chromium ran the script, in the admin's origin and with
    the session of whoever followed the link. The answer is text now."""
    payload = '<img src=x onerror="window.__xss = 1">'
    response = admin_page.goto(
        f"{admin_page.base}/admin/django_jobstatus/jobrun/export/?format={quote(payload)}"
    )
    admin_page.wait_for_load_state("load")
    assert response.status == 400
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    assert admin_page.evaluate("typeof window.__xss") == "undefined"
    assert payload in admin_page.inner_text("body")
