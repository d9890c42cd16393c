"""Hide the values of sensitive keys (JOBSTATUS["REDACT_KEYS"]) before showing JSON to people."""

from __future__ import annotations

import json
import re
from typing import Any

from django_jobstatus.conf import settings

MASK = "********"

# A JSON string, and whether a colon follows it (then it is a key).
_STRING = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?')


def _keys() -> set[str]:
    return {str(key).lower() for key in settings.REDACT_KEYS}


def redact(value: Any) -> Any:
    """A copy of ``value`` where every dict key listed in REDACT_KEYS (any case, any depth) is masked."""
    keys = _keys()
    return _redact(value, keys) if keys else value


def redacted_keys_in(value: Any) -> list[str]:
    """The keys of ``value`` (any depth) that REDACT_KEYS hides: a filter must not test them."""
    keys = _keys()
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [str(key) for key in item if str(key).lower() in keys]
            stack += item.values()
        elif isinstance(item, list | tuple):
            stack += item
    return sorted(found)


def was_cut(value: Any) -> bool:
    """Whether ``value`` is the object ``values.cut_json()`` put in place of JSON too big to keep."""
    return isinstance(value, dict) and value.keys() == {"cut", "length", "preview"}


def _redact(value: Any, keys: set[str]) -> Any:
    if was_cut(value) and isinstance(value["preview"], str):
        return value | {"preview": _cut_preview(value["preview"], keys)}
    if isinstance(value, dict):
        return {
            key: MASK if str(key).lower() in keys else _redact(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, keys) for item in value]
    return value


def _cut_preview(preview: str, keys: set[str]) -> str:
    """A stored preview (the start of some JSON, masked when it was cut) cut where the
    first key REDACT_KEYS hides now begins: a key added since shows no value."""
    # Between two strings of JSON text there is no quote: each match starts a string.
    for found in _STRING.finditer(preview):
        if found.group(2) and json.loads(found.group(1)).lower() in keys:
            return f'{preview[: found.end()]} "{MASK}" …'
    return preview
