"""Signals sent by django-jobstatus (declarations only; receivers live where they act)."""

from __future__ import annotations

from django.dispatch import Signal

job_status_changed = Signal()
"""Sent once a transition of a run has been committed.

Sender: the ``JobRun`` class. Keyword arguments:

* ``run``: the ``JobRun``, as this transition left it (a copy of the instance that
  moved: a later move in the same transaction changes that one);
* ``previous``: the status the run had when the transition was asked for;
* ``status``: the new status.

A receiver's exception is logged (``django_jobstatus.models``, ERROR), never raised: the
transition is committed, and the code that made it (a job's end, a reap, a kill) goes on.
"""

monitor_state_changed = Signal()
"""Sent once a monitor's new state has been committed (``django_jobstatus.health``).

Sender: the ``JobMonitor`` class. Keyword arguments:

* ``monitor``: the ``JobMonitor`` instance, with its new state;
* ``previous``: the state it left;
* ``state``: the new state (healthy, late, failing, slow or disabled);
* ``opened``: the ``JobMonitorIncident`` this change opened, or None;
* ``resolved``: the ``JobMonitorIncident`` this change resolved, or None.

Sent for every change, whatever ALERT_RATE_LIMIT holds back from email and webhooks.
"""
