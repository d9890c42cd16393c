"""Exceptions raised by django-jobstatus."""

from __future__ import annotations


class JobStatusError(Exception):
    """Base class of every error this app raises on purpose."""


class JobKilled(JobStatusError):  # noqa: N818 (a public name: users catch it)
    """Raised inside a job by ``check_kill()`` when a kill was requested.

    Leaving ``track()`` with it ends the run ``killed``; it is not re-raised. ``run_id``
    names the run that was asked to stop (None when raised by hand: the run of the
    ``track()`` block it leaves). A ``track()`` block of another run, nested inside that
    one's, ends killed too and lets it through to the run it belongs to.
    """

    def __init__(self, *args: object, run_id: object = None) -> None:
        super().__init__(*args)
        self.run_id = run_id


class InvalidTransition(JobStatusError):  # noqa: N818 (a public name: users catch it)
    """A state change that the state machine does not allow; nothing was written.

    ``status``: the run's status when the change was refused, when it was read.
    """

    def __init__(self, *args: object, status: str | None = None) -> None:
        super().__init__(*args)
        self.status = status
