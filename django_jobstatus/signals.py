"""Signals sent by django-jobstatus (declarations only; receivers live where they act)."""

from __future__ import annotations

from django.dispatch import Signal

job_status_changed = Signal()
"""Sent once a transition of a run has been committed.

Sender: the ``JobRun`` class. Keyword arguments:

* ``run``: the ``JobRun`` instance, with its new state;
* ``previous``: the status the run had when the transition was asked for;
* ``status``: the new status.
"""
