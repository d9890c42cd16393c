"""The kinds of user both permission matrices (API and admin) walk, and the one rule they check."""

from __future__ import annotations

from typing import Any

# name: (kinds of model permission, staff, superuser); None: anonymous.
USERS: dict[str, tuple[tuple[str, ...], bool, bool] | None] = {
    "anonymous": None,
    "non-staff": (("view", "change", "delete"), False, False),
    "staff": ((), True, False),
    "view": (("view",), True, False),
    "change": (("change",), True, False),
    "delete": (("delete",), True, False),
    "change+delete": (("change", "delete"), True, False),
    "view+change": (("view", "change"), True, False),
    "view+delete": (("view", "delete"), True, False),
    "superuser": ((), True, True),
}


def may(spec: Any, *needed: str) -> bool:
    """The rule: staff with every permission ``needed`` (view, then the action's), or a superuser."""
    if spec is None:
        return False
    kinds, staff, superuser = spec
    return bool(superuser or (staff and all(kind in kinds for kind in needed)))
