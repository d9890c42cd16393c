"""``django_jobstatus.conf.settings``: JOBSTATUS merged over the defaults, reloaded on change."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_jobstatus.conf import DEFAULTS, TYPES, settings

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
