"""manage.py check_jobstatus."""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, JobMonitorIncident, MonitorState, Status


def _call(*args: str) -> str:
    out = StringIO()
    call_command("check_jobstatus", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_check_reports_and_stores_states(monitor, past_run):
    monitor("tests.nightly", max_failures=1)
    monitor("tests.hourly", every=timedelta(hours=1))
    past_run("tests.nightly", status=Status.FAILED, error="OSError: disk full")
    out = _call()
    assert "tests.nightly: Failing — The last run failed. OSError: disk full" in out
    assert "tests.hourly: Late" in out
    assert (
        "Checked 2 monitors (1 late, 1 failing); opened 2 incidents, resolved 0." in out
    )
    assert dict(JobMonitor.objects.values_list("job_name", "state")) == {
        "tests.nightly": MonitorState.FAILING,
        "tests.hourly": MonitorState.LATE,
    }


def test_dry_run_changes_nothing(monitor, past_run):
    monitor("tests.nightly", max_failures=1)
    past_run("tests.nightly", status=Status.FAILED)
    out = _call("--dry-run")
    assert "Dry run: 1 monitors (1 failing); nothing was stored or sent." in out
    assert JobMonitor.objects.get().state == MonitorState.HEALTHY
    assert not JobMonitorIncident.objects.exists()


def test_one_job_only(monitor, past_run):
    monitor("tests.nightly", max_failures=1)
    monitor("tests.other", max_failures=1)
    past_run("tests.nightly", status=Status.FAILED)
    past_run("tests.other", status=Status.FAILED)
    _call("--job", "tests.other", "-v", "0")
    assert dict(JobMonitor.objects.values_list("job_name", "state")) == {
        "tests.nightly": MonitorState.HEALTHY,
        "tests.other": MonitorState.FAILING,
    }


def test_an_unknown_job_is_a_command_error(monitor):
    monitor("tests.nightly")
    with pytest.raises(CommandError, match="No monitor for: tests.nope"):
        _call("--job", "tests.nope")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wait", "-1"], "seconds of 0 or more"),
        (["--database", "nope"], "not a database alias"),
        # A NUL: PostgreSQL's text refuses it (a DataError, not a CommandError).
        (["--job", "tests.nightly\x00"], "not a job name"),
        # A byte that is not UTF-8 (a Latin-1 terminal's) reaches sys.argv as a lone
        # surrogate, which no driver sends: a traceback from it before.
        (["--job", b"tests.nightly-\xff".decode("utf-8", "surrogateescape")], "UTF-8"),
    ],
)
def test_bad_options_are_command_errors(db, args, message):
    with pytest.raises(CommandError, match=message):
        _call(*args)


@pytest.mark.django_db(transaction=True)
def test_the_longest_wait_the_option_accepts_waits_for_the_alerts(
    monitor, past_run, settings
):
    """``--wait 1e10`` (some 317 years, "as long as it takes") passes the option's check
    (at most 1,000 years), but with an alert still on its way at the end, the wait for it
    raised ``OverflowError: timestamp out of range for platform time_t``: threading's
    waits stop at ``threading.TIMEOUT_MAX`` (some 292 years)."""
    from tests.health.test_alerts import _Hook

    hold = threading.Event()
    slow = _Hook(hold=hold)  # answers once `hold` is set
    try:
        settings.JOBSTATUS = {"ALERT_EMAILS": [], "ALERT_WEBHOOKS": [slow.url]}
        monitor(max_failures=1)
        past_run(ago=timedelta(minutes=2), status=Status.FAILED, error="KeyError: 'x'")
        # The webhook answers a second after the request: the command is waiting then.
        threading.Thread(
            target=lambda: slow.received.wait(10) and not hold.wait(1) and hold.set(),
            daemon=True,
        ).start()
        assert "opened 1 incidents" in _call("--wait", "1e10")
        assert slow.bodies
    finally:
        hold.set()
        slow.close()
        assert health.outbox.join(10)
        health.monitored.clear()
