"""Checks of one monitor at once, on real threads and connections (PostgreSQL).

A check that read the runs before a newer run was committed must not store its judgment
over the one a later check made from that run: the last state stored is always the one the
committed runs show.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections

from django_jobstatus import health
from django_jobstatus.models import (
    JobMonitor,
    JobMonitorIncident,
    JobRun,
    MonitorState,
    Status,
)
from django_jobstatus.signals import monitor_state_changed
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _waiting_on_a_lock() -> bool:
    """Another connection of this test database waits for a lock (a row lock, here)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


class _Check(threading.Thread):
    """``steps`` on a thread of its own (its own connection), any exception kept."""

    def __init__(self, *steps: Any) -> None:
        super().__init__(daemon=True)
        self.steps = steps
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for step in self.steps:
                step()
        except BaseException as exc:  # raised again by finish()
            self.error = exc
        finally:
            connections.close_all()

    def finish(self) -> None:
        self.join(10)
        assert not self.is_alive(), "the check did not finish"
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("p1_announces_last", [False, True])
@pytest.mark.parametrize("meanwhile", ["unchanged", "changed_and_back"])
def test_a_check_that_read_before_a_newer_run_does_not_store_its_stale_state(
    monitor, past_run, monkeypatch, meanwhile, p1_announces_last
):
    """P1 reads the monitor (healthy) and the runs (none for two hours: late), then waits.
    A run finishes and P2 checks: healthy stays healthy, or (``changed_and_back``) a failed
    run makes it failing and a good one healthy again, so the compare-and-set on the state
    P1 read cannot tell. P1's late must not be the state left stored, with an open incident.

    (Where P1 holds the monitor's row lock from before its read to its commit, P2 waits for
    it, then judges the newer run after P1: the state left is P2's.)"""
    m = monitor(every=timedelta(hours=1), grace=timedelta(minutes=5), max_failures=1)
    JobRun.objects.all().delete()
    past_run(ago=timedelta(hours=2))
    assert health.assess(m).state == MonitorState.LATE

    first = threading.current_thread()  # replaced by P1 below
    judged, go = threading.Event(), threading.Event()
    real_assess = health.assess

    def assess(*args: Any, **kwargs: Any) -> health.Assessment:
        found = real_assess(*args, **kwargs)
        if threading.current_thread() is first and not judged.is_set():
            judged.set()  # P1 has read the runs: now a run finishes and P2 checks
            assert go.wait(10), "the test never let P1 go on"
        return found

    monkeypatch.setattr(health, "assess", assess)
    # P1's thread gets to its signal after P2's (it had more to do after its commit): the
    # signals came in the wrong order, LATE last (a CI run, 2026-12-07).
    later: list[threading.Thread] = []
    real_resend = health.resend

    def resend(*args: Any, **kwargs: Any) -> int:
        if p1_announces_last and threading.current_thread() is first and later:
            wait_for(lambda: not later[0].is_alive(), timeout=10, what="P2 to announce")
        return real_resend(*args, **kwargs)

    monkeypatch.setattr(health, "resend", resend)
    states: list[str] = []

    def record(*, state: str, **kwargs: Any) -> None:
        states.append(state)

    monitor_state_changed.connect(record, sender=JobMonitor)
    try:
        p1 = _Check(health.check)
        first = p1
        p1.start()
        wait_for(judged.is_set, timeout=10, what="P1 to judge the monitor")
        if meanwhile == "unchanged":
            steps: tuple[Any, ...] = (
                lambda: past_run(ago=timedelta(minutes=1)),
                health.check,
            )
        else:
            steps = (
                lambda: past_run(ago=timedelta(minutes=2), status=Status.FAILED),
                health.check,
                lambda: past_run(ago=timedelta(minutes=1)),
                health.check,
            )
        p2 = _Check(*steps)
        later.append(p2)
        p2.start()
        # P2 has checked, or waits for P1 (a check holding the monitor's lock).
        wait_for(
            lambda: not p2.is_alive() or _waiting_on_a_lock(),
            timeout=10,
            what="P2 to check the monitor or to wait for P1",
        )
        go.set()
        p1.finish()
        p2.finish()
    finally:
        go.set()
        monitor_state_changed.disconnect(record, sender=JobMonitor)

    m.refresh_from_db()
    open_incidents = JobMonitorIncident.objects.filter(resolved_at__isnull=True)
    assert (m.state, list(open_incidents.values_list("state", flat=True))) == (
        MonitorState.HEALTHY,
        [],
    )
    # The last change announced (signal, alerts) says healthy, if any was.
    assert states[-1:] in ([], [MonitorState.HEALTHY])
