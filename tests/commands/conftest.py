"""Fixtures for the command tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path

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


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m django <args>`` as a separate process (SQLite test settings)."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"} | {
        "DJANGO_SETTINGS_MODULE": "tests.settings"
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
