"""runs/export/: every run the filters pick, in both formats, as the record holds it."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


def lines(response) -> str:
    assert response.status_code == 200, (
        response.content if not response.streaming else ""
    )
    return b"".join(response.streaming_content).decode()


def test_jsonl_keeps_the_microseconds_of_every_moment(api, make_run):
    """A JSON Lines moment is the stored one: DjangoJSONEncoder cut microseconds to
    milliseconds, so two runs 0.4 ms apart exported as the same moment, and the JSON
    Lines disagreed with the CSV and the API."""
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    run = make_run(
        "a",
        created_at=moment,
        started_at=moment + timedelta(microseconds=400),
    )
    exported = json.loads(lines(api.get(f"{BASE}export/?format=jsonl")))
    row = next(csv.DictReader(io.StringIO(lines(api.get(f"{BASE}export/?format=csv")))))
    for name in ("created_at", "started_at"):
        stored = getattr(run, name)
        assert datetime.fromisoformat(exported[name]) == stored
        assert datetime.fromisoformat(row[name]) == stored
