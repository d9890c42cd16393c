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
# A quote opens where no word character comes before it and closes where none follows (the
# apostrophe of "can't" is no quote); a bytes or raw prefix (b'…') goes with the value.
_REPLACEMENTS = (
    (re.compile(r"(?<!\w)[bBrRuU]{0,2}'(?:[^'\\]|\\.)*'(?!\w)"), "'…'"),
    (re.compile(r'(?<!\w)[bBrRuU]{0,2}"(?:[^"\\]|\\.)*"(?!\w)'), '"…"'),
    (re.compile(r"«[^»]*»|“[^”]*”"), "“…”"),
    (
        re.compile(
            r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b",
            re.IGNORECASE,
        ),
        "<id>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>"),
    # Hex runs of 8 or more with a digit and a letter: hashes, object ids, request ids.
    # One of digits only is a number: "order 10000000" is the cause of "order 9999999".
    (
        re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE),
        "<hex>",
    ),
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
    # The class is a name, kept as it is: S3UploadFailedError, OAuth2Error, Http404. In
    # the message, digits glued to a word are replaced like any number (worker7, T10:00).
    name = error_class(line)
    message = line[len(name) :]
    for pattern, placeholder in _REPLACEMENTS:
        message = pattern.sub(placeholder, message)
    return (name + message).strip()[:FINGERPRINT_MAX_LENGTH]


def error_class(fingerprint_or_error: str) -> str:
    """The exception class an error text starts with (``"ValueError"``), or ``""``."""
    match = _CLASS.match(fingerprint_or_error)
    return match.group(1) if match else ""


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank (of a traceback: its exception), or ""."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip() if lines else ""
