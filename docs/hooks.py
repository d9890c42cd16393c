"""MkDocs hook: the settings reference is generated from ``django_jobstatus.conf.SETTINGS``."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- settings-table -->"


def settings_table() -> str:
    """The Markdown table of every ``JOBSTATUS`` key, from its one declaration."""
    from django_jobstatus.conf import SETTINGS

    rows = ["| key | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = repr(setting.default).replace("'", '"')
        rows.append(f"| `{setting.name}` | `{default}` | {setting.description} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, settings_table())
    return markdown
