"""Exceptions raised by django-jobstatus."""

from __future__ import annotations


class JobStatusError(Exception):
    """Base class of every error this app raises on purpose."""


class JobKilled(JobStatusError):  # noqa: N818 (a public name: users catch it)
    """Raised inside a job by ``check_kill()`` when a kill was requested.

    Leaving ``track()`` with it ends the run ``killed``; it is not re-raised.
    """


class InvalidTransition(JobStatusError):  # noqa: N818 (a public name: users catch it)
    """A state change that the state machine does not allow; nothing was written."""
