"""What a run's values may be: the checks a caller's input passes, and the cuts that make
any text storable.

Nothing here imports a model, so the scopes (``querysets``) and the handle (``tracking``)
use these at import time; ``django_jobstatus.models`` re-exports them.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from typing import Any

from django_jobstatus.conf import BIGINT_MAX as BIGINT_MAX  # exported with the limits
from django_jobstatus.conf import settings
from django_jobstatus.fingerprints import FINGERPRINT_MAX_LENGTH
from django_jobstatus.redaction import redact
from django_jobstatus.redaction import was_cut as was_cut  # exported with cut_json
from django_jobstatus.states import STATUS_LENGTH

JOB_NAME_MAX_LENGTH = 255

# The width of each of JobRun's text columns: declared here, the model's fields use it.
MAX_LENGTHS: dict[str, int] = {
    "job_name": JOB_NAME_MAX_LENGTH,
    "status": STATUS_LENGTH,
    "source": 50,
    "backend_job_id": 255,
    "queue": 255,
    "subject": 255,
    "step": 255,
    "error_fingerprint": FINGERPRINT_MAX_LENGTH,
    "worker": 255,
}


def default_worker() -> str:
    """``host:pid`` of this process, or ``JOBSTATUS["WORKER_NAME"]``."""
    return settings.WORKER_NAME or f"{socket.gethostname()}:{os.getpid()}"


def check_json(field: str, value: Any) -> None:
    """Raise TypeError naming ``field`` when ``value`` cannot be stored as JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{field} must be JSON-serializable: {exc}") from exc


def check_job_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("job_name must be a non-empty string")
    if len(name) > JOB_NAME_MAX_LENGTH:
        raise ValueError(
            f"job_name is {len(name)} characters long; the most is {JOB_NAME_MAX_LENGTH}"
        )
    return name


def check_amount(name: str, value: Any) -> int:
    """A progress figure as a whole number; ``ValueError`` naming it when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0 or value > BIGINT_MAX:
        raise ValueError(
            f"{name} must be a finite number from 0 to {BIGINT_MAX}, not {value!r}"
        )
    return int(value)


def check_progress(current: Any, total: Any = None) -> tuple[int, int | None]:
    """Validate a progress pair; return it as whole numbers."""
    current_n = check_amount("progress current", current)
    total_n = None if total is None else check_amount("progress total", total)
    if total_n is not None and current_n > total_n:
        raise ValueError(
            f"progress current ({current_n}) is greater than total ({total_n})"
        )
    return current_n, total_n


def exception_text(exc: BaseException) -> str:
    """``"ExcClass: message"`` (or just the class when the message is empty, or unprintable)."""
    name = type(exc).__qualname__
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails must not replace it
        text = "<unprintable>"
    return f"{name}: {text}" if text else name


def cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    """Cut ``text`` to ``limit`` characters with a visible marker (at the end, or the start with ``keep_end``)."""
    if len(text) <= limit:
        return text
    if keep_end:
        marker = f"[cut {len(text) - limit} characters] …"
        return marker + text[len(text) - max(limit - len(marker), 0) :]
    marker = f"… [cut {len(text) - limit} characters]"
    return text[: max(limit - len(marker), 0)] + marker


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def escaped(text: str) -> str:
    """``text`` to quote in a message: lone surrogates as ``\\ud800`` (JSON in UTF-8
    cannot hold them raw; a response that quoted one raw was a 500)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean(value: Any) -> Any:
    """``value`` with the characters no database stores replaced by U+FFFD.

    NUL (PostgreSQL refuses it in text and JSON) and lone surrogates (no UTF-8 encoding;
    ``os.fsdecode`` makes them), in a string or, at any depth, in JSON keys and values.
    """
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {clean(key): clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    return value


def cut_json(value: Any, limit: int) -> Any:
    """``value``, or when its JSON is longer than ``limit`` characters a small object that says so.

    The object is ``{"cut": true, "length": <characters>, "preview": "<the start of the
    JSON, with REDACT_KEYS masked>"}``.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return value  # not JSON: its own check reports it
    if len(text) <= limit:
        return value
    preview = json.dumps(redact(value), ensure_ascii=False)
    return {
        "cut": True,
        "length": len(text),
        "preview": cut(preview, min(limit // 2, 1000)),
    }


# Text and JSON fields, with the setting that caps them.
_CAPPED_TEXT = {
    "message": "MESSAGE_MAX_LENGTH",
    "error": "ERROR_MAX_LENGTH",
    "traceback": "TRACEBACK_MAX_LENGTH",
}
_CAPPED_JSON = frozenset({"params", "data", "result"})
# Names a caller gives: too long is a ValueError, not a cut (a cut subject finds nothing).
_CHECKED_NAMES = frozenset({"job_name", "subject", "source"})


def storable(values: dict[str, Any]) -> dict[str, Any]:
    """JobRun field values as the database can store them, whatever text they hold.

    Text and JSON are cleaned (``clean()``); ``message``, ``error`` and ``traceback``
    are cut to their setting (a traceback keeps its end), ``params``, ``data`` and
    ``result`` past JSON_MAX_LENGTH become ``cut_json()``'s object, other strings are cut
    to their column; ``job_name``, ``subject`` or ``source`` too long for their column
    raise ValueError, before anything is written.
    """
    stored: dict[str, Any] = {}
    for name, value in values.items():
        value = clean(value)
        if isinstance(value, str):
            setting = _CAPPED_TEXT.get(name)
            if setting is not None:
                value = cut(
                    value, getattr(settings, setting), keep_end=name == "traceback"
                )
            else:
                limit = MAX_LENGTHS.get(name)
                if limit is not None and len(value) > limit:
                    if name in _CHECKED_NAMES:
                        raise ValueError(
                            f"{name} is {len(value)} characters long; the most is {limit}"
                        )
                    value = cut(value, limit)
        elif name in _CAPPED_JSON:
            value = cut_json(value, settings.JSON_MAX_LENGTH)
        stored[name] = value
    return stored
