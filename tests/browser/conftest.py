"""Playwright (sync API) driving Debian's Chromium against pytest-django's live_server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHROMIUM
from tests.waiting import wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TIMEOUT_MS = 15_000


# A module's browser: Playwright's sync API runs an event loop in this thread while it
# is open. Open for the whole session, it was running in every test that came after the
# first browser test (pytest-randomly's order): Django's immediate tasks backend could
# not run an async task there, and handles took the main thread for an event loop's.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as env, sync_playwright() as p:
        # The ORM calls the tests make between page actions are still plain sync calls.
        env.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()
    # The live server may still be answering a poll sent before the page closed: the
    # database flush after a test would then find a table locked (SQLite in memory).
    wait_for(
        lambda: (
            not any(
                "process_request_thread" in thread.name
                for thread in threading.enumerate()
            )
        ),
        timeout=30,
        what="the live server's last requests to end",
    )


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def admin_page(transactional_db: None, live_server: Any, page: Any) -> Any:
    """A page logged in to the admin as a superuser, through the login form."""
    from django.contrib.auth.models import User

    User.objects.create_superuser("boss", "boss@example.com", "secret-pw")
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    page.base = live_server.url
    return page
