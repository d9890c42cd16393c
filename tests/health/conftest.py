from __future__ import annotations

from typing import Any

import pytest

from django_jobstatus import health


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    health.monitored.clear()
    yield
    assert health.outbox.join(10), "the health thread did not finish its work"
    health.monitored.clear()
