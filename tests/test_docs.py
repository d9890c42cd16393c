"""The docs (README.md and the MkDocs site in docs/) document the code as it is.

Settings, command options, API URLs and filters, admin actions, cited tests and links are
checked against the code, as django-htmx's tests/test_docs.py does.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from django_jobstatus.conf import DEFAULTS, SETTINGS

pytestmark = pytest.mark.engine_agnostic

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _pages() -> dict[str, str]:
    """Every Markdown page of the docs site, by its path under docs/."""
    return {
        str(path.relative_to(DOCS)): path.read_text()
        for path in sorted(DOCS.rglob("*.md"))
    }


def _everything() -> str:
    return README.read_text() + "\n".join(_pages().values())


def _hooks() -> object:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_reference_is_generated_from_the_declarations():
    hooks = _hooks()
    assert hooks.MARKER in _page("settings.md")
    page = hooks.on_page_markdown(_page("settings.md"))
    rows = dict(
        re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| .+ \|$", page, flags=re.MULTILINE)
    )
    assert sorted(rows) == sorted(DEFAULTS)
    for setting in SETTINGS:
        shown = rows[setting.name].strip("`").replace('"', "'")
        assert shown == repr(setting.default).replace('"', "'"), setting.name
        assert f"| {setting.description} |" in page, setting.name


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("## ", 1)[0]
    assert re.findall(r"^make (\w+)", head, flags=re.MULTILINE) == ["demo", "test"]


def test_readme_is_short_and_links_into_the_docs():
    text = README.read_text()
    assert len(text.encode()) <= 10 * 1024
    links = re.findall(
        r"\]\((?:https://github\.com/[^/]+/[^/]+/blob/main/)?(docs/[^)#]+)", text
    )
    assert len(links) >= 8
    assert [link for link in links if not (ROOT / link).exists()] == []
    assert "pip install" in text


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = set(
        re.findall(
            r"([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE
        )
    )
    assert nav == set(_pages())


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


def _options_table(page: str, heading: str) -> set[str]:
    level = heading.split(" ", 1)[0]
    table = page.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]
    return set(re.findall(r"^\| `(--[a-z-]+)", table, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("command", "page", "heading"),
    [
        ("purge_jobstatus", "retention.md", "## `purge_jobstatus`"),
        ("reap_jobstatus", "retention.md", "## `reap_jobstatus`"),
        ("check_jobstatus", "health.md", "### `check_jobstatus`"),
    ],
)
def test_the_docs_document_every_option_of_the_commands(command, page, heading):
    own = _own_options(command)
    assert "--dry-run" in own  # the parser was read
    assert _options_table(_page(page), heading) == own


def test_the_docs_document_every_api_url_and_filter() -> None:
    pytest.importorskip("rest_framework")
    pytest.importorskip("django_filters")
    from django_jobstatus.api import urls
    from django_jobstatus.api.filters import (
        JobLogFilterSet,
        JobMonitorFilterSet,
        JobRunFilterSet,
    )

    page = _page("api.md")
    names = {pattern.name for pattern in urls.urlpatterns}
    assert {"jobrun-list", "jobmonitor-list", "metrics"} <= names
    assert {name for name in names if f"`{name}`" not in page} == set()
    filters = {
        *JobRunFilterSet.base_filters,
        *JobLogFilterSet.base_filters,
        *JobMonitorFilterSet.base_filters,
    }
    assert {name for name in filters if f"`{name}`" not in page} == set()


def test_the_docs_name_every_admin_action() -> None:
    from django_jobstatus.admin.runs import JobRunAdmin

    page = _page("admin.md")
    descriptions = {str(action.short_description) for action in JobRunAdmin.actions}
    assert len(descriptions) >= 6
    assert {text for text in descriptions if f"| {text} |" not in page} == set()


def test_tests_cited_by_the_docs_exist() -> None:
    cited = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)+)", _everything())
    assert len(cited) > 10
    missing = [
        f"{path}{names}"
        for path, names in cited
        if not (ROOT / path).exists()
        or not all(
            re.search(rf"^\s*(def|class) {name}\b", (ROOT / path).read_text(), re.M)
            for name in names.split("::")[1:]
        )
    ]
    assert missing == []


def test_settings_named_in_the_docs_exist() -> None:
    named = set(re.findall(r'JOBSTATUS\["([A-Z_]+)"\]', _everything()))
    assert "RETENTION" in named
    assert named - set(DEFAULTS) == set()


def test_bench_commands_shown_in_the_docs_exist() -> None:
    shown = set(re.findall(r"\bbench/(bench_\w+)\.py", _everything()))
    assert shown
    assert {
        name for name in shown if not (ROOT / "bench" / f"{name}.py").exists()
    } == set()


def test_the_docs_name_the_migration_that_adds_the_fingerprint() -> None:
    """docs/admin.md said "migration 0006 adds it" of ``JobRun.error_fingerprint``, its
    index and its backfill (which reads every failed and lost run, in batches): 0006 is
    the active-job index, and someone planning the rollout read the wrong migration."""
    migrations = ROOT / "django_jobstatus" / "migrations"
    (adding,) = migrations.glob("*_jobrun_error_fingerprint.py")
    assert f"migration {adding.name[:4]} adds it" in _page("admin.md")
