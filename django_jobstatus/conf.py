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
    # Prefix of the admin links in alerts, e.g. "https://ops.example.com"; None: paths only.
    "ALERT_BASE_URL": None,
    # Addresses that get an email when a monitor's incident opens or resolves.
    "ALERT_EMAILS": [],
    # Most alerts (email and webhooks together) one monitor sends in an hour; more are logged.
    "ALERT_RATE_LIMIT": 6,
    # Seconds an alert's webhook may take (to connect, and for each read).
    "ALERT_TIMEOUT": 5.0,
    # Webhooks for the same alerts: URLs (JSON), or {"url": ..., "format": "slack", "headers": {...}}.
    "ALERT_WEBHOOKS": [],
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
    # A token that also opens the API's metrics/ (Authorization: Bearer <token>); None: none.
    "METRICS_BEARER_TOKEN": None,
    # Seconds of runs the metrics count and time by job (runs created within the window).
    "METRICS_WINDOW": 3600,
    # Seconds a process keeps the set of monitored job names before it reads it again.
    "MONITOR_CACHE_TIMEOUT": 60,
    # Newest successful runs whose p95 duration a monitor's max_duration_p95_factor multiplies.
    "MONITOR_DURATION_SAMPLE": 100,
    # Seconds between two progress/heartbeat/log writes (and kill checks) of a running job.
    "PROGRESS_INTERVAL": 1.0,
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
    "ALERT_BASE_URL": (str, type(None)),
    "ALERT_EMAILS": (list, tuple),
    "ALERT_RATE_LIMIT": (int,),
    "ALERT_TIMEOUT": (int, float),
    "ALERT_WEBHOOKS": (list, tuple),
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
    "METRICS_BEARER_TOKEN": (str, type(None)),
    "METRICS_WINDOW": (int, float),
    "MONITOR_CACHE_TIMEOUT": (int, float),
    "MONITOR_DURATION_SAMPLE": (int,),
    "PROGRESS_INTERVAL": (int, float),
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
