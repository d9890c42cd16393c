"""The system checks of the JOBSTATUS setting: each id, with a message that names the key."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import types
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import override_settings

from django_jobstatus import health, track
from django_jobstatus.conf import BY_NAME, HEARTBEAT_TIMEOUT_MIN, SETTINGS, Setting
from django_jobstatus.models import JobRun, Status
from django_jobstatus.routers import JobStatusRouter

ROOT = Path(__file__).resolve().parents[1]

# run_checks() runs every check, and the model checks may ask the database its features.
# Django's own checks may read every database (the replica alias too, on Django 6.1).
pytestmark = pytest.mark.django_db(databases="__all__")


def _messages(jobstatus: Any) -> list[tuple[str, str]]:
    with override_settings(JOBSTATUS=jobstatus):
        return [
            (message.id, message.msg)
            for message in run_checks()
            if (message.id or "").startswith("jobstatus.")
        ]


def test_the_defaults_pass() -> None:
    assert _messages({}) == []


def test_a_full_valid_setting_passes() -> None:
    assert (
        _messages(
            {
                "PROGRESS_INTERVAL": 0.5,
                "HEARTBEAT_TIMEOUT": 60,
                "RETENTION_DAYS": 14,
                "RETENTION": {"failed": 90, "succeeded": 7},
                "KEEP_LAST": 0,
                "REDACT_KEYS": ("password",),
                "WORKER_NAME": "web-1",
                "DATABASE": "default",
                "INTEGRATIONS": ["django_jobstatus.contrib.logging"],
            }
        )
        == []
    )


def test_an_unknown_key_is_a_warning_with_the_nearest_name() -> None:
    with override_settings(JOBSTATUS={"PROGRES_INTERVAL": 1}):
        (message,) = [m for m in run_checks() if m.id == "jobstatus.W001"]
    assert "'PROGRES_INTERVAL'" in message.msg
    assert message.hint == "Did you mean 'PROGRESS_INTERVAL'?"


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("PROGRESS_INTERVAL", "1", "must be int or float, not str"),
        ("KEEP_LAST", 1.5, "must be int, not float"),
        ("KEEP_LAST", True, "must be int, not bool"),
        ("API_OWNER_SCOPED", 1, "must be bool, not int"),
        ("REDACT_KEYS", "password", "must be list or tuple or set or frozenset"),
        ("WORKER_NAME", 7, "must be str or None, not int"),
    ],
)
def test_a_wrong_type_is_e001_naming_the_key(key: str, value: Any, says: str) -> None:
    messages = _messages({key: value})
    assert [m[0] for m in messages] == ["jobstatus.E001"]
    assert repr(key) in messages[0][1]
    assert says in messages[0][1]


def test_a_jobstatus_that_is_not_a_dict_is_e001() -> None:
    assert _messages([("RETENTION_DAYS", 3)]) == [
        ("jobstatus.E001", "JOBSTATUS must be a dict, not list.")
    ]


@pytest.mark.parametrize(
    ("jobstatus", "fragment"),
    [
        ({"PROGRESS_INTERVAL": 0}, "'PROGRESS_INTERVAL'] must be greater than 0"),
        ({"HEARTBEAT_TIMEOUT": -5}, "'HEARTBEAT_TIMEOUT'] must be from 1 to"),
        # Workers never beat more often than every 0.1 s: a beat would come too late.
        ({"HEARTBEAT_TIMEOUT": 0.05}, "'HEARTBEAT_TIMEOUT'] must be from 1 to"),
        ({"LOG_MAX_LENGTH": 0}, "'LOG_MAX_LENGTH'] must be at least 100"),
        # The marker of a cut line takes up to 30 characters, as for the other limits.
        ({"LOG_MAX_LENGTH": 99}, "'LOG_MAX_LENGTH'] must be at least 100"),
        ({"KEEP_LAST": -1}, "'KEEP_LAST'] must be from 0 to 9223372036854775807"),
        # Past the largest number SQL takes (a purge's keep_last).
        ({"KEEP_LAST": 2**63}, "'KEEP_LAST'] must be from 0 to 9223372036854775807"),
        ({"MESSAGE_MAX_LENGTH": 50}, "'MESSAGE_MAX_LENGTH'] must be at least 100"),
        ({"ERROR_MAX_LENGTH": 0}, "'ERROR_MAX_LENGTH'] must be at least 100"),
        ({"TRACEBACK_MAX_LENGTH": -1}, "'TRACEBACK_MAX_LENGTH'] must be at least 100"),
        ({"JSON_MAX_LENGTH": 99}, "'JSON_MAX_LENGTH'] must be at least 100"),
        ({"DATABASE": "jobs"}, "'jobs', which is not in DATABASES"),
        ({"READ_DATABASE": "replica2"}, "'replica2', which is not in DATABASES"),
    ],
)
def test_a_bad_value_is_e003(jobstatus: dict[str, Any], fragment: str) -> None:
    messages = _messages(jobstatus)
    assert [m[0] for m in messages] == ["jobstatus.E003"]
    assert fragment in messages[0][1]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_shortest_heartbeat_timeout_never_marks_a_live_run_lost(
    settings: Any,
) -> None:
    """HEARTBEAT_TIMEOUT = 0.05 used to pass the checks, and the reaper, with its default
    timeout, marked a live run `lost` between two beats (they come every 0.1 s at most).
    The shortest value the checks take gives the beats the room they need."""
    assert _messages({"HEARTBEAT_TIMEOUT": 0.05})[0][0] == "jobstatus.E003"
    settings.JOBSTATUS = {
        **settings.JOBSTATUS,
        "HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT_MIN,
    }
    with track("tests.checks.alive") as job:
        deadline = time.monotonic() + 3 * HEARTBEAT_TIMEOUT_MIN
        while time.monotonic() < deadline:
            out = StringIO()
            call_command("reap_jobstatus", stdout=out)
            run = JobRun.objects.get(pk=job.run.pk)
            assert run.status == Status.RUNNING, (
                f"a live run was reaped as {run.status}: {out.getvalue()!r}"
            )
            time.sleep(0.01)


def _just_outside(declared: Setting) -> float:
    if declared.positive:
        return 0
    if declared.non_negative:
        return -1
    assert declared.minimum is not None
    return declared.minimum - 1


@pytest.mark.parametrize(
    "declared", [s for s in SETTINGS if s.bound], ids=lambda s: s.name
)
def test_every_declared_bound_is_checked_and_documented(declared: Setting) -> None:
    """The check and the settings reference both read the bound from the one declaration."""
    messages = _messages({declared.name: _just_outside(declared)})
    assert [m[0] for m in messages] == ["jobstatus.E003"]
    assert f"must be {declared.bound}," in messages[0][1]
    assert declared.bound.lower() in declared.description.lower()


@pytest.mark.parametrize(
    ("retention", "fragment"),
    [
        ({"running": 3}, "names 'running', which is not a finished status"),
        ({"failed": 0}, "['failed'] must be a whole number of days from 1 to 365000"),
        (
            {"failed": "90"},
            "['failed'] must be a whole number of days from 1 to 365000",
        ),
        # "Keep failed runs forever": past the 1000 years a purge takes (querysets.MAX_AGE).
        (
            {"failed": 1_000_000},
            "['failed'] must be a whole number of days from 1 to 365000",
        ),
    ],
)
def test_a_bad_retention_is_e004(retention: dict[str, Any], fragment: str) -> None:
    messages = _messages({"RETENTION": retention})
    assert [m[0] for m in messages] == ["jobstatus.E004"]
    assert fragment in messages[0][1]


def test_an_integration_that_cannot_be_imported_is_e005() -> None:
    messages = _messages({"INTEGRATIONS": ["django_jobstatus.contrib.nope"]})
    assert [m[0] for m in messages] == ["jobstatus.E005"]
    assert "'django_jobstatus.contrib.nope'" in messages[0][1]


def test_an_integration_without_connect_is_e005() -> None:
    """ready() calls the module's connect(): a module that has none cannot be enabled."""
    messages = _messages({"INTEGRATIONS": ["django_jobstatus.conf"]})
    assert [m[0] for m in messages] == ["jobstatus.E005"]
    assert "'django_jobstatus.conf'" in messages[0][1]


@pytest.mark.parametrize(
    "integrations",
    [[types], [None], [""], [".contrib.celery"]],
    ids=["module", "none", "blank", "relative"],
)
def test_an_integration_that_is_not_a_dotted_path_is_e005(integrations) -> None:
    messages = _messages({"INTEGRATIONS": integrations})
    assert [m[0] for m in messages] == ["jobstatus.E005"]
    assert "JOBSTATUS['INTEGRATIONS'] lists" in messages[0][1]


def _manage_check(
    tmp_path: Path, jobstatus: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a process of its own, started with ``jobstatus``."""
    (tmp_path / "check_settings.py").write_text(
        textwrap.dedent(
            f"""
            from tests.settings import *  # noqa: F403
            DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
            JOBSTATUS = {jobstatus!r}
            """
        )
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "check_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "integrations",
    ["django_jobstatus.contrib.tasks", [None], [".contrib.celery"]],
    ids=["string", "none", "relative"],
)
def test_a_malformed_integrations_setting_is_reported_by_the_checks_not_a_crash(
    tmp_path: Path, integrations: Any
) -> None:
    """ready() imported each item's connect() before any check ran: `manage.py check` died
    with `ModuleNotFoundError: No module named 'd'` (or 'None'), naming neither JOBSTATUS
    nor INTEGRATIONS. It leaves such a value to the checks (E001, E005)."""
    done = _manage_check(tmp_path, {"INTEGRATIONS": integrations})
    output = done.stdout + done.stderr
    assert "ModuleNotFoundError" not in output, output[-1500:]
    assert "Traceback" not in output, output[-1500:]
    assert "JOBSTATUS['INTEGRATIONS']" in output, output[-1500:]
    assert "jobstatus.E001" in output or "jobstatus.E005" in output, output[-1500:]


@pytest.mark.parametrize(
    "jobstatus",
    [
        {"INTEGRATIONS": "django_jobstatus.contrib.logging"},
        {"INTEGRATIONS": 5},
        {"API_PERMISSION_CLASSES": "django.test.TestCase"},
        {"API_PERMISSION_CLASSES": 5},
    ],
)
def test_a_list_setting_that_is_not_a_list_is_e001_alone(jobstatus) -> None:
    """Not an E005 per character of a string, nor a crash on a number."""
    assert [m[0] for m in _messages(jobstatus)] == ["jobstatus.E001"]


class _AllowAll:
    def has_permission(self, request: Any, view: Any) -> bool:
        return True


def test_classes_instead_of_import_strings_pass() -> None:
    """conf passes a class through as it is, and DRF takes it."""
    assert (
        _messages(
            {
                "API_PERMISSION_CLASSES": [_AllowAll],
                "API_AUTHENTICATION_CLASSES": (_AllowAll,),
            }
        )
        == []
    )


@pytest.mark.parametrize("item", [5, None, ["django.test.TestCase"]])
def test_an_item_that_is_neither_an_import_string_nor_a_class_is_e005(item) -> None:
    messages = _messages({"API_PERMISSION_CLASSES": [item]})
    assert [m[0] for m in messages] == ["jobstatus.E005"]
    assert "'API_PERMISSION_CLASSES'" in messages[0][1]
    assert "neither an import string nor a class" in messages[0][1]


def test_a_permission_class_that_cannot_be_imported_is_e005() -> None:
    messages = _messages({"API_PERMISSION_CLASSES": ["nowhere.Permission"]})
    assert [m[0] for m in messages] == ["jobstatus.E005"]
    assert "API_PERMISSION_CLASSES" in messages[0][1]


def test_valid_alert_and_metrics_settings_pass() -> None:
    assert (
        _messages(
            {
                "ALERT_EMAILS": ["ops@example.com"],
                "ALERT_WEBHOOKS": [
                    "https://hooks.example.com/x",
                    {
                        "url": "http://127.0.0.1:9/",
                        "format": "slack",
                        "headers": {"X-Token": "t"},
                    },
                    {
                        "url": "https://hooks.example.com:8443/a%20b?team=ops",
                        "headers": {
                            "Authorization": "Bearer a.b-c",
                            "X-Name": "Zoë\tx",
                        },
                    },
                ],
                "ALERT_BASE_URL": "https://ops.example.com",
                "ALERT_RATE_LIMIT": 10,
                "ALERT_TIMEOUT": 2.5,
                "METRICS_BEARER_TOKEN": "a-long-random-scraper-token",
                "METRICS_WINDOW": 600,
                "MONITOR_CACHE_TIMEOUT": 30,
                "MONITOR_DURATION_SAMPLE": 50,
            }
        )
        == []
    )


@pytest.mark.parametrize(
    ("jobstatus", "message"),
    [
        ({"ALERT_EMAILS": ["not an address"]}, ("jobstatus.E006", "'not an address'")),
        ({"ALERT_WEBHOOKS": ["ftp://x"]}, ("jobstatus.E006", "[0] has 'ftp://x'")),
        (
            {"ALERT_WEBHOOKS": [{"url": "https://x", "format": "teams"}]},
            ("jobstatus.E006", "format 'teams'"),
        ),
        (
            {"ALERT_WEBHOOKS": [{"url": "https://x", "secret": 1}]},
            ("jobstatus.E006", "unknown keys ['secret']"),
        ),
        ({"ALERT_BASE_URL": "ops.example.com"}, ("jobstatus.E006", "ALERT_BASE_URL")),
        ({"METRICS_BEARER_TOKEN": "short"}, ("jobstatus.E006", "16 characters")),
        # A scraper's token travels in a header: a character that is not ASCII is decoded
        # the server's way, and the server strips a space at the end.
        (
            {"METRICS_BEARER_TOKEN": "geheimnis-schlüssel-0123456789"},
            ("jobstatus.E006", "cannot send as they are"),
        ),
        (
            {"METRICS_BEARER_TOKEN": "scraper-token-0123456789 "},
            ("jobstatus.E006", "cannot send as they are"),
        ),
        ({"METRICS_BEARER_TOKEN": "scraper+token/0123456789=="}, None),
        # Visible ASCII is sent as it is (a review found the RFC 6750 shape refused
        # Django's get_random_secret_key(): an upgrade stopped runserver).
        ({"METRICS_BEARER_TOKEN": "k3v!x9@q#z$w%e^r&t*y(u-i_o=p+)a1s2d3f4g5"}, None),
        (
            {"ALERT_WEBHOOKS": ["https://user:secret@hooks.example.com/x"]},
            ("jobstatus.E006", "credentials"),
        ),
        ({"ALERT_TIMEOUT": 0}, ("jobstatus.E003", "ALERT_TIMEOUT")),
        ({"ALERT_RATE_LIMIT": -1}, ("jobstatus.E003", "ALERT_RATE_LIMIT")),
        ({"METRICS_WINDOW": 0}, ("jobstatus.E003", "METRICS_WINDOW")),
        ({"MONITOR_DURATION_SAMPLE": 0}, ("jobstatus.E003", "MONITOR_DURATION_SAMPLE")),
        # Past the largest number SQL takes: health reads one run more (a LIMIT).
        (
            {"MONITOR_DURATION_SAMPLE": 2**63 - 1},
            ("jobstatus.E003", "must be from 1 to 9223372036854775806"),
        ),
        ({"ALERT_EMAILS": "ops@example.com"}, ("jobstatus.E001", "ALERT_EMAILS")),
        # send_mail() could not deliver to these: each alert email would fail when sent.
        (
            {"ALERT_EMAILS": ["a@example.com, b@example.com"]},
            ("jobstatus.E006", "'a@example.com, b@example.com'"),
        ),
        ({"ALERT_EMAILS": ["Ops <>"]}, ("jobstatus.E006", "'Ops <>'")),
        ({"ALERT_EMAILS": [""]}, ("jobstatus.E006", "has ''")),
        ({"ALERT_EMAILS": ["ops@example.com,"]}, ("jobstatus.E006", "example.com,'")),
        ({"ALERT_EMAILS": ["Ops: a@example.com;"]}, ("jobstatus.E006", "Ops: ")),
        ({"ALERT_EMAILS": ["Ops\n<ops@example.com>"]}, ("jobstatus.E006", "Ops\\n")),
        ({"ALERT_EMAILS": [("Ops", "ops@example.com")]}, ("jobstatus.E006", "('Ops'")),
        ({"ALERT_EMAILS": ['"Doe, Jo" <jo@example.com>']}, None),
    ],
)
def test_bad_alert_and_metrics_settings(jobstatus, message) -> None:
    if message is None:
        assert _messages(jobstatus) == []
        return
    (found,) = _messages(jobstatus)
    assert found[0] == message[0]
    assert message[1] in found[1]


def test_an_alert_address_with_a_display_name_is_accepted(mailoutbox) -> None:
    """ALERT_EMAILS go to send_mail(), which takes "Name <address>" as Django's own
    ADMINS do; validate_email() on the whole item refused it with E006, an Error that
    stops runserver and migrate."""
    from django.core.mail import send_mail

    address = "Ops Team <ops@example.com>"
    send_mail("subject", "body", None, [address])  # what health's alerts call
    assert mailoutbox[-1].to == [address]
    assert _messages({"ALERT_EMAILS": [address]}) == []


UNSENDABLE_WEBHOOKS = [
    (
        {"url": "https://hooks.example.com/x", "headers": {"Authorization": None}},
        "header 'Authorization' set to None, which is not a string",
    ),
    (
        {
            "url": "https://hooks.example.com/x",
            "headers": {"Authorization": "Bearer tök€n"},
        },
        "header 'Authorization' set to 'Bearer tök€n', which has characters that are not latin-1",
    ),
    (
        {"url": "https://hooks.example.com/x", "headers": {"X-Team": "ops\nX-Evil: 1"}},
        "header 'X-Team' set to 'ops\\nX-Evil: 1', which has a line break",
    ),
    (
        {"url": "https://hooks.example.com/x", "headers": {1: "a"}},
        "header name 1, which is not an HTTP token",
    ),
    (
        {"url": "https://hooks.example.com/x", "headers": {"X-Tags": {"a": 1}}},
        "header 'X-Tags' set to {'a': 1}, which is not a string",
    ),
    ("https://", "has 'https://', which names no host"),
    ("https://hooks example.com/x", "which has a space or a control character"),
    ("https://hooks.example.com/a b", "which has a space or a control character"),
    ("https://hooks.example.com:port/x", "which is not a valid URL"),
    ("https://hooks.example.com/ü", "whose path or query is not ASCII"),
]


@pytest.mark.parametrize(
    ("hook", "fragment"), UNSENDABLE_WEBHOOKS, ids=range(len(UNSENDABLE_WEBHOOKS))
)
def test_a_webhook_that_can_never_be_sent_is_e006(hook: Any, fragment: str) -> None:
    """The checks held a webhook to its keys, format, a dict of headers and an http(s)
    scheme, but not to its header names and values nor to its URL's host: every alert to
    such a hook raised in health._deliver (TypeError, UnicodeEncodeError, ValueError,
    URLError 'no host given', InvalidURL…), was logged and queued again at each check, and
    never reached anyone."""
    jobstatus = {"ALERT_WEBHOOKS": [hook]}
    messages = _messages(jobstatus)
    assert [m[0] for m in messages] == ["jobstatus.E006"]
    assert "JOBSTATUS['ALERT_WEBHOOKS'][0] " in messages[0][1]
    assert fragment in messages[0][1]
    # What the check refuses does fail in _deliver, while the request is being built.
    alert = mock.Mock(payload=dict, slack_payload=dict)
    reached = AssertionError("reached the network")
    with (
        override_settings(JOBSTATUS=jobstatus),
        mock.patch("socket.create_connection", side_effect=reached),
        pytest.raises(Exception) as raised,  # each fails its own way
    ):
        health._deliver(health._targets()[0], alert)
    assert raised.value is not reached


@pytest.mark.parametrize(
    ("hook", "fragment"),
    [
        # urllib sends it; a server answers 400.
        (
            {"url": "https://hooks.example.com/x", "headers": {"X Team": "a"}},
            "header name 'X Team', which is not an HTTP token",
        ),
        # urllib sends it to this machine.
        ("https://:8443/x", "has 'https://:8443/x', which names no host"),
    ],
)
def test_a_webhook_that_would_reach_nobody_is_e006(hook: Any, fragment: str) -> None:
    messages = _messages({"ALERT_WEBHOOKS": [hook]})
    assert [m[0] for m in messages] == ["jobstatus.E006"]
    assert fragment in messages[0][1]


@pytest.mark.parametrize(
    "declared", [s for s in SETTINGS if float in s.types], ids=lambda s: s.name
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_number_that_is_not_finite_is_e003(declared: Setting, value: float) -> None:
    """NaN is neither above nor below a bound: it is refused on its own."""
    messages = _messages({declared.name: value})
    assert [m[0] for m in messages] == ["jobstatus.E003"]
    assert (
        f"JOBSTATUS[{declared.name!r}] must be {declared.bound}, not" in messages[0][1]
    )


# Seconds and days become ages of at most 1000 years (querysets.MAX_AGE); a seconds
# setting that a thread or a socket waits on is held to what they can wait.
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HEARTBEAT_TIMEOUT", 10**11),
        ("QUEUED_TIMEOUT", 10**11),
        ("METRICS_WINDOW", 10**12),
        ("PROGRESS_INTERVAL", 10**11),
        ("MONITOR_CACHE_TIMEOUT", 10**11),
        ("FINISH_RETRY_TIMEOUT", 10**11),
        ("ALERT_TIMEOUT", 10**11),
        ("RETENTION_DAYS", 1_000_000),
        ("API_PAGE_SIZE", 10**20),
        ("API_MAX_PAGE_SIZE", 10**20),
    ],
)
def test_a_number_past_what_the_app_can_use_is_e003(key: str, value: int) -> None:
    messages = _messages({key: value})
    assert [m[0] for m in messages] == ["jobstatus.E003"]
    assert f"JOBSTATUS[{key!r}] must be " in messages[0][1]
    assert f" to {BY_NAME[key].maximum}, not" in messages[0][1] or (
        f"at most {BY_NAME[key].maximum}, not" in messages[0][1]
    )


@pytest.mark.parametrize(
    "declared", [s for s in SETTINGS if s.maximum is not None], ids=lambda s: s.name
)
def test_every_declared_maximum_is_checked(declared: Setting) -> None:
    assert declared.maximum is not None
    assert _messages({declared.name: declared.maximum}) == []
    (message,) = _messages({declared.name: declared.maximum + 1})
    assert message[0] == "jobstatus.E003"
    assert f"must be {declared.bound}, not" in message[1]


def _largest() -> dict[str, Any]:
    """Every number setting at the largest value the checks let through."""
    return {
        **{s.name: s.maximum for s in SETTINGS if s.maximum is not None},
        "RETENTION": {"failed": BY_NAME["RETENTION_DAYS"].maximum},
    }


def test_the_largest_values_pass_the_checks() -> None:
    assert _messages(_largest()) == []


@pytest.mark.django_db  # default only: with every alias, SQLite reports the table locked at teardown
def test_the_largest_monitor_duration_sample_works_for_a_p95_monitor(
    past_run, monitor
) -> None:
    """Health reads MONITOR_DURATION_SAMPLE + 1 runs (the judged one is left out): at
    BIGINT_MAX that LIMIT was past what either database takes, and every check of a
    monitor with max_duration_p95_factor raised (SQLite: "datatype mismatch",
    PostgreSQL: bigint out of range)."""
    largest = BY_NAME["MONITOR_DURATION_SAMPLE"].maximum
    jobstatus = {"MONITOR_DURATION_SAMPLE": largest}
    assert _messages(jobstatus) == []
    for _ in range(3):
        past_run("tests.nightly", took=timedelta(seconds=5))
    JobRun.objects.start("tests.nightly")
    monitor("tests.nightly", max_duration_p95_factor=3)
    with override_settings(JOBSTATUS=jobstatus):
        result = health.check()
    assert "tests.nightly" in result.assessments


@pytest.mark.django_db  # the default database only: no run_checks() here
def test_the_pages_work_with_the_largest_values_the_checks_pass(
    admin_client, make_run
) -> None:
    """What the checks let through does not make a page, the API or the purge a 500."""
    make_run()
    pages = [
        "/admin/django_jobstatus/jobrun/dashboard/",
        "/admin/django_jobstatus/jobrun/workers/",
        "/admin/django_jobstatus/jobrun/dashboard/purge/",
        "/admin/django_jobstatus/jobrun/",
    ]
    try:
        import rest_framework  # noqa: F401

        pages += ["/api/jobstatus/runs/", "/api/jobstatus/runs/stats/"]
        import prometheus_client  # noqa: F401

        pages += ["/api/jobstatus/metrics/"]
    except ImportError:
        pass
    with override_settings(JOBSTATUS=_largest()):
        assert {
            page: admin_client.get(page).status_code for page in pages
        } == dict.fromkeys(pages, 200)
        call_command("purge_jobstatus", "--dry-run", stdout=None)
        call_command("reap_jobstatus", "--dry-run", stdout=None)


@pytest.mark.parametrize(
    ("jobstatus", "routers", "warned"),
    [
        ({"DATABASE": "replica"}, [], True),
        ({"READ_DATABASE": "replica"}, [], True),
        ({"DATABASE": "default", "READ_DATABASE": None}, [], False),
        ({"DATABASE": "replica"}, ["django_jobstatus.routers.JobStatusRouter"], False),
        ({"READ_DATABASE": "replica"}, [JobStatusRouter()], False),
        ({"DATABASE": "replica"}, ["tests.test_checks._OwnRouter"], False),
        ({"DATABASE": "replica"}, ["tests.test_checks._OtherRouter"], True),
        # A router that answers for every model ahead of it: Django takes its answer.
        (
            {"DATABASE": "replica"},
            [
                "tests.test_checks._CatchAllRouter",
                "django_jobstatus.routers.JobStatusRouter",
            ],
            True,
        ),
        (
            {"READ_DATABASE": "replica"},
            [
                "django_jobstatus.routers.JobStatusRouter",
                "tests.test_checks._CatchAllRouter",
            ],
            False,
        ),
    ],
)
def test_a_database_of_its_own_without_the_router_is_w002(
    jobstatus, routers, warned
) -> None:
    with override_settings(DATABASE_ROUTERS=routers):
        messages = _messages(jobstatus)
    if not warned:
        assert messages == []
        return
    assert [m[0] for m in messages] == ["jobstatus.W002"]
    assert "DATABASE_ROUTERS" in messages[0][1]


def test_w002_names_the_router_in_its_hint() -> None:
    with override_settings(DATABASE_ROUTERS=[], JOBSTATUS={"DATABASE": "replica"}):
        (message,) = [m for m in run_checks() if m.id == "jobstatus.W002"]
    assert "'django_jobstatus.routers.JobStatusRouter'" in message.hint


class _OwnRouter(JobStatusRouter):
    pass


class _OtherRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return None


def test_a_worker_name_longer_than_its_column_is_w003() -> None:
    assert _messages({"WORKER_NAME": "w" * 255}) == []
    messages = _messages({"WORKER_NAME": "w" * 300})
    assert [m[0] for m in messages] == ["jobstatus.W003"]
    assert "'WORKER_NAME'" in messages[0][1]
    assert "300 characters" in messages[0][1]
    assert "255" in messages[0][1]


def test_use_tz_false_is_e007() -> None:
    with override_settings(USE_TZ=False):
        assert _messages({}) == [
            ("jobstatus.E007", "django-jobstatus needs USE_TZ = True.")
        ]


class _CatchAllRouter:
    """A project-wide primary/replica router (Django's docs' example): every model to default."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "default"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"
