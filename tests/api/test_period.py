"""parse_period(): the pure parser behind every ``period`` parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("rest_framework")

from django_jobstatus.api.filters import parse_period

NOW = datetime(2026, 3, 10, 15, 45, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("1h", timedelta(hours=1)),
        ("10m", timedelta(minutes=10)),
        ("2h 30m", timedelta(hours=2, minutes=30)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("  7d ", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("45s", timedelta(seconds=45)),
        ("90min", timedelta(minutes=90)),
        ("1H", timedelta(hours=1)),
    ],
)
def test_relative_periods_end_now(text, delta):
    assert parse_period(text, NOW) == (NOW - delta, None)


def test_today_starts_at_local_midnight(settings):
    settings.TIME_ZONE = "Europe/Paris"
    since, until = parse_period("today", NOW)
    assert since == datetime(2026, 3, 10, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert until is None


def test_yesterday_is_the_whole_previous_day(settings):
    settings.TIME_ZONE = "UTC"
    assert parse_period("yesterday", NOW) == (
        datetime(2026, 3, 9, tzinfo=UTC),
        datetime(2026, 3, 10, tzinfo=UTC),
    )


def test_yesterday_across_a_dst_change_is_23_hours(settings):
    settings.TIME_ZONE = "Europe/Paris"
    # Clocks went forward on 2026-03-29 in Paris.
    since, until = parse_period("yesterday", datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert until.astimezone(UTC) - since.astimezone(UTC) == timedelta(hours=23)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "h",
        "1",
        "1x",
        "1h foo",
        "-1h",
        "0m",
        "1.5h",
        "1h,2m",
        "99999999999h",
        "1000000000d",
        "today1",
    ],
)
def test_bad_periods_raise_value_error(text):
    with pytest.raises(ValueError, match="period|unit"):
        parse_period(text, NOW)
