"""The time windows the admin offers (the dashboard, the failures view, the ``created`` filter): declared once."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from django.utils.translation import gettext_lazy as _


@dataclasses.dataclass(frozen=True)
class Window:
    key: str  # in query strings: ?window=24h, ?created=24h
    delta: timedelta
    label: Any  # "24 hours" (lazy)
    last: Any  # "Last 24 hours" (lazy)


WINDOWS: dict[str, Window] = {
    window.key: window
    for window in (
        Window("1h", timedelta(hours=1), _("1 hour"), _("Last hour")),
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
