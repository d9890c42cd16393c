"""The time windows the admin offers (the dashboard, the failures view, the ``created`` filter): declared once."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from django.utils.translation import gettext_lazy as _

from django_jobstatus import rollups


@dataclasses.dataclass(frozen=True)
class Window:
    key: str  # in query strings: ?window=24h, ?created=24h
    delta: timedelta
    label: Any  # "24 hours" (lazy)
    last: Any  # "Last 24 hours" (lazy)
    # The dashboard's bars; the window's finished runs are counted from a whole one.
    bar: timedelta = rollups.HOUR


WINDOWS: dict[str, Window] = {
    window.key: window
    for window in (
        Window(
            "1h", timedelta(hours=1), _("1 hour"), _("Last hour"), timedelta(minutes=5)
        ),
        Window("24h", timedelta(hours=24), _("24 hours"), _("Last 24 hours")),
        Window("7d", timedelta(days=7), _("7 days"), _("Last 7 days")),
        Window("30d", timedelta(days=30), _("30 days"), _("Last 30 days")),
    )
}
# The dashboard's windows (a month of figures is the failures view's and the filter's only).
DASHBOARD_WINDOWS = ("1h", "24h", "7d")


def chosen(value: Any, default: str, keys: tuple[str, ...] | None = None) -> str:
    """``value`` when it names one of ``keys`` (default: every window), else ``default``."""
    allowed = WINDOWS if keys is None else keys
    return value if isinstance(value, str) and value in allowed else default


def finished_since(key: str, now: datetime) -> datetime:
    """Where window ``key``'s finished runs start: on the whole bar (an hour; five minutes
    for 1h) at or before ``now`` minus the window, as the dashboard's roll-ups count them."""
    window = WINDOWS[key]
    return rollups.floor(now - window.delta, window.bar)
