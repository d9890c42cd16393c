"""The README documents the code as it is: settings, command options, API URLs and filters, admin actions, cited tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_readme_meanings_are_the_declared_help():
    from django_jobstatus.conf import SETTINGS

    text = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    meanings = dict(
        re.findall(r"^\| `([A-Z_]+)` \| .+? \| (.+) \|$", text, flags=re.MULTILINE)
    )
    assert {s.name: s.help for s in SETTINGS} == meanings


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert re.findall(r"^make (\w+)", head, flags=re.MULTILINE) == ["demo", "test"]


def _section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _own_options(command: str) -> set[str]:
    """The long options a management command adds to Django's own."""
    from django.core.management import load_command_class
    from django.core.management.base import BaseCommand

    def options(cmd: BaseCommand) -> set[str]:
        parser = cmd.create_parser("manage.py", command)
        return {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--")
        }

    return options(load_command_class("django_jobstatus", command)) - options(
        BaseCommand()
    )


@pytest.mark.parametrize("command", ["purge_jobstatus", "reap_jobstatus"])
def test_readme_documents_every_option_of_the_commands(command: str) -> None:
    section = _section("Retention and lost workers")
    own = _own_options(command)
    assert "--dry-run" in own  # the parser was read
    table = section.split(f"### `{command}`", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)", table, flags=re.MULTILINE))
    assert documented == own


def test_readme_documents_every_option_of_check_jobstatus() -> None:
    section = _section("Health and alerts")
    own = _own_options("check_jobstatus")
    assert "--dry-run" in own  # the parser was read
    table = section.split("#### `check_jobstatus`", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)", table, flags=re.MULTILINE))
    assert documented == own


def test_readme_documents_every_api_url_and_filter() -> None:
    pytest.importorskip("rest_framework")
    pytest.importorskip("django_filters")
    from django_jobstatus.api import urls
    from django_jobstatus.api.filters import (
        JobLogFilterSet,
        JobMonitorFilterSet,
        JobRunFilterSet,
    )

    section = _section("REST API")
    names = {pattern.name for pattern in urls.urlpatterns}
    assert {"jobrun-list", "jobmonitor-list", "metrics"} <= names
    assert {name for name in names if f"`{name}`" not in section} == set()
    filters = {
        *JobRunFilterSet.base_filters,
        *JobLogFilterSet.base_filters,
        *JobMonitorFilterSet.base_filters,
    }
    assert {name for name in filters if f"`{name}`" not in section} == set()


def test_readme_names_every_admin_action() -> None:
    from django_jobstatus.admin.runs import JobRunAdmin

    section = _section("Admin")
    descriptions = {str(action.short_description) for action in JobRunAdmin.actions}
    assert len(descriptions) == 6
    assert {text for text in descriptions if f"| {text} |" not in section} == set()


def test_tests_cited_by_the_readme_exist() -> None:
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", README.read_text())
    assert len(cited) > 10
    root = README.parent
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (root / path).exists()
        or not re.search(rf"^\s*def {name}\(", (root / path).read_text(), re.MULTILINE)
    ]
    assert missing == []


def test_settings_named_in_the_readme_exist() -> None:
    text = README.read_text()
    named = set(re.findall(r'JOBSTATUS\["([A-Z_]+)"\]', text))
    assert "RETENTION" in named
    assert named - set(DEFAULTS) == set()
