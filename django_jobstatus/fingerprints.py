"""An error's fingerprint: its class and message with the parts that vary between runs stripped.

Runs failing for the same cause share a fingerprint, so the failures view can group them
with one SQL ``GROUP BY``. It is computed once, when a run fails or is lost, and stored in
``JobRun.error_fingerprint``.
"""

from __future__ import annotations

import re

# The stored fingerprint's length (the field's max_length).
FINGERPRINT_MAX_LENGTH = 255

# Order matters: quoted values first (they may hold anything), then ids, then numbers.
_REPLACEMENTS = (
    (re.compile(r"'(?:[^'\\]|\\.)*'"), "'…'"),
    (re.compile(r'"(?:[^"\\]|\\.)*"'), '"…"'),
    (re.compile(r"«[^»]*»|“[^”]*”"), "“…”"),
    (
        re.compile(
            r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b",
            re.IGNORECASE,
        ),
        "<id>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>"),
    # Hex runs of 8 or more with at least one digit: hashes, object ids, request ids.
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.IGNORECASE), "<hex>"),
    (re.compile(r"\d+(?:[.,:]\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)
# "ValueError: …", "app.errors.Refused: …" or a bare "KeyError".
_CLASS = re.compile(r"^([A-Za-z_][\w.]*)(?::\s|$)")


def fingerprint(error: str) -> str:
    """The fingerprint of an error text such as ``"KeyError: 'user 7'"``: ``"KeyError: '…'"``.

    Only the first non-empty line counts (the message, not a traceback pasted after it);
    quoted values, UUIDs, hex ids and numbers are replaced by placeholders and spaces
    collapsed, then it is cut to FINGERPRINT_MAX_LENGTH characters. An empty error has an
    empty fingerprint.
    """
    line = next((part.strip() for part in error.splitlines() if part.strip()), "")
    for pattern, placeholder in _REPLACEMENTS:
        line = pattern.sub(placeholder, line)
    return line.strip()[:FINGERPRINT_MAX_LENGTH]


def error_class(fingerprint_or_error: str) -> str:
    """The exception class an error text starts with (``"ValueError"``), or ``""``."""
    match = _CLASS.match(fingerprint_or_error)
    return match.group(1) if match else ""


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank (of a traceback: its exception), or ""."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip() if lines else ""
