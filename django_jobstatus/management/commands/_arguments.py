"""argparse types of the commands: each raises ArgumentTypeError, which makes a CommandError."""

from __future__ import annotations

import argparse

from django.db import connections
from django.utils.translation import gettext as _

from django_jobstatus.conf import settings
from django_jobstatus.models import Status
from django_jobstatus.querysets import as_timedelta
from django_jobstatus.values import BIGINT_MAX


def _within_max_age(name: str, value: str, number: float) -> None:
    """A usage error when ``number`` of ``name`` (days or seconds) is longer than 1000 years."""
    try:
        as_timedelta(name, number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("%(value)r is too long: at most 1000 years") % {"value": value}
        ) from None


def whole_number(value: str) -> int:
    """argparse type: a whole number of 0 or more, at most BIGINT_MAX (an SQL bigint)."""
    number = _not_negative(value)
    if number > BIGINT_MAX:
        raise argparse.ArgumentTypeError(
            _("%(value)r is too big: at most %(max)d")
            % {"value": value, "max": BIGINT_MAX}
        )
    return number


def _not_negative(value: str) -> int:
    """``value`` as a whole number of 0 or more; a usage error when it is not one."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a whole number") % {"value": value}
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(_("%(value)r is negative") % {"value": value})
    return number


def day_count(value: str) -> int:
    """argparse type: a whole number of days, 0 or more, at most some 1000 years."""
    number = _not_negative(value)
    _within_max_age("days", value, number)
    return number


def positive_int(value: str) -> int:
    """argparse type: a whole number of 1 or more."""
    number = whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not 1 or more") % {"value": value}
        )
    return number


def status_name(value: str) -> str:
    """argparse type: one of the run statuses."""
    if value not in Status.values:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a status; choose from %(choices)s")
            % {"value": value, "choices": ", ".join(Status.values)}
        )
    return value


def job_name(value: str) -> str:
    """argparse type: a job name (not blank; no NUL, which PostgreSQL's text refuses).

    Bytes that are not UTF-8 (a Latin-1 terminal's) reach sys.argv as lone surrogates,
    which no database driver can send: a usage error too.
    """
    if not value.strip() or "\x00" in value:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a job name") % {"value": value}
        )
    try:
        value.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not valid UTF-8") % {"value": value}
        ) from None
    return value


def seconds(value: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a number of seconds") % {"value": value}
        ) from None
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a number of seconds of 0 or more") % {"value": value}
        )
    _within_max_age("seconds", value, number)
    return number


def positive_seconds(value: str) -> float:
    """argparse type: a number of seconds above 0, for a wait after which runs end (a
    wait of 0 ends every run at once, one a moment old too)."""
    number = seconds(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a number of seconds above 0") % {"value": value}
        )
    return number


def database_alias(value: str) -> str:
    """argparse type: a database alias from DATABASES."""
    if value not in connections.settings:
        raise argparse.ArgumentTypeError(
            _("%(value)r is not a database alias; choose from %(choices)s")
            % {"value": value, "choices": ", ".join(connections.settings)}
        )
    return value


def add_database(parser: argparse.ArgumentParser) -> None:
    """The ``--database`` option the commands share (``-v 0`` prints nothing but errors)."""
    parser.add_argument(
        "--database",
        type=database_alias,
        default=settings.DATABASE,
        help=_(
            "The database alias to work on (default: %(default)r, JOBSTATUS['DATABASE'])"
        ),
    )
