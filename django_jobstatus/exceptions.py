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


class RetryRefused(JobStatusError, ValueError):  # noqa: N818 (a public name: users catch it)
    """A run that cannot be enqueued again as it was recorded; nothing was enqueued.

    A refusal, not an outage: its parameters were cut or kept as text, no integration
    for its source is enabled, or the task system has nowhere to send it. Trying again
    later gives the same answer, so the API answers it 409, not 503. A ``ValueError``, as
    ``retry()`` documented before this class existed.
    """
