"""Alerts: one when an incident opens, one when it resolves; email, webhooks, the signal."""

from __future__ import annotations

import io
import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings

from django_jobstatus import health
from django_jobstatus.models import JobMonitor, JobMonitorIncident, MonitorState, Status
from django_jobstatus.signals import monitor_state_changed

# The health thread reads and stamps each alert's incident through its own connection.
pytestmark = pytest.mark.django_db(transaction=True)


class _Hook:
    """A real HTTP server on a free port that records the JSON bodies POSTed to it."""

    def __init__(self, *, hold: threading.Event | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.received = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                hook.content_type = self.headers["Content-Type"]
                hook.received.set()
                if hold is not None:
                    hold.wait(30)  # a server that does not answer
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = _Hook()
    yield server
    server.close()


@pytest.fixture
def failing(monitor, past_run, settings):
    """A monitor whose job has just failed; returns (monitor, a function that makes it healthy)."""

    def make(**jobstatus: Any) -> Any:
        settings.JOBSTATUS = {"ALERT_EMAILS": ["ops@example.com"], **jobstatus}
        m = monitor(max_failures=1)
        past_run(ago=timedelta(minutes=2), status=Status.FAILED, error="KeyError: 'x'")
        return m

    return make


def _check(capture) -> health.CheckResult:
    with capture(execute=True):
        result = health.check()
    assert health.outbox.join(10)
    return result


def test_one_email_when_an_incident_opens_and_one_when_it_resolves(
    failing, past_run, django_capture_on_commit_callbacks
):
    failing()
    _check(django_capture_on_commit_callbacks)
    _check(django_capture_on_commit_callbacks)  # still failing: no second email
    assert [m.subject for m in mail.outbox] == ["[jobstatus] tests.nightly is Failing"]
    assert mail.outbox[0].to == ["ops@example.com"]
    assert "KeyError: 'x'" in mail.outbox[0].body
    assert "/admin/django_jobstatus/jobmonitor/" in mail.outbox[0].body
    past_run(ago=timedelta(minutes=1))
    _check(django_capture_on_commit_callbacks)
    assert [m.subject for m in mail.outbox][1:] == [
        "[jobstatus] tests.nightly is healthy again (was Failing)"
    ]
    incident = JobMonitorIncident.objects.get()
    assert incident.open_alert_at is not None
    assert incident.resolve_alert_at is not None


def test_alert_links_use_the_base_url(failing, django_capture_on_commit_callbacks):
    m = failing(ALERT_BASE_URL="https://ops.example.com/")
    _check(django_capture_on_commit_callbacks)
    assert (
        f"https://ops.example.com/admin/django_jobstatus/jobmonitor/{m.pk}/change/"
        in (mail.outbox[0].body)
    )


def test_a_flapping_job_is_rate_limited(
    failing, past_run, django_capture_on_commit_callbacks
):
    failing(ALERT_RATE_LIMIT=3)
    for minute in range(10):
        status = Status.SUCCEEDED if minute % 2 else Status.FAILED
        past_run(ago=timedelta(seconds=50 - minute), status=status)
        _check(django_capture_on_commit_callbacks)
    # Ten state changes (5 incidents), three alerts, the end of the incident the third
    # announced (never dropped), then silence for the hour.
    assert JobMonitorIncident.objects.count() == 5
    assert [m.subject.split()[-1] for m in mail.outbox] == [
        "Failing",
        "Failing)",
        "Failing",
        "Failing)",
    ]
    # Every incident announced is announced resolved.
    assert not JobMonitorIncident.objects.filter(
        open_alert_at__isnull=False, resolve_alert_at__isnull=True
    ).exists()
    # A resolution whose opening was not announced is not announced either.
    unannounced = JobMonitorIncident.objects.filter(open_alert_at__isnull=True)
    assert unannounced.exists()
    assert not unannounced.filter(resolve_alert_at__isnull=False).exists()


def test_the_signal_is_sent_for_every_change(
    failing, past_run, django_capture_on_commit_callbacks
):
    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    monitor_state_changed.connect(receiver)
    try:
        m = failing(ALERT_EMAILS=[])
        _check(django_capture_on_commit_callbacks)
    finally:
        monitor_state_changed.disconnect(receiver)
    assert len(seen) == 1
    assert seen[0]["monitor"].pk == m.pk
    assert (seen[0]["previous"], seen[0]["state"]) == ("healthy", "failing")
    assert seen[0]["opened"].state == MonitorState.FAILING
    assert seen[0]["resolved"] is None
    assert mail.outbox == []  # no address: no email


def test_json_webhook_against_a_real_http_server(
    failing, hook, django_capture_on_commit_callbacks
):
    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[hook.url])
    _check(django_capture_on_commit_callbacks)
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert hook.content_type == "application/json"
    assert (body["event"], body["job_name"], body["state"]) == (
        "opened",
        "tests.nightly",
        "failing",
    )
    assert body["resolved_at"] is None
    assert "KeyError" in body["detail"]


def test_slack_webhook_payload(failing, hook, django_capture_on_commit_callbacks):
    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[{"url": hook.url, "format": "slack"}])
    _check(django_capture_on_commit_callbacks)
    assert list(hook.bodies[0]) == ["text"]
    assert hook.bodies[0]["text"].startswith("*[jobstatus] tests.nightly is Failing*")


def test_a_dead_webhook_blocks_neither_the_check_nor_the_email(
    failing, django_capture_on_commit_callbacks
):
    hold = threading.Event()
    slow = _Hook(hold=hold)
    try:
        failing(ALERT_WEBHOOKS=[slow.url])
        with django_capture_on_commit_callbacks(execute=True):
            result = health.check()
        # The check has returned while the server still holds the request.
        assert result.changes
        assert slow.received.wait(10)
        assert not hold.is_set()
    finally:
        hold.set()
        slow.close()
    assert health.outbox.join(10)
    assert len(mail.outbox) == 1


def test_a_webhook_that_times_out_is_logged(
    failing, django_capture_on_commit_callbacks, caplog
):
    hold = threading.Event()
    slow = _Hook(hold=hold)
    try:
        failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[slow.url], ALERT_TIMEOUT=0.2)
        with caplog.at_level("ERROR", logger="django_jobstatus.health"):
            _check(django_capture_on_commit_callbacks)
    finally:
        hold.set()
        slow.close()
    assert "_deliver failed" in caplog.text
    assert "timed out" in caplog.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: free, and nothing listens there


def test_a_refused_connection_is_logged(
    failing, django_capture_on_commit_callbacks, caplog
):
    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[f"http://127.0.0.1:{_free_port()}/"])
    with caplog.at_level("ERROR", logger="django_jobstatus.health"):
        _check(django_capture_on_commit_callbacks)
    assert "_deliver failed" in caplog.text


class _Smtp:
    """A real SMTP server (aiosmtpd) on a free port that records, or refuses, each message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.received = threading.Event()
        self.refuse = False
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):  # noqa: N802 (aiosmtpd's name)
                server.received.set()
                if server.refuse:
                    return "554 5.7.1 Message refused"
                server.messages.append(envelope)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=_free_port())
        self.controller.start()
        self.port = self.controller.port

    def close(self) -> None:
        self.controller.stop()


def _use_smtp(settings, port: int) -> None:
    """Send Django's email through the SMTP server on ``port``."""
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    if hasattr(settings, "MAILERS"):  # Django 6.1+
        settings.MAILERS = {
            "default": {
                "BACKEND": smtp,
                "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 5},
            }
        }
    else:
        settings.EMAIL_BACKEND = smtp
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = port
        settings.EMAIL_TIMEOUT = 5


@pytest.fixture
def smtp(settings):
    server = _Smtp()
    _use_smtp(settings, server.port)
    yield server
    server.close()


def test_email_through_a_real_smtp_server(
    failing, smtp, django_capture_on_commit_callbacks
):
    failing()
    _check(django_capture_on_commit_callbacks)
    assert smtp.received.wait(10)
    (envelope,) = smtp.messages
    assert envelope.rcpt_tos == ["ops@example.com"]
    assert b"Subject: [jobstatus] tests.nightly is Failing" in envelope.content
    _recorded_and_not_sent_again(django_capture_on_commit_callbacks, smtp.messages)


def _recorded_and_not_sent_again(capture, sent: list[Any]) -> None:
    """One alert was delivered: the incident says so, and a later check sends nothing more."""
    assert len(sent) == 1
    assert JobMonitorIncident.objects.get().open_alert_at is not None
    _check(capture)
    assert len(sent) == 1


def test_an_alert_the_smtp_server_refused_is_not_recorded_as_sent(
    failing, smtp, django_capture_on_commit_callbacks, caplog
):
    smtp.refuse = True
    failing()
    with caplog.at_level("ERROR", logger="django_jobstatus.health"):
        _check(django_capture_on_commit_callbacks)
    assert smtp.received.is_set()
    assert "_deliver failed" in caplog.text
    assert JobMonitorIncident.objects.get().open_alert_at is None


def test_an_alert_no_channel_delivered_is_not_recorded_as_sent(
    failing, settings, django_capture_on_commit_callbacks
):
    """The SMTP server is down and the webhook refuses the connection."""
    down = f"http://127.0.0.1:{_free_port()}/"
    _use_smtp(settings, _free_port())
    failing(ALERT_WEBHOOKS=[down])
    _check(django_capture_on_commit_callbacks)
    assert JobMonitorIncident.objects.get().open_alert_at is None


def test_an_alert_one_channel_delivered_is_recorded_as_sent(
    failing, hook, settings, django_capture_on_commit_callbacks
):
    _use_smtp(settings, _free_port())  # down
    failing(ALERT_WEBHOOKS=[hook.url])
    _check(django_capture_on_commit_callbacks)
    _recorded_and_not_sent_again(django_capture_on_commit_callbacks, hook.bodies)


def test_a_resolution_the_smtp_server_refused_is_not_recorded_as_sent(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    failing()
    _check(django_capture_on_commit_callbacks)
    assert len(smtp.messages) == 1
    smtp.refuse = True
    past_run(ago=timedelta(minutes=1))
    _check(django_capture_on_commit_callbacks)
    incident = JobMonitorIncident.objects.get()
    assert incident.resolved_at is not None
    assert incident.open_alert_at is not None
    assert incident.resolve_alert_at is None


def test_a_failed_run_of_a_monitored_job_is_seen_at_once(settings):
    """No check_jobstatus: the finished run's receiver judges the monitor, off the job's thread."""
    from django_jobstatus import track
    from django_jobstatus.models import JobRun

    settings.JOBSTATUS = {"ALERT_EMAILS": ["ops@example.com"]}
    JobRun.objects.start("tests.watched").mark_succeeded()
    JobMonitor.objects.create(job_name="tests.watched", max_failures=1)
    job_thread = threading.current_thread()
    threads = []
    health.outbox.put(lambda: threads.append(threading.current_thread()))
    with pytest.raises(RuntimeError), track("tests.watched"):
        raise RuntimeError("disk full")
    assert health.outbox.join(10)
    assert threads and threads[0] is not job_thread
    assert JobMonitor.objects.get().state == MonitorState.FAILING
    assert [m.subject for m in mail.outbox] == ["[jobstatus] tests.watched is Failing"]
    with track("tests.watched"):
        pass
    assert health.outbox.join(10)
    assert JobMonitor.objects.get().state == MonitorState.HEALTHY


def test_without_monitors_a_finished_run_costs_nothing(
    run, django_assert_num_queries, monkeypatch
):
    health.monitored.refresh()  # the cache: no monitored job
    queued = []
    monkeypatch.setattr(health.outbox, "put", lambda *args: queued.append(args))
    with django_assert_num_queries(0):
        health.on_job_status_changed(run=run, status=Status.FAILED, previous="running")
    assert queued == []
    health.monitored.clear()  # once the cache expires, the lookup goes to the health thread
    health.on_job_status_changed(run=run, status=Status.FAILED, previous="running")
    assert [args[1] for args in queued] == [run.job_name]


def test_saving_a_monitor_clears_the_cache(monitor):
    assert health.monitored.refresh() == frozenset()
    monitor("tests.nightly")
    assert health.monitored.known() is None


def test_a_monitor_saved_while_the_names_are_read_is_not_forgotten(
    monitor, monkeypatch
):
    """The health thread reads the names while the admin saves a monitor: what it read is not
    cached, or the new monitor's job would be taken as unmonitored for MONITOR_CACHE_TIMEOUT
    (seen as a flaky test_a_failed_run_of_a_monitored_job_is_seen_at_once)."""
    read = health.monitored._read

    def read_then_save(using: str) -> frozenset[str]:
        names = read(using)
        monitor("tests.nightly")  # post_save clears the cache, after the read
        return names

    monkeypatch.setattr(health.monitored, "_read", read_then_save)
    assert health.monitored.refresh() == frozenset()
    assert health.monitored.known() is None
    monkeypatch.undo()
    assert health.monitored.refresh() == {"tests.nightly"}
    assert health.monitored.known() == {"tests.nightly"}


def test_from_one_unhealthy_state_to_another_one_alert(
    failing, past_run, django_capture_on_commit_callbacks
):
    """Failing, then late: the new incident's alert says both; no "healthy again" between."""
    from django_jobstatus.models import JobMonitor

    m = failing()
    _check(django_capture_on_commit_callbacks)
    JobMonitor.objects.filter(pk=m.pk).update(
        max_failures=0, every=timedelta(seconds=1), grace=timedelta(0)
    )
    _check(django_capture_on_commit_callbacks)
    assert [message.subject for message in mail.outbox] == [
        "[jobstatus] tests.nightly is Failing",
        "[jobstatus] tests.nightly is Late (was Failing)",
    ]
    JobMonitor.objects.filter(pk=m.pk).update(enabled=False)
    _check(django_capture_on_commit_callbacks)
    assert mail.outbox[-1].subject == (
        "[jobstatus] tests.nightly is no longer monitored (was Late)"
    )


@pytest.mark.parametrize("how", ["instance", "queryset"])
def test_deleting_a_monitor_with_an_announced_incident_announces_its_end(
    failing, monitor, django_capture_on_commit_callbacks, how
):
    """A failing monitor was announced, then deleted (its page, the admin's bulk delete,
    the API): its incident went with it and no alert said so, so the last one anyone got
    still said Failing. Its end now goes out as a disabled monitor's does."""
    m = failing()
    _check(django_capture_on_commit_callbacks)
    quiet = monitor("tests.other", max_failures=1)  # healthy: deleting it says nothing
    with django_capture_on_commit_callbacks(execute=True):
        if how == "instance":
            m.delete()
            quiet.delete()
        else:
            JobMonitor.objects.all().delete()
    assert health.outbox.join(10)
    assert [message.subject for message in mail.outbox] == [
        "[jobstatus] tests.nightly is Failing",
        "[jobstatus] tests.nightly is no longer monitored (was Failing)",
    ]
    assert "The monitor was deleted." in mail.outbox[-1].body
    assert "KeyError: 'x'" in mail.outbox[-1].body
    assert not JobMonitorIncident.objects.exists()


def test_deleting_a_monitor_whose_incident_was_not_announced_sends_nothing(
    failing, django_capture_on_commit_callbacks, settings
):
    m = failing(ALERT_EMAILS=[])  # no target when it opened
    _check(django_capture_on_commit_callbacks)
    settings.JOBSTATUS = {"ALERT_EMAILS": ["ops@example.com"]}
    with django_capture_on_commit_callbacks(execute=True):
        m.delete()
    assert health.outbox.join(10)
    assert mail.outbox == []


def test_a_job_name_with_line_breaks_is_still_announced_by_email(
    monitor, past_run, settings, django_capture_on_commit_callbacks
):
    """A subject holds no line break (Django refuses it, and the alert was lost), nor another header."""
    name = "tests.nightly\r\nBcc: someone@example.com"
    settings.JOBSTATUS = {"ALERT_EMAILS": ["ops@example.com"]}
    monitor(name, max_failures=1)
    past_run(name, ago=timedelta(minutes=2), status=Status.FAILED, error="KeyError")
    _check(django_capture_on_commit_callbacks)
    assert [m.subject for m in mail.outbox] == [
        "[jobstatus] tests.nightly Bcc: someone@example.com is Failing"
    ]
    assert mail.outbox[0].bcc == []


def test_the_rate_limit_never_drops_the_end_of_an_announced_incident(
    failing, past_run, django_capture_on_commit_callbacks
):
    failing(ALERT_RATE_LIMIT=1)
    _check(django_capture_on_commit_callbacks)
    past_run(ago=timedelta(seconds=30))
    _check(django_capture_on_commit_callbacks)
    assert [m.subject for m in mail.outbox] == [
        "[jobstatus] tests.nightly is Failing",
        "[jobstatus] tests.nightly is healthy again (was Failing)",
    ]


def test_the_rate_limit_never_leaves_an_announced_incident_unresolved_through_another(
    failing, past_run, django_capture_on_commit_callbacks
):
    """Failing (announced), then slow (the limit drops its opening), then healthy. The
    failing incident ended in slow, which its new incident would announce: nobody was told
    the job stopped failing. The end of the failing incident goes out in place of the
    opening dropped, and having said "slow", the slow incident's end goes out too (a
    review found the last word stayed "is Slow" for a healthy job)."""
    m = failing(ALERT_RATE_LIMIT=1)
    JobMonitor.objects.filter(pk=m.pk).update(max_duration=timedelta(seconds=10))
    _check(django_capture_on_commit_callbacks)
    past_run(ago=timedelta(seconds=90), took=timedelta(seconds=60))  # slow success
    _check(django_capture_on_commit_callbacks)
    past_run(ago=timedelta(seconds=10))  # fast success
    _check(django_capture_on_commit_callbacks)
    incidents = JobMonitorIncident.objects.order_by("opened_at")
    assert list(incidents.values_list("state", "resolved_to")) == [
        (MonitorState.FAILING, MonitorState.SLOW),
        (MonitorState.SLOW, MonitorState.HEALTHY),
    ]
    subjects = [m.subject for m in mail.outbox]
    assert subjects == [
        "[jobstatus] tests.nightly is Failing",
        "[jobstatus] tests.nightly is Slow (was Failing)",
        "[jobstatus] tests.nightly is healthy again (was Slow)",
    ]


def test_check_jobstatus_called_from_code_leaves_its_alerts_to_the_thread(failing):
    """``call_command("check_jobstatus")`` in a process that goes on: after ``--wait`` the
    alert under way is not dropped; the thread delivers it, and its stamp stays."""
    hold = threading.Event()
    server = _Hook(hold=hold)
    try:
        failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[server.url])
        err = io.StringIO()
        call_command("check_jobstatus", wait=0.2, stderr=err, verbosity=0)
        assert "they go on in the background" in err.getvalue()
        assert server.received.wait(10)
        hold.set()
        assert health.outbox.join(10)
        assert [body["event"] for body in server.bodies] == ["opened"]
        assert JobMonitorIncident.objects.get().open_alert_at is not None
    finally:
        hold.set()
        server.close()


# Alerts that did not go out: a later check sends them again.

LATER = timedelta(minutes=10)  # past an alert's claim (health._claim_lease())


def _check_at(now: Any) -> health.CheckResult:
    result = health.check(now=now)
    assert health.outbox.join(10)
    return result


def _subjects(smtp: _Smtp) -> list[str]:
    return [
        line.removeprefix(b"Subject: ").decode()
        for envelope in smtp.messages
        for line in envelope.content.splitlines()
        if line.startswith(b"Subject: ")
    ]


def test_an_alert_no_channel_took_is_sent_again_by_a_later_check(
    failing, smtp, django_capture_on_commit_callbacks
):
    """The SMTP server refused it: the incident says it did not go out, and once its
    claim is old, the next check sends it (once)."""
    from django.utils import timezone

    smtp.refuse = True
    failing()
    _check(django_capture_on_commit_callbacks)
    incident = JobMonitorIncident.objects.get()
    assert incident.open_alert_at is None
    assert incident.open_alert_queued_at is not None
    smtp.refuse = False
    assert _check(django_capture_on_commit_callbacks).resent == 0  # its claim holds
    assert smtp.messages == []

    later = timezone.now() + LATER
    assert _check_at(later).resent == 1
    assert _subjects(smtp) == ["[jobstatus] tests.nightly is Failing"]
    incident.refresh_from_db()
    assert incident.open_alert_at is not None
    assert _check_at(later + LATER).resent == 0  # gone out: never again
    assert len(smtp.messages) == 1


def test_an_opening_is_not_sent_again_once_its_incident_s_end_went_out(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    """The SMTP server refused the opening and was back when the job recovered, so
    "healthy again (was Failing)" went out. The next check sent the stale "is Failing"
    again: the last word said failing, for a job that is healthy."""
    from django.utils import timezone

    smtp.refuse = True
    failing()
    _check(django_capture_on_commit_callbacks)  # failing: refused
    incident = JobMonitorIncident.objects.get()
    assert incident.open_alert_at is None
    smtp.refuse = False
    past_run(ago=timedelta(seconds=30))
    _check(django_capture_on_commit_callbacks)  # healthy again: sent
    incident.refresh_from_db()
    assert incident.resolve_alert_at is not None
    assert _subjects(smtp) == [
        "[jobstatus] tests.nightly is healthy again (was Failing)"
    ]

    assert _check_at(timezone.now() + LATER).resent == 0
    subjects = _subjects(smtp)
    assert subjects[-1] != "[jobstatus] tests.nightly is Failing", subjects
    assert len(subjects) == 1


def test_a_resolution_no_channel_took_is_sent_again_as_it_was(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    """Failing, then (the mail server down) failing again on another run, then healthy:
    the alerts sent again say what the first would have said."""
    from django.utils import timezone

    m = failing()
    _check(django_capture_on_commit_callbacks)
    smtp.refuse = True
    JobMonitor.objects.filter(pk=m.pk).update(
        max_failures=0, every=timedelta(seconds=1), grace=timedelta(0)
    )
    _check(django_capture_on_commit_callbacks)  # late (was failing): refused
    JobMonitor.objects.filter(pk=m.pk).update(every=None)
    past_run(ago=timedelta(seconds=1))
    _check(django_capture_on_commit_callbacks)  # healthy again: refused
    assert _subjects(smtp) == ["[jobstatus] tests.nightly is Failing"]
    smtp.refuse = False

    assert _check_at(timezone.now() + LATER).resent == 2
    assert sorted(_subjects(smtp)[1:]) == [
        "[jobstatus] tests.nightly is Late (was Failing)",
        "[jobstatus] tests.nightly is healthy again (was Late)",
    ]
    assert not JobMonitorIncident.objects.filter(open_alert_at__isnull=True).exists()
    assert not JobMonitorIncident.objects.filter(
        resolve_alert_at__isnull=True, resolve_alert_queued_at__isnull=False
    ).exists()


def test_the_end_of_an_incident_by_a_disable_is_sent_again_as_it_was(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    """Failing, then disabled (the mail server down), then enabled again and healthy: the
    end sent again says the monitor was disabled, as the first would have. It said
    "healthy again": the state it moved to was read from the monitor, which had moved on."""
    from django.utils import timezone

    m = failing()
    _check(django_capture_on_commit_callbacks)
    smtp.refuse = True
    JobMonitor.objects.filter(pk=m.pk).update(enabled=False)
    _check(django_capture_on_commit_callbacks)  # no longer monitored: refused
    past_run(ago=timedelta(seconds=1))
    JobMonitor.objects.filter(pk=m.pk).update(enabled=True)
    _check(django_capture_on_commit_callbacks)  # healthy, no incident: nothing to send
    assert JobMonitor.objects.get(pk=m.pk).state == MonitorState.HEALTHY
    smtp.refuse = False

    assert _check_at(timezone.now() + LATER).resent == 1
    assert _subjects(smtp)[1:] == [
        "[jobstatus] tests.nightly is no longer monitored (was Failing)"
    ]


def test_an_alert_is_not_sent_again_after_a_day(
    failing, hook, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[f"http://127.0.0.1:{_free_port()}/"])
    _check(django_capture_on_commit_callbacks)
    with override_settings(JOBSTATUS={"ALERT_WEBHOOKS": [hook.url]}):
        day = timezone.now() + health.ALERT_RETRY_FOR + timedelta(minutes=1)
        assert _check_at(day).resent == 0
        assert hook.bodies == []
        assert _check_at(timezone.now() + LATER).resent == 1
    assert [body["event"] for body in hook.bodies] == ["opened"]


def test_an_alert_a_check_took_over_is_not_sent_by_the_process_that_queued_it(
    failing, hook, django_capture_on_commit_callbacks
):
    """Its process got to it only after its claim ran out and a check had queued it again
    (in another process, say): it sees its claim changed, and leaves it to the check's."""
    from django.utils import timezone

    hold = threading.Event()
    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[hook.url])
    health.outbox.put(hold.wait, 10)  # the thread is busy while the check runs
    with django_capture_on_commit_callbacks(execute=True):
        health.check()
    incident = JobMonitorIncident.objects.get()
    claim = incident.open_alert_queued_at
    assert health.resend(now=timezone.now() + LATER) == 1

    # The first process's delivery, with the claim it had.
    alert = health._again(incident, "opened", "default")
    health._send(alert, health._targets(), incident.pk, claim, "default")
    assert hook.bodies == []
    assert JobMonitorIncident.objects.get().open_alert_at is None
    hold.set()
    assert health.outbox.join(10)  # the check's delivery
    assert [body["event"] for body in hook.bodies] == ["opened"]
    assert JobMonitorIncident.objects.get().open_alert_at is not None


def test_two_checks_at_once_send_an_alert_again_once(
    failing, hook, django_capture_on_commit_callbacks
):
    """Both read the alert as not sent; the second to stamp it queues nothing."""
    from django.db import connection, connections
    from django.utils import timezone

    failing(ALERT_EMAILS=[], ALERT_WEBHOOKS=[f"http://127.0.0.1:{_free_port()}/"])
    _check(django_capture_on_commit_callbacks)
    later = timezone.now() + LATER
    other: list[int] = []

    def other_check() -> None:
        try:
            other.append(health.resend(now=later))
        finally:
            connections.close_all()

    def meanwhile(execute: Any, sql: str, *args: Any) -> Any:
        if sql.startswith("UPDATE") and not other:
            # The other check runs whole between this one's read and its stamp.
            thread = threading.Thread(target=other_check)
            thread.start()
            thread.join(10)
        return execute(sql, *args)

    with override_settings(JOBSTATUS={"ALERT_WEBHOOKS": [hook.url]}):
        with connection.execute_wrapper(meanwhile):
            mine = health.resend(now=later)
        assert health.outbox.join(10)
    assert (mine, other) == (0, [1])
    assert [body["event"] for body in hook.bodies] == ["opened"]


def test_deleting_a_monitor_sends_the_end_of_an_incident_that_did_not_go_out(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    """The opening ("is Failing") went out; the job recovered while the mail server
    refused mail, so "healthy again (was Failing)" waited for a later check. The monitor
    was then deleted, its incidents with it: neither the delete nor a later check said
    anything, and the last word anyone got said Failing, for good. The delete now sends
    it, as it was."""
    from django.utils import timezone

    m = failing()
    _check(django_capture_on_commit_callbacks)
    assert _subjects(smtp) == ["[jobstatus] tests.nightly is Failing"]
    smtp.refuse = True
    past_run(ago=timedelta(seconds=30))  # healthy again: refused
    _check(django_capture_on_commit_callbacks)
    incident = JobMonitorIncident.objects.get()
    assert incident.resolve_alert_queued_at is not None
    assert incident.resolve_alert_at is None
    smtp.refuse = False

    with django_capture_on_commit_callbacks(execute=True):
        JobMonitor.objects.get(pk=m.pk).delete()
    assert health.outbox.join(10)
    _check_at(timezone.now() + LATER)  # past the claim: nothing is left to send
    _check_at(timezone.now() + 2 * LATER)
    subjects = _subjects(smtp)
    assert subjects[0] == "[jobstatus] tests.nightly is Failing"
    assert len(subjects) == 2, subjects
    assert subjects[1] == "[jobstatus] tests.nightly is healthy again (was Failing)"


def test_deleting_a_monitor_sends_the_end_of_an_incident_waiting_in_the_outbox_once(
    failing, smtp, past_run, django_capture_on_commit_callbacks
):
    """The job recovered and the check queued "healthy again (was Failing)" behind a busy
    health thread; the monitor was deleted meanwhile. The delete sent nothing (no
    incident was open), and the queued alert found its incident gone and was dropped
    without a word. The delete now takes it over: it goes out once."""
    m = failing()
    _check(django_capture_on_commit_callbacks)
    assert _subjects(smtp) == ["[jobstatus] tests.nightly is Failing"]

    busy = threading.Event()
    health.outbox.put(busy.wait, 10)  # the thread is busy with something else
    past_run(ago=timedelta(seconds=30))
    with django_capture_on_commit_callbacks(execute=True):
        health.check()  # healthy again: its alert is queued behind
    with django_capture_on_commit_callbacks(execute=True):
        JobMonitor.objects.get(pk=m.pk).delete()
    busy.set()
    assert health.outbox.join(10)
    subjects = _subjects(smtp)
    assert len(subjects) == 2, subjects
    assert subjects[1] == "[jobstatus] tests.nightly is healthy again (was Failing)"


def test_a_deleted_monitor_s_end_no_channel_took_is_logged_as_lost(
    failing, smtp, django_capture_on_commit_callbacks, caplog
):
    """Nothing records it once its incident is gone: the log says so, and does not
    promise that a check sends it again."""
    m = failing()
    _check(django_capture_on_commit_callbacks)
    smtp.refuse = True
    with caplog.at_level("WARNING", logger="django_jobstatus.health"):
        with django_capture_on_commit_callbacks(execute=True):
            m.delete()
        assert health.outbox.join(10)
    assert "its monitor was deleted, so it is not sent again" in caplog.text
    assert _subjects(smtp) == ["[jobstatus] tests.nightly is Failing"]


def test_a_slack_alert_shows_an_error_s_markup_as_text(
    monitor, past_run, settings, hook, django_capture_on_commit_callbacks
):
    """An exception's message often quotes user input (a form value, a file name). Slack
    reads ``<!channel>`` in a message's text as an @channel mention and ``<url|label>`` as
    a link: such an error pinged the whole channel and planted a disguised link, and a job
    named ``reports.<!here>`` did the same from the subject. Slack's ``&amp;``, ``&lt;`` and
    ``&gt;`` escapes make them text; the alert's own link stays a link."""
    settings.JOBSTATUS = {
        "ALERT_EMAILS": [],
        "ALERT_WEBHOOKS": [{"url": hook.url, "format": "slack"}],
        "ALERT_BASE_URL": "https://ops.example.com",
    }
    monitor(job_name="reports.<!here>", max_failures=1)
    past_run(
        job_name="reports.<!here>",
        ago=timedelta(minutes=2),
        status=Status.FAILED,
        error="ValueError: bad name '<!channel> <https://evil.example|reset>' & more",
    )
    _check(django_capture_on_commit_callbacks)
    assert hook.received.wait(10)
    text = hook.bodies[0]["text"]
    assert text.count("<") == text.count(">") == 1, text
    assert "reports.&lt;!here&gt;" in text, text
    assert "&lt;!channel&gt; &lt;https://evil.example|reset&gt;' &amp; more" in text
    assert " <https://ops.example.com/" in text, text
