"""Hide the values of sensitive keys (JOBSTATUS["REDACT_KEYS"]) before showing JSON to people."""

from __future__ import annotations

from typing import Any

from django_jobstatus.conf import settings

MASK = "********"


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


def _redact(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            key: MASK if str(key).lower() in keys else _redact(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, keys) for item in value]
    return value
