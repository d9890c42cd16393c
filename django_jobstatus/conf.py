"""The app's settings: ``settings.JOBSTATUS`` merged over ``DEFAULTS``.

Code reads ``from django_jobstatus.conf import settings`` and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Extra DRF authentication classes for the API (import strings); None: DRF's defaults.
    "API_AUTHENTICATION_CLASSES": None,
    # Largest page a client may ask for with ?page_size=.
    "API_MAX_PAGE_SIZE": 500,
    # When True, users who are not staff see and kill only the runs they own.
    "API_OWNER_SCOPED": False,
    # Page size of the API's lists when the client does not ask.
    "API_PAGE_SIZE": 50,
    # Who may use the API (import strings of DRF permission classes).
    "API_PERMISSION_CLASSES": ["django_jobstatus.api.permissions.JobRunPermission"],
    # Database alias the app writes to; tracking opens a second connection to it
    # while the job's own connection is inside transaction.atomic() (not on SQLite).
    "DATABASE": "default",
    # Seconds track() keeps retrying to record a run's end while the database is away.
    "FINISH_RETRY_TIMEOUT": 30.0,
    # Seconds without a heartbeat after which a running run counts as stale (and is reaped).
    "HEARTBEAT_TIMEOUT": 300,
    # Dotted paths of the integrations to switch on (django_jobstatus.contrib.*).
    "INTEGRATIONS": [],
    # The newest N runs of every job survive the purge whatever their age.
    "KEEP_LAST": 1,
    # Longest log message kept, in characters; longer ones are cut with a marker.
    "LOG_MAX_LENGTH": 10000,
    # Seconds between two progress/heartbeat/log writes (and kill checks) of a running job.
    "PROGRESS_INTERVAL": 1.0,
    # Database alias the admin, the API and the dashboard read from (a replica), through
    # django_jobstatus.routers.JobStatusRouter; None: DATABASE. Writes always go to DATABASE.
    "READ_DATABASE": None,
    # Keys in params/data/result shown as "********" in the admin and the API, at any depth.
    "REDACT_KEYS": ["password", "secret", "token", "api_key", "authorization"],
    # Days to keep finished runs per status, over RETENTION_DAYS.
    "RETENTION": {"failed": 90},
    # Days to keep finished runs.
    "RETENTION_DAYS": 30,
    # The `worker` recorded for runs started in this process; None: "host:pid".
    "WORKER_NAME": None,
}

# Settings that hold import strings (or lists of them), resolved on first access.
IMPORT_STRINGS: tuple[str, ...] = (
    "API_AUTHENTICATION_CLASSES",
    "API_PERMISSION_CLASSES",
)

# The types each setting must have, checked by jobstatus.E001.
TYPES: dict[str, tuple[type, ...]] = {
    "API_AUTHENTICATION_CLASSES": (list, tuple, type(None)),
    "API_MAX_PAGE_SIZE": (int,),
    "API_OWNER_SCOPED": (bool,),
    "API_PAGE_SIZE": (int,),
    "API_PERMISSION_CLASSES": (list, tuple),
    "DATABASE": (str,),
    "FINISH_RETRY_TIMEOUT": (int, float),
    "HEARTBEAT_TIMEOUT": (int, float),
    "INTEGRATIONS": (list, tuple),
    "KEEP_LAST": (int,),
    "LOG_MAX_LENGTH": (int,),
    "PROGRESS_INTERVAL": (int, float),
    "READ_DATABASE": (str, type(None)),
    "REDACT_KEYS": (list, tuple, set, frozenset),
    "RETENTION": (dict,),
    "RETENTION_DAYS": (int,),
    "WORKER_NAME": (str, type(None)),
}

# Settings that existed once, with what to do instead.
REMOVED_SETTINGS: dict[str, str] = {}


def _import(value: Any) -> Any:
    if isinstance(value, str):
        return import_string(value)
    if isinstance(value, list | tuple):
        return [_import(item) for item in value]
    return value


class Settings:
    """Attribute access to the merged settings, cached until ``JOBSTATUS`` changes."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        """``settings.JOBSTATUS``; ``{}`` when it is unset or not a dict (check E001 says so)."""
        value = getattr(django_settings, "JOBSTATUS", None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid JOBSTATUS setting: {name!r}")
        if name not in self._cache:
            value = self.user_settings.get(name, DEFAULTS[name])
            if name in IMPORT_STRINGS:
                value = _import(value)
            self._cache[name] = value
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()


settings = Settings()


@receiver(setting_changed)
def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "JOBSTATUS":
        settings.reload()
