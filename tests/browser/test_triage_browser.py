"""Triage in a real browser: a run's page live, failures by cause, workers, and the export."""

from __future__ import annotations

import csv
import io
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from django_jobstatus.models import JobRun, Status
from tests.browser.test_admin_browser import make

pytestmark = pytest.mark.browser

RUNS = "/admin/django_jobstatus/jobrun/"


def state(page: Any) -> str:
    return str(page.locator("#jobstatus-live-run").get_attribute("data-state"))


def test_a_runs_page_follows_the_run_without_a_reload(admin_page, artifacts):
    run = make(
        "imports.nightly",
        Status.RUNNING,
        progress_current=1,
        progress_total=10,
        step="loading",
        message="Loaded 1 of 10 files",
    )
    run.log(20, "started")
    polls: list[str] = []
    admin_page.on(
        "request",
        lambda request: polls.append(request.url) if "/live/" in request.url else None,
    )
    admin_page.goto(f"{admin_page.base}{RUNS}{run.pk}/change/?poll=1")
    expect(admin_page.locator("#jobstatus-live-run")).to_have_attribute(
        "data-state", "live"
    )
    admin_page.evaluate("window.__notReloaded = true")

    # The job moves on in another thread, as a worker would.
    def work() -> None:
        worker_run = JobRun.objects.get(pk=run.pk)
        worker_run.set_progress(
            7, step="transforming", message="Transformed 7 of 10 files"
        )
        worker_run.log(30, "file 5 had <b>no header</b>")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    progress = admin_page.locator(".field-progress_detail .jobstatus-progress-label")
    expect(progress).to_have_text("70% (7 / 10)")
    expect(
        admin_page.locator(".field-progress_detail .jobstatus-progress-bar")
    ).to_have_attribute("style", "width: 70%;")
    expect(admin_page.locator(".field-step .readonly")).to_have_text("transforming")
    expect(admin_page.locator(".field-message .readonly")).to_have_text(
        "Transformed 7 of 10 files"
    )
    newest = admin_page.locator(".jobstatus-log-row").first
    expect(newest.locator(".jobstatus-log-message")).to_have_text(
        "file 5 had <b>no header</b>"
    )
    expect(admin_page.locator(".jobstatus-log-row")).to_have_count(2)

    run.refresh_from_db()
    run.mark_succeeded()
    expect(admin_page.locator(".field-status_display .jobstatus-badge")).to_have_text(
        "Succeeded"
    )
    expect(admin_page.locator("#jobstatus-live-run")).to_have_attribute(
        "data-state", "ended"
    )
    expect(admin_page.locator("#jobstatus-follow")).to_be_disabled()
    assert admin_page.evaluate("window.__notReloaded") is True
    admin_page.screenshot(path=str(artifacts / "run-page-live.png"), full_page=True)
    # Ended: the page stops asking. A page reload would reset the flag above.
    seen = len(polls)
    admin_page.reload()
    expect(admin_page.locator("#jobstatus-live-run")).to_have_attribute(
        "data-state", "ended"
    )
    assert len(polls) == seen  # a finished run's page never polls


def test_a_runs_page_shows_the_ended_run_once_it_saw_it_end(admin_page):
    """Once the page saw the run end, its fields are the ended run's: the duration it ran
    for, not a clock still counting from its start, its error, and no kill button."""
    started = timezone.now() - timedelta(seconds=40)
    run = make("reports.live", Status.RUNNING, queued_at=started, started_at=started)
    admin_page.goto(f"{admin_page.base}{RUNS}{run.pk}/change/?poll=1")
    expect(admin_page.locator("#jobstatus-live-run")).to_have_attribute(
        "data-state", "live"
    )
    admin_page.evaluate("window.__notReloaded = true")
    JobRun.objects.filter(pk=run.pk).update(
        status=Status.FAILED,
        finished_at=started + timedelta(seconds=5),
        error="ValueError: row 7 has no id",
    )
    expect(admin_page.locator("#jobstatus-live-run")).to_have_attribute(
        "data-state", "ended", timeout=15_000
    )
    duration = admin_page.locator(".field-timeline_display .jobstatus-duration")
    expect(duration).to_have_text("5.0 s")
    expect(duration).to_have_attribute("data-started", "")  # the clock stopped
    expect(admin_page.locator(".field-error .readonly")).to_have_text(
        "ValueError: row 7 has no id"
    )
    expect(admin_page.locator(".object-tools")).not_to_contain_text("Request kill")
    assert admin_page.evaluate("window.__notReloaded") is True


def test_polling_pauses_in_a_hidden_tab_and_with_follow_off(admin_page):
    run = make("imports.nightly", Status.RUNNING, progress_current=1, progress_total=4)
    admin_page.goto(f"{admin_page.base}{RUNS}{run.pk}/change/?poll=1")
    live = admin_page.locator("#jobstatus-live-run")
    expect(live).to_have_attribute("data-state", "live")
    admin_page.evaluate(
        """() => {
            Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    expect(live).to_have_attribute("data-state", "paused")
    run.set_progress(3)
    label = admin_page.locator(".field-progress_detail .jobstatus-progress-label")
    assert label.inner_text().startswith("25%")
    admin_page.evaluate(
        """() => {
            Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "visible"});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    expect(live).to_have_attribute("data-state", "live")
    expect(label).to_have_text("75% (3 / 4)")
    admin_page.uncheck("#jobstatus-follow")
    expect(live).to_have_attribute("data-state", "off")
    run.set_progress(4)
    admin_page.check("#jobstatus-follow")
    expect(label).to_have_text("100% (4 / 4)")


def fail(job_name: str, error: str, **fields: Any) -> JobRun:
    run = make(job_name, Status.RUNNING, **fields)
    run.mark_failed(error=error)
    return run


def test_failures_grouped_by_cause_retry_and_delete(
    admin_page, retry_backend, artifacts
):
    noisy = [
        fail(
            "mail.send",
            f"SMTPRecipientsRefused: user {i} refused",
            source="tests_backend",
        )
        for i in range(10)
    ]
    other = fail("reports.build", "KeyError: 'region_42'", source="command")
    admin_page.goto(f"{admin_page.base}{RUNS}failures/")
    rows = admin_page.locator("tr.jobstatus-failure-group")
    expect(rows).to_have_count(2)
    mail = rows.filter(has_text="mail.send")
    expect(mail.locator(".jobstatus-error-line")).to_have_text(
        "SMTPRecipientsRefused: user <n> refused"
    )
    expect(mail.locator(".jobstatus-group-link")).to_have_text("10")
    expect(
        rows.filter(has_text="reports.build").locator(".jobstatus-retry-group")
    ).to_have_count(0)
    admin_page.screenshot(path=str(artifacts / "failures.png"), full_page=True)

    mail.locator(".jobstatus-group-link").click()
    expect(admin_page.locator("#result_list tbody tr")).to_have_count(10)

    admin_page.goto(f"{admin_page.base}{RUNS}failures/")
    admin_page.locator("tr.jobstatus-failure-group", has_text="mail.send").locator(
        ".jobstatus-retry-group"
    ).click()
    expect(admin_page.locator(".messagelist")).to_contain_text(
        "Enqueued 10 runs again."
    )
    assert sorted(retry_backend) == sorted(run.pk for run in noisy)

    admin_page.locator("tr.jobstatus-failure-group", has_text="reports.build").locator(
        ".jobstatus-delete-group"
    ).click()
    expect(admin_page.locator("#content")).to_contain_text(
        "Delete 1 failed or lost run"
    )
    admin_page.click('input[type="submit"]')
    expect(admin_page.locator(".messagelist")).to_contain_text("Deleted 1 run.")
    assert not JobRun.objects.filter(pk=other.pk).exists()


def test_workers(admin_page, artifacts):
    now = timezone.now()
    make("a", worker="web-1:100", heartbeat_at=now)
    make("b", worker="web-1:100", status=Status.FAILED)
    make("c", worker="batch-2:200", heartbeat_at=now - timedelta(hours=1))
    admin_page.goto(f"{admin_page.base}{RUNS}workers/")
    silent = admin_page.locator('tr[data-worker="batch-2:200"]')
    expect(silent.locator(".jobstatus-lost")).to_have_text("silent")
    busy = admin_page.locator('tr[data-worker="web-1:100"]')
    expect(busy.locator(".jobstatus-lost")).to_have_count(0)
    expect(busy.locator("td.num").nth(2)).to_have_text("1")
    admin_page.screenshot(path=str(artifacts / "workers.png"), full_page=True)
    busy.get_by_role("link", name="web-1:100").click()
    expect(admin_page.locator("#result_list tbody tr")).to_have_count(2)


def test_export_all_matching_runs(admin_page):
    wanted = [
        make("mail.send", Status.FAILED, params={"password": "hunter2"})
        for _ in range(3)
    ]
    make("mail.send", Status.SUCCEEDED)
    make("other", Status.FAILED)
    admin_page.goto(f"{admin_page.base}{RUNS}?job_name=mail.send&status=failed")
    with admin_page.expect_download() as download:
        admin_page.get_by_role("link", name="Export CSV").click()
    text = open(download.value.path(), encoding="utf-8").read()  # noqa: SIM115
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {row["id"] for row in rows} == {str(run.pk) for run in wanted}
    assert "hunter2" not in text
