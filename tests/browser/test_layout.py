"""Layout at 1400 px and on a 390 px phone, light and dark: no key column or control outside the viewport."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from django_jobstatus.models import JobRun, Status
from tests.browser.conftest import TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.engine_agnostic]

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# JOBSTATUS_UPDATE_DOCS_IMG=1 make test-sqlite PYTEST_ARGS=tests/browser: renew docs/img/dashboard.png.
UPDATE_DOCS_IMG = "JOBSTATUS_UPDATE_DOCS_IMG"
SIZES = {"desktop": (1400, 1000), "phone": (390, 844)}


def make(job_name: str, status: str = Status.RUNNING, **fields: Any) -> JobRun:
    now = timezone.now()
    if status != Status.QUEUED:
        fields.setdefault("started_at", now - timedelta(minutes=3))
    if status in Status.TERMINAL:
        fields.setdefault("finished_at", now)
    fields.setdefault("queued_at", now - timedelta(minutes=4))
    return JobRun.objects.create(job_name=job_name, status=status, **fields)


@pytest.fixture
def history(transactional_db: None) -> dict[str, JobRun]:
    now = timezone.now()
    runs = {
        "long": make(
            "reports.build_quarterly_revenue_report_for_every_region",
            progress_current=1234,
            progress_total=5000,
            step="aggregating invoices per region and currency",
            message="Aggregated 1,234 of 5,000 invoices for region EMEA-North (currency EUR, batch 17)",
            source="celery",
            attempt=3,
            worker="worker-host-with-a-long-name.example.internal:123456",
            queue="reports-low-priority",
        ),
        "queued": make("mail.send_newsletter", Status.QUEUED),
        "stuck": make(
            "imports.nightly_catalogue_sync",
            heartbeat_at=now - timedelta(hours=2),
            started_at=now - timedelta(hours=3),
            step="downloading",
        ),
        "failed": make(
            "billing.charge_cards",
            Status.FAILED,
            error="stripe.error.CardError: Your card was declined (request req_9f86d081884c7d65, charge ch_3Nq)",
            message="Charged 40 of 100 cards",
            has_errors=True,
        ),
    }
    for i in range(12):
        make(
            f"demo.job{i % 4}",
            Status.SUCCEEDED if i % 3 else Status.FAILED,
            created_at=now - timedelta(hours=i),
            finished_at=now - timedelta(hours=i) + timedelta(minutes=2),
            error="" if i % 3 else f"ValueError: row {i} has no date",
        )
    return runs


@pytest.fixture
def open_page(admin_page: Any, browser: Any) -> Any:
    """``open_page(path, size, scheme)``: a logged-in page of that viewport and colour scheme."""
    state = admin_page.context.storage_state()
    contexts = []

    def make_page(path: str, size: str, scheme: str) -> Any:
        width, height = SIZES[size]
        context = browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme=scheme,
            storage_state=state,
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{admin_page.base}{path}")
        return page

    yield make_page
    for context in contexts:
        context.close()


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not shown"
    return found


def inside_viewport(page: Any, selector: str) -> None:
    width = page.viewport_size["width"]
    shown = box(page, selector)
    assert shown["x"] >= 0 and shown["x"] + shown["width"] <= width + 0.5, (
        f"{selector} spans {shown['x']:.0f}..{shown['x'] + shown['width']:.0f} px; the viewport is {width} px"
    )


def not_clipped(page: Any, selector: str, container: str) -> None:
    """``selector`` lies inside ``container`` (not hidden by its overflow) and inside the viewport."""
    inside_viewport(page, selector)
    shown, outer = box(page, selector), box(page, container)
    assert shown["x"] >= outer["x"] - 0.5
    assert shown["x"] + shown["width"] <= outer["x"] + outer["width"] + 0.5, (
        f"{selector} ends at {shown['x'] + shown['width']:.0f} px, past {container}'s edge at {outer['x'] + outer['width']:.0f} px"
    )


def not_wider_than_viewport(page: Any) -> None:
    width = page.viewport_size["width"]
    scroll = page.evaluate("document.documentElement.scrollWidth")
    widest = page.evaluate(
        """width => [...document.querySelectorAll('body *')]
            .filter(el => el.getBoundingClientRect().right > width + 0.5 && el.getClientRects().length)
            .slice(0, 5).map(el => el.tagName + '.' + el.className + ' ' + Math.round(el.getBoundingClientRect().right))""",
        width,
    )
    assert scroll <= width, (
        f"the page is {scroll} px wide; the viewport is {width} px: {widest}"
    )


def dark_is_applied(page: Any, scheme: str) -> None:
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (scheme == "light"), background


SCHEMES = ["light", "dark"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_changelist_columns_fit_at_1400(open_page, history, scheme, artifacts):
    page = open_page("/admin/django_jobstatus/jobrun/", "desktop", scheme)
    page.screenshot(path=str(artifacts / f"changelist-1400-{scheme}.png"))
    dark_is_applied(page, scheme)
    for column in (
        "job_name",
        "status_display",
        "progress_display",
        "message_display",
        "created_display",
        "duration_display",
        "source",
    ):
        not_clipped(page, f"#result_list th.column-{column}", "#changelist .results")
    inside_viewport(page, "#changelist-filter")
    not_wider_than_viewport(page)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_changelist_on_a_phone(open_page, history, scheme):
    page = open_page("/admin/django_jobstatus/jobrun/", "phone", scheme)
    not_wider_than_viewport(page)
    inside_viewport(page, "#searchbar")
    inside_viewport(page, 'select[name="action"]')
    not_clipped(page, "#result_list th.column-job_name", "#changelist .results")


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dashboard(open_page, history, size, scheme, artifacts):
    page = open_page("/admin/django_jobstatus/jobrun/dashboard/", size, scheme)
    dark_is_applied(page, scheme)
    not_wider_than_viewport(page)
    # "Active now": the running-for column is inside its card, not cut off by it.
    not_clipped(
        page,
        "table.jobstatus-active thead th:last-child",
        "section.jobstatus-card:has(table.jobstatus-active)",
    )
    inside_viewport(page, ".jobstatus-windows")
    stuck = history["stuck"].pk
    assert page.locator(f'tr[data-run="{stuck}"] .jobstatus-stuck').is_visible()
    queued = history["queued"].pk
    assert (
        page.locator(f'tr[data-run="{queued}"] .jobstatus-indeterminate').count() == 0
    )
    page.screenshot(
        path=str(artifacts / f"dashboard-{size}-{scheme}.png"), full_page=True
    )
    if size == "desktop" and scheme == "light" and os.environ.get(UPDATE_DOCS_IMG):
        # The README's screenshot; written only when asked, so a test run leaves the tree clean.
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / "dashboard.png"))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_run_page_kill_button_clear_of_the_title(
    open_page, history, size, scheme, artifacts
):
    run = history["long"]
    page = open_page(f"/admin/django_jobstatus/jobrun/{run.pk}/change/", size, scheme)
    button = box(page, "button.jobstatus-tool-danger")
    title = page.locator("#content h2", has_text=str(run.pk)).first
    heading = title.bounding_box()
    assert heading is not None
    overlap_x = min(
        button["x"] + button["width"], heading["x"] + heading["width"]
    ) - max(button["x"], heading["x"])
    overlap_y = min(
        button["y"] + button["height"], heading["y"] + heading["height"]
    ) - max(button["y"], heading["y"])
    assert overlap_x <= 0 or overlap_y <= 0, (button, heading)
    inside_viewport(page, "button.jobstatus-tool-danger")
    not_wider_than_viewport(page)
    page.screenshot(path=str(artifacts / f"run-page-{size}-{scheme}.png"))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("path", ["failures/?window=7d", "workers/"])
def test_failures_and_workers_fit(open_page, history, size, path):
    page = open_page(f"/admin/django_jobstatus/jobrun/{path}", size, "dark")
    not_wider_than_viewport(page)
    inside_viewport(page, ".jobstatus-header h1")
