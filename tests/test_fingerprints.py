"""fingerprint(): runs failing for the same cause share one; different causes do not."""

from __future__ import annotations

import time

import pytest

from django_jobstatus.fingerprints import (
    FINGERPRINT_MAX_LENGTH,
    error_class,
    fingerprint,
    last_line,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("ValueError: no rows for user 42", "ValueError: no rows for user <n>"),
        ("KeyError: 'user_7'", "KeyError: '…'"),
        ('RuntimeError: file "/tmp/a b.csv" is gone', 'RuntimeError: file "…" is gone'),
        (
            "LookupError: run 0190c3d2-8f1e-7a2b-9c4d-1234567890ab not found",
            "LookupError: run <id> not found",
        ),
        (
            "LookupError: run 0190c3d28f1e7a2b9c4d1234567890ab not found",
            "LookupError: run <id> not found",
        ),
        (
            "MemoryError: at 0x7f3a2c1b, sha 9f86d081884c",
            "MemoryError: at <hex>, sha <hex>",
        ),
        (
            "TimeoutError: took 12.5 s (limit 10)",
            "TimeoutError: took <n> s (limit <n>)",
        ),
        ("OSError:   too   many\tspaces", "OSError: too many spaces"),
        ("ValueError: first line\nsecond line 123", "ValueError: first line"),
        ("\n\n  KeyError\n", "KeyError"),
        ("", ""),
    ],
)
def test_fingerprint(error, expected):
    assert fingerprint(error) == expected


def test_same_cause_same_fingerprint_and_other_cause_another():
    one = fingerprint("ConnectionError: host db-3 refused after 3 tries (id=881)")
    two = fingerprint("ConnectionError: host db-12 refused after 5 tries (id=902)")
    assert one == two
    assert fingerprint("ConnectionError: host db-3 timed out") != one


def test_words_are_kept():
    # A word made of hex letters only is a word, not an id.
    assert fingerprint("ValueError: bad cafe added") == "ValueError: bad cafe added"


def test_an_apostrophe_is_not_a_quote():
    """The failures view counted "OSError: Can't open 'a.csv'" and "Can't parse 'a.csv'"
    as one cause, shown as "OSError: Can'…'a.csv'", and split Python's own "can't
    multiply sequence by non-int of type 'float'" from its "'str'": the apostrophe of
    "can't" opened a quote that the one before the value closed, so the words between
    (the cause) were replaced and the quoted value (what varies) was kept."""
    assert fingerprint("OSError: Can't open 'a.csv'") == "OSError: Can't open '…'"
    assert fingerprint("OSError: Can't parse 'a.csv'") == "OSError: Can't parse '…'"
    assert fingerprint(
        "TypeError: can't multiply sequence by non-int of type 'float'"
    ) == fingerprint("TypeError: can't multiply sequence by non-int of type 'str'")
    assert fingerprint('E: don\'t load "a" or "b"') == 'E: don\'t load "…" or "…"'


def test_a_bytes_value_is_a_quoted_value():
    assert (
        fingerprint("ValueError: bad literal b'\\xff'") == "ValueError: bad literal '…'"
    )


def test_unclosed_quotes_take_linear_time():
    """A quote that opens and does not close is read up to the next quote only, so that
    failing a run whose error is long and full of apostrophes stays quick."""
    started = time.monotonic()
    fingerprint("E:" + " 'a'b" * 20_000 + " b'x" * 20_000)
    assert time.monotonic() - started < 1


def test_a_number_of_eight_digits_or_more_is_a_number():
    """ "order 9999999 not found" and "order 10000000 not found" were two causes in the
    failures view ("order <n> not found" and "order <hex> not found"): a decimal number of
    8 digits or more matched the hex-id rule. Ids, byte sizes and timestamps in ms cross
    that length all the time."""
    assert fingerprint("LookupError: order 9999999 not found") == fingerprint(
        "LookupError: order 10000000 not found"
    )
    assert fingerprint("E: at 1767225600000 ms") == "E: at <n> ms"


@pytest.mark.parametrize(
    "name", ["S3UploadFailedError", "OAuth2Error", "Http404", "app.v2.Refused"]
)
def test_an_exception_class_with_a_digit_keeps_its_name(name):
    """The failures view showed no class badge for boto3's S3UploadFailedError, and its
    cause read "S<n>UploadFailedError: …": the number rule rewrote the digit inside the
    class name, so error_class() found none."""
    assert fingerprint(f"{name}: run 7 failed") == f"{name}: run <n> failed"
    assert error_class(fingerprint(f"{name}: run 7 failed")) == name
    assert fingerprint(name) == name


def test_cut_to_the_field_length():
    assert len(fingerprint("E: " + "word " * 200)) == FINGERPRINT_MAX_LENGTH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ValueError: x", "ValueError"),
        ("app.errors.Refused: y", "app.errors.Refused"),
        ("KeyError", "KeyError"),
        ("no class here", ""),
        ("", ""),
    ],
)
def test_error_class(text, expected):
    assert error_class(text) == expected


# Written when a run fails or is lost.


def test_a_failed_run_stores_its_fingerprint(make_run):
    run = make_run(status="running")
    run.mark_failed(ValueError("no rows for user 42"))
    run.refresh_from_db()
    assert run.error_fingerprint == "ValueError: no rows for user <n>"


def test_a_lost_run_without_error_takes_its_message(make_run):
    run = make_run(status="running")
    run.mark_lost(message="Lost: no heartbeat since 2026-01-01T10:00:00, 300 s ago")
    run.refresh_from_db()
    assert (
        run.error_fingerprint == "Lost: no heartbeat since <n>-<n>-<n>T<n>, <n> s ago"
    )


def test_a_succeeded_run_has_none(make_run):
    run = make_run(status="running")
    run.mark_succeeded()
    run.refresh_from_db()
    assert run.error_fingerprint == ""


def test_last_line_is_a_traceback_s_exception() -> None:
    text = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad  \n\n'
    assert last_line(text) == "ValueError: bad"
    assert last_line("  \n") == last_line("") == ""
