"""``django_jobstatus.conf.settings``: JOBSTATUS merged over the defaults, reloaded on change."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
from django.test import override_settings

from django_jobstatus import conf
from django_jobstatus.conf import BY_NAME, DEFAULTS, TYPES, settings

pytestmark = pytest.mark.engine_agnostic


def test_every_default_has_a_type_and_matches_it() -> None:
    assert set(TYPES) == set(DEFAULTS)
    for key, value in DEFAULTS.items():
        assert isinstance(value, TYPES[key]), key


def test_a_key_left_out_reads_its_default() -> None:
    with override_settings(JOBSTATUS={"RETENTION_DAYS": 7}):
        assert settings.RETENTION_DAYS == 7
        assert DEFAULTS["KEEP_LAST"] == settings.KEEP_LAST
        assert DEFAULTS["PROGRESS_INTERVAL"] == settings.PROGRESS_INTERVAL


def test_a_change_of_the_setting_is_seen_at_once() -> None:
    with override_settings(JOBSTATUS={"PROGRESS_INTERVAL": 0.25}):
        assert settings.PROGRESS_INTERVAL == 0.25
        with override_settings(JOBSTATUS={"PROGRESS_INTERVAL": 2}):
            assert settings.PROGRESS_INTERVAL == 2
        assert settings.PROGRESS_INTERVAL == 0.25


def test_no_setting_at_all_reads_the_defaults() -> None:
    with override_settings():
        from django.conf import settings as django_settings

        del django_settings.JOBSTATUS
        settings.reload()
        assert DEFAULTS["HEARTBEAT_TIMEOUT"] == settings.HEARTBEAT_TIMEOUT
    settings.reload()


def test_import_strings_are_resolved_to_classes() -> None:
    with override_settings(
        JOBSTATUS={"API_PERMISSION_CLASSES": ["django.test.TestCase"]}
    ):
        from django.test import TestCase

        assert [TestCase] == settings.API_PERMISSION_CLASSES


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="PROGRES_INTERVAL"):
        _ = settings.PROGRES_INTERVAL


def test_a_jobstatus_that_is_not_a_dict_reads_the_defaults() -> None:
    with override_settings(JOBSTATUS=["RETENTION_DAYS", 3]):
        assert DEFAULTS["RETENTION_DAYS"] == settings.RETENTION_DAYS


def test_the_longest_age_is_the_one_of_the_queries() -> None:
    """conf cannot import querysets (a cycle): its copy of MAX_AGE stays in step."""
    from django_jobstatus.querysets import MAX_AGE

    assert timedelta(days=conf.MAX_AGE_DAYS) == MAX_AGE
    assert timedelta(seconds=conf.MAX_AGE_SECONDS) == MAX_AGE


def test_the_worker_name_length_is_the_one_of_its_column() -> None:
    from django_jobstatus.values import MAX_LENGTHS

    assert BY_NAME["WORKER_NAME"].max_length == MAX_LENGTHS["worker"]


def test_the_longest_heartbeat_timeout_is_a_wait_a_thread_can_make() -> None:
    """The heartbeat thread waits a third of HEARTBEAT_TIMEOUT (heartbeats.interval())."""
    from django_jobstatus import heartbeats

    largest = BY_NAME["HEARTBEAT_TIMEOUT"].maximum
    with override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": largest}):
        assert heartbeats.interval() <= threading.TIMEOUT_MAX
    lock = threading.Lock()
    assert lock.acquire(timeout=heartbeats.interval())  # free: no wait, but no overflow
    lock.release()


def test_the_shortest_heartbeat_timeout_leaves_room_for_three_beats() -> None:
    """Workers beat every third of HEARTBEAT_TIMEOUT, never more often than MIN_INTERVAL:
    a shorter timeout passes between two beats, and the reaper marks live runs lost."""
    from django_jobstatus import heartbeats

    assert BY_NAME["HEARTBEAT_TIMEOUT"].minimum == conf.HEARTBEAT_TIMEOUT_MIN
    assert conf.HEARTBEAT_TIMEOUT_MIN >= 3 * heartbeats.MIN_INTERVAL
    with override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": conf.HEARTBEAT_TIMEOUT_MIN}):
        assert heartbeats.interval() * 3 <= conf.HEARTBEAT_TIMEOUT_MIN


def test_the_longest_alert_timeout_is_one_a_socket_and_a_thread_can_wait() -> None:
    """A webhook's socket waits ALERT_TIMEOUT; the end of a process waits it once per
    target and once more (health.finish())."""
    largest = BY_NAME["ALERT_TIMEOUT"].maximum
    assert largest is not None
    with socket.socket() as sock:
        sock.settimeout(largest)
    assert largest * 1001 <= threading.TIMEOUT_MAX


@pytest.mark.parametrize(
    "name", [s.name for s in conf.SETTINGS if s.maximum is not None]
)
def test_a_maximum_is_a_whole_number(name: str) -> None:
    assert isinstance(BY_NAME[name].maximum, int)
