"""The README documents every setting, and the settings table matches conf.DEFAULTS."""

from __future__ import annotations

import re
from pathlib import Path

from django_jobstatus.conf import DEFAULTS

README = Path(__file__).resolve().parent.parent / "README.md"


def _settings_table() -> dict[str, str]:
    text = README.read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| (.+?) \|", section, flags=re.MULTILINE))


def test_readme_lists_every_setting_and_no_other():
    assert sorted(_settings_table()) == sorted(DEFAULTS)


def test_readme_defaults_match_the_code():
    table = _settings_table()
    for key, default in DEFAULTS.items():
        shown = table[key].strip("`").replace('"', "'")
        assert shown == repr(default).replace('"', "'"), key


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert re.findall(r"^make (\w+)", head, flags=re.MULTILINE) == ["demo", "test"]
