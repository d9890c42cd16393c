"""The health feature's user-facing strings are marked for translation: makemessages finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    "django_jobstatus/health.py",
    "django_jobstatus/models.py",
    "django_jobstatus/admin/monitors.py",
    "django_jobstatus/management/commands/check_jobstatus.py",
    "django_jobstatus/templates/django_jobstatus/health_panel.html",
]


@pytest.mark.skipif(not shutil.which("xgettext"), reason="needs gettext (xgettext)")
def test_makemessages_finds_the_health_strings(tmp_path):
    for source in SOURCES:
        target = tmp_path / source
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, target)
    (tmp_path / "locale").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "makemessages",
            "-l",
            "de",
            "--no-location",
            "--no-wrap",
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    catalog = (tmp_path / "locale/de/LC_MESSAGES/django.po").read_text()
    for text in [
        "Late",  # MonitorState
        "“%(value)s” is not a cron expression: %(error)s",
        "Give a duration longer than zero.",
        "No run of “%(name)s” has been recorded; a monitor watches a job that has run at least once.",
        "No run since %(last)s; one was expected by %(expected)s.",
        "The last run took %(duration)s, longer than %(limit)s.",
        "[jobstatus] %(job)s is %(state)s",
        "[jobstatus] %(job)s is healthy again (was %(previous)s)",
        "[jobstatus] %(job)s is no longer monitored (was %(previous)s)",
        "Check now",
        "Every monitored job is healthy.",
        "No monitor for: %(names)s",
    ]:
        assert f'msgid "{text}"' in catalog, text
