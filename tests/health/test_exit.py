"""Alerts still queued when a process ends: delivered, or their incidents do not read as announced.

Each test runs a real process (``tests/health/alert_process.py``) on a file SQLite database
of its own, with a real webhook server in this one, and reads the incidents it left.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from django_jobstatus import health
from tests.commands.test_concurrency import ROOT
from tests.health.test_alerts import _Hook


def _run(path: Path, hook: _Hook, action: str) -> str:
    """Run the process; what it wrote to stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.health.alert_process",
            str(path),
            hook.url,
            action,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stderr


def _incidents(path: Path) -> dict[str, Any]:
    """Each incident's job name and its opening's alert stamp."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT m.job_name, i.open_alert_at FROM django_jobstatus_jobmonitorincident i"
            " JOIN django_jobstatus_jobmonitor m ON m.id = i.monitor_id"
        ).fetchall()
    return dict(rows)


@pytest.fixture
def hook() -> Any:
    server = _Hook()
    yield server
    server.close()


@pytest.fixture
def slow_hook() -> Any:
    """A webhook server that answers each alert a second after it came."""
    hold = threading.Event()
    server = _Hook(hold=hold)

    def answer_later() -> None:
        while not server.closed.is_set():
            if server.received.wait(0.05):
                server.received.clear()
                threading.Timer(1.0, hold.set).start()

    server.closed = threading.Event()
    threading.Thread(target=answer_later, daemon=True).start()
    yield server
    server.closed.set()
    hold.set()
    server.close()


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_check_jobstatus_leaves_no_alert_stamped_that_it_did_not_send(
    tmp_path: Path, slow_hook: _Hook
) -> None:
    """Two incidents open; the first alert takes a second, longer than ``--wait 0.3``.

    The command exited with the second alert still queued: it was never sent, and its
    incident said it was (and the command that it "goes on in the background").
    """
    err = _run(tmp_path / "db.sqlite3", slow_hook, "command")

    incidents = _incidents(tmp_path / "db.sqlite3")
    sent = [body["job_name"] for body in slow_hook.bodies]
    assert sorted(incidents) == ["tests.first", "tests.second"]
    stamped = [name for name, stamp in incidents.items() if stamp is not None]
    # The alert under way when the wait ran out is delivered; the one after it is not
    # sent, and its incident does not read as announced.
    assert len(sent) == 1
    assert stamped == sent
    assert "1 alert was not sent within 0.3 seconds" in err
    assert "background" not in err


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_a_script_whose_monitored_job_failed_sends_the_alert_before_it_exits(
    tmp_path: Path, hook: _Hook
) -> None:
    """A cron script's tracked job fails and the script ends at once: its monitor is judged
    off the job's thread, and the process waited for neither the check nor its alert."""
    _run(tmp_path / "db.sqlite3", hook, "script")

    incidents = _incidents(tmp_path / "db.sqlite3")
    assert list(incidents) == ["tests.cron"]
    assert incidents["tests.cron"] is not None
    assert [body["job_name"] for body in hook.bodies] == ["tests.cron"]


def test_close_drops_what_is_left_after_the_wait_and_a_stuck_call_too() -> None:
    """``close()`` waits for the calls, then drops those not started (each running its
    ``dropped``); a call still under way after the grace is dropped as well."""
    outbox = health._Outbox()
    release = threading.Event()
    ran: list[str] = []
    dropped: list[str] = []

    def call(name: str, block: bool = False) -> None:
        if block:
            release.wait(10)
        ran.append(name)

    outbox.put(call, "first")
    assert outbox.join(5)
    outbox.put(call, "stuck", True, dropped=lambda: dropped.append("stuck"))
    outbox.put(call, "next", dropped=lambda: dropped.append("next"))
    outbox.put(call, "check")  # no ``dropped``: not counted

    assert outbox.close(0.1, grace=0.2) == 2
    assert ran == ["first"]
    assert dropped == ["stuck", "next"]
    release.set()
    # Closed for good: what comes after is dropped, not run.
    outbox.put(call, "late", dropped=lambda: dropped.append("late"))
    assert outbox.join(5)
    assert ran == ["first", "stuck"]
    assert dropped == ["stuck", "next", "late"]


def test_close_after_a_wait_long_enough_drops_nothing() -> None:
    outbox = health._Outbox()
    ran: list[int] = []
    for n in range(3):
        outbox.put(ran.append, n, dropped=lambda: ran.append(-1))
    assert outbox.close(5, grace=1) == 0
    assert ran == [0, 1, 2]
    outbox.put(ran.append, 3)
    assert outbox.join(5)
    assert ran == [0, 1, 2, 3]


@pytest.mark.engine_agnostic  # its own SQLite file, whatever the suite's database
def test_an_alert_whose_process_was_killed_is_sent_by_a_later_check(
    tmp_path: Path,
) -> None:
    """The process is killed outright (SIGKILL) while its alert is under way.

    Its incident said the alert went out, and no check ever sent it. It now reads as not
    gone out, and the next check (once the alert's claim is old) sends it.
    """
    path = tmp_path / "db.sqlite3"
    hold = threading.Event()
    held = _Hook(hold=hold)  # takes the alert and never answers
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.health.alert_process",
                str(path),
                held.url,
                "held",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert held.received.wait(60), process.stderr
        finally:
            process.kill()
            process.communicate(timeout=30)
        assert [body["event"] for body in held.bodies] == ["opened"]
        assert _incidents(path) == {"tests.held": None}
    finally:
        hold.set()
        held.close()

    hook = _Hook()
    try:
        _run(path, hook, "later")
        assert [(body["event"], body["job_name"]) for body in hook.bodies] == [
            ("opened", "tests.held")
        ]
        assert _incidents(path)["tests.held"] is not None
    finally:
        hook.close()
