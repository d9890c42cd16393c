"""Fixtures for the command tests."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import call_command


@pytest.fixture
def command() -> Callable[..., str]:
    """Run a management command; its standard output."""

    def call(name: str, *args: str) -> str:
        out = StringIO()
        call_command(name, *args, stdout=out)
        return out.getvalue()

    return call
