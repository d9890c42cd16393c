"""The dashboard in Chromium: every panel follows the database without a reload; German tabs fit."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, JobRun, Status
from tests.browser.test_layout import (
    SCHEMES,
    SIZES,
    dark_is_applied,
    inside_viewport,
    make,
    not_wider_than_viewport,
)

pytestmark = pytest.mark.browser

DASHBOARD = "/admin/django_jobstatus/jobrun/dashboard/"
WAIT_MS = 15_000


def set_hidden(page: Any, hidden: bool) -> None:
    page.evaluate(
        """hidden => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
            Object.defineProperty(document, "visibilityState", {configurable: true,
                get: () => hidden ? "hidden" : "visible"});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def wait_for_text(page: Any, selector: str, text: str) -> None:
    """Wait (up to WAIT_MS) until the element ``selector`` contains ``text``."""
    page.wait_for_function(
        "([selector, text]) => { const el = document.querySelector(selector);"
        " return el !== null && el.textContent.includes(text); }",
        arg=[selector, text],
        timeout=WAIT_MS,
    )


def test_every_panel_follows_the_database_and_pauses_in_a_hidden_tab(
    admin_page, artifacts
):
    now = timezone.now()
    make(
        "reports.build",
        Status.SUCCEEDED,
        started_at=now - timedelta(hours=3, minutes=2),
        finished_at=now - timedelta(hours=3),
    )
    admin_page.goto(f"{admin_page.base}{DASHBOARD}?poll=1")
    root = admin_page.locator("#jobstatus-dashboard")
    expect(root).to_have_attribute("data-state", "live")
    admin_page.evaluate("window.__notReloaded = true")
    assert "billing.charge_cards" not in admin_page.inner_text("#jobstatus-dashboard")

    # Hidden: the script asks nothing, so a change waits for the tab to be shown.
    set_hidden(admin_page, True)
    expect(root).to_have_attribute("data-state", "paused")
    polled = admin_page.evaluate(
        "document.getElementById('jobstatus-dashboard').dataset.updated || ''"
    )
    failed = make(
        "billing.charge_cards",
        Status.FAILED,
        error="CardError: declined (charge ch_1)",
        error_fingerprint="CardError: declined (charge ch_<n>)",
    )
    make(
        "imports.catalogue",
        heartbeat_at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=3),
    )
    make("reports.build", Status.FAILED, error_fingerprint="KeyError: '…'")
    JobMonitor.objects.create(
        job_name="billing.charge_cards",
        max_failures=1,
        created_at=now - timedelta(days=1),
    )
    health.check()
    assert (
        admin_page.evaluate(
            "document.getElementById('jobstatus-dashboard').dataset.updated || ''"
        )
        == polled
    )

    set_hidden(admin_page, False)
    expect(root).to_have_attribute("data-state", "live")
    # Each panel shows the change: tabs, chart, jobs, stuck runs, failures, health.
    wait_for_text(admin_page, '[data-panel="tabs"] [data-count="failed"]', "2")
    wait_for_text(admin_page, '[data-panel="chart"] .jobstatus-legend', "(2)")
    wait_for_text(admin_page, '[data-panel="jobs"]', "billing.charge_cards")
    wait_for_text(admin_page, '[data-panel="stuck"]', "imports.catalogue")
    wait_for_text(admin_page, '[data-panel="failures"]', "CardError")
    wait_for_text(admin_page, '[data-panel="health"]', "billing.charge_cards")
    assert admin_page.evaluate("window.__notReloaded") is True

    # And again: the failure is deleted, the job's latest run succeeds.
    failed.delete()
    make("billing.charge_cards", Status.SUCCEEDED)
    wait_for_text(admin_page, '[data-panel="tabs"] [data-count="succeeded"]', "2")
    wait_for_text(admin_page, '[data-panel="tabs"] [data-count="failed"]', "1")
    expect(
        admin_page.locator(
            '[data-panel="failures"] tr[data-job="billing.charge_cards"]'
        )
    ).to_have_count(0)
    admin_page.screenshot(
        path=str(artifacts / "dashboard-refreshed.png"), full_page=True
    )


@pytest.mark.parametrize("off", [timedelta(hours=1), -timedelta(hours=1)])
def test_an_active_row_s_time_does_not_depend_on_the_viewer_s_clock(
    admin_page, off: timedelta
) -> None:
    """As rendered and as rebuilt from each poll's answer, an active row counts on from
    the server's figure, not from the viewer's clock against the run's start."""
    run = make("reports.build", started_at=timezone.now() - timedelta(minutes=2))
    admin_page.clock.install(time=datetime.now().astimezone() + off)
    two_minutes = re.compile(r"^2 min \d\d s$")
    row = f'tr[data-run="{run.pk}"]'

    # The server's rendering, counted on by the script (no polls).
    admin_page.goto(f"{admin_page.base}{DASHBOARD}?poll=0")
    cell = admin_page.locator(f"{row} .jobstatus-duration")
    expect(cell).to_have_attribute("data-elapsed", re.compile(r"^1\d\d(\.\d+)?$"))
    expect(cell).to_have_text(two_minutes)
    admin_page.wait_for_timeout(2_000)  # a few ticks
    expect(cell).to_have_text(two_minutes)

    admin_page.goto(f"{admin_page.base}{DASHBOARD}?poll=1")
    JobRun.objects.filter(pk=run.pk).update(message="page 7")
    wait_for_text(admin_page, f"{row} .jobstatus-sub", "page 7")  # the polled row
    expect(cell).to_have_attribute("data-elapsed", re.compile(r"^1\d\d(\.\d+)?$"))
    expect(cell).to_have_text(two_minutes)
    admin_page.wait_for_timeout(2_000)  # more polls and ticks
    expect(cell).to_have_text(two_minutes)


def test_poll_zero_is_not_live(admin_page):
    admin_page.goto(f"{admin_page.base}{DASHBOARD}?poll=0")
    badge = admin_page.locator("#jobstatus-live")
    expect(badge).to_be_visible()
    expect(badge).to_contain_text("not live")
    assert "every 0 s" not in admin_page.inner_text("#jobstatus-dashboard")


@pytest.mark.engine_agnostic
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_german_tabs_stay_inside_the_tab_bar(
    admin_page, browser, settings, size, scheme, artifacts
):
    settings.LANGUAGE_CODE = "de"  # the live server's thread reads it on each request
    now = timezone.now()
    make("a.job", Status.RETRYING)
    make("a.job", Status.SUCCEEDED, finished_at=now)
    width, height = SIZES[size]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme=scheme,
        storage_state=admin_page.context.storage_state(),
    )
    try:
        page = context.new_page()
        page.goto(f"{admin_page.base}{DASHBOARD}?poll=0")
        assert page.locator("html").get_attribute("lang") == "de"
        dark_is_applied(page, scheme)
        not_wider_than_viewport(page)
        bar = page.locator(".jobstatus-tabs").bounding_box()
        assert bar is not None
        tabs = page.locator(".jobstatus-tab")
        assert tabs.count() == 8
        for i in range(tabs.count()):
            tab = tabs.nth(i).bounding_box()
            label = tabs.nth(i).locator(".jobstatus-tab-label")
            text = label.bounding_box()
            assert tab is not None and text is not None
            name = label.inner_text()
            assert tab["x"] >= bar["x"] - 0.5
            assert tab["x"] + tab["width"] <= bar["x"] + bar["width"] + 0.5, name
            # The label inside its tab: no word runs past the tab's edge.
            assert text["x"] + text["width"] <= tab["x"] + tab["width"] + 0.5, name
            scroll = label.evaluate("el => el.scrollWidth <= el.clientWidth + 1")
            assert scroll, f"{name!r} overflows its tab"
        inside_viewport(page, ".jobstatus-tabs")
        page.screenshot(
            path=str(artifacts / f"dashboard-de-{size}-{scheme}.png"), full_page=True
        )
    finally:
        context.close()
