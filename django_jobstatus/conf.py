"""The app's settings: ``settings.JOBSTATUS`` merged over ``DEFAULTS``.

Code reads ``from django_jobstatus.conf import settings`` and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string


@dataclasses.dataclass(frozen=True)
class Setting:
    """One key of ``JOBSTATUS``: its default, the types it may have, its bounds and what it does.

    Declared once here; ``DEFAULTS``, ``TYPES`` and ``IMPORT_STRINGS``, the system checks and
    the settings reference in the docs are all derived from it.
    """

    name: str
    default: Any
    types: tuple[type, ...]
    help: str
    positive: bool = False  # a number that must be greater than 0 (jobstatus.E003)
    non_negative: bool = False  # a number that must be 0 or more (jobstatus.E003)
    minimum: int | None = None  # a number that must be at least this (jobstatus.E003)
    maximum: int | None = None  # a number that must be at most this (jobstatus.E003)
    min_length: int | None = None  # a string that must be at least this long (E006)
    max_length: int | None = None  # a string cut to this where it is stored (W003)
    database: bool = False  # an alias in DATABASES (jobstatus.E003)
    import_strings: bool = False  # import strings, resolved on first access

    @property
    def bound(self) -> str | None:
        """What a number given must be ("greater than 0"…), or None when any will do."""
        whole = float not in self.types
        if self.maximum is not None:
            if self.positive and not whole:
                return f"greater than 0 and at most {self.maximum}"
            low = 1 if self.positive else 0 if self.non_negative else self.minimum
            return (
                f"at most {self.maximum}"
                if low is None
                else f"from {low} to {self.maximum}"
            )
        if self.positive:
            return "greater than 0"
        if self.non_negative:
            return "0 or more"
        if self.minimum is not None:
            return f"at least {self.minimum}"
        return None

    def breaks_bound(self, value: float) -> bool:
        """Whether the number ``value`` is outside ``bound`` (NaN and infinities always are)."""
        if self.bound is None:
            return False
        return (
            (isinstance(value, float) and not math.isfinite(value))
            or (self.positive and value <= 0)
            or (self.non_negative and value < 0)
            or (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
        )

    @property
    def description(self) -> str:
        """``help`` with the bounds the checks hold it to: the settings reference's text."""
        rules = []
        if self.bound is not None:
            rules.append(f"{self.bound[0].upper()}{self.bound[1:]}.")
        if self.min_length is not None:
            rules.append(f"At least {self.min_length} characters.")
        if self.max_length is not None:
            rules.append(f"At most {self.max_length} characters are kept.")
        if self.database:
            rules.append("One of the aliases in `DATABASES`.")
        return " ".join([self.help, *rules])


_NONE = type(None)

# The largest value a PositiveBigIntegerField stores (declared here, before any setting's
# bound; ``django_jobstatus.values`` exports it with the other limits).
BIGINT_MAX = 2**63 - 1

# The longest age the app's queries take: ``querysets.MAX_AGE`` (1000 years), which conf
# cannot import (querysets reads these settings). The bound of every setting in days, and
# of the seconds that only become an age (a cutoff, a window, a deadline).
MAX_AGE_DAYS = 365 * 1000
MAX_AGE_SECONDS = MAX_AGE_DAYS * 24 * 60 * 60
# HEARTBEAT_TIMEOUT is an age too, but the heartbeat thread waits a third of it, and a
# thread waits at most ``threading.TIMEOUT_MAX`` (about 292 years): a tenth of MAX_AGE.
HEARTBEAT_TIMEOUT_MAX = MAX_AGE_SECONDS // 10
# The heartbeat thread beats every third of HEARTBEAT_TIMEOUT, but never more often than
# ``heartbeats.MIN_INTERVAL`` (0.1 s, which conf cannot import: heartbeats reads these
# settings): a shorter timeout would pass between two beats and mark live runs lost.
HEARTBEAT_TIMEOUT_MIN = 1
# A webhook's socket waits ALERT_TIMEOUT, a process's end waits it once per alert target
# and once more, and an alert's claim lasts as long: an hour keeps each of these small.
ALERT_TIMEOUT_MAX = 60 * 60

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ALERT_BASE_URL",
        None,
        (str, _NONE),
        'Prefix of the admin links in alerts, e.g. `"https://ops.example.com"`; `None` sends paths only.',
    ),
    Setting(
        "ALERT_EMAILS",
        [],
        (list, tuple),
        'Addresses that get an email when a monitor\'s incident opens or resolves (Django\'s mail settings): one an item, bare or with a name, e.g. `["ops@example.com", "Ops Team <ops@example.com>"]`.',
    ),
    Setting(
        "ALERT_RATE_LIMIT",
        6,
        (int,),
        "Most alerts (email and webhooks together) one monitor sends in an hour; more are logged, not sent.",
        positive=True,
    ),
    Setting(
        "ALERT_TIMEOUT",
        5.0,
        (int, float),
        "Seconds an alert's webhook may take to connect, and for each read.",
        positive=True,
        maximum=ALERT_TIMEOUT_MAX,
    ),
    Setting(
        "ALERT_WEBHOOKS",
        [],
        (list, tuple),
        'Webhooks for the same alerts: URLs (a JSON payload), or `{"url": ..., "format": "slack", "headers": {...}}`. Header names are HTTP tokens, their values strings of latin-1 characters on one line.',
    ),
    Setting(
        "API_AUTHENTICATION_CLASSES",
        None,
        (list, tuple, _NONE),
        "DRF authentication classes for the API (import strings); `None` uses DRF's defaults.",
        import_strings=True,
    ),
    Setting(
        "API_MAX_PAGE_SIZE",
        500,
        (int,),
        "The largest `page_size` a client may ask for.",
        positive=True,
        maximum=BIGINT_MAX - 1,  # a page reads one row more (a LIMIT of BIGINT_MAX)
    ),
    Setting(
        "API_OWNER_SCOPED",
        default=False,
        types=(bool,),
        help="When true, users who are not staff see, kill and retry only the runs they own.",
    ),
    Setting(
        "API_PAGE_SIZE",
        50,
        (int,),
        "Page size of the API's lists.",
        positive=True,
        maximum=BIGINT_MAX - 1,  # a page reads one row more (a LIMIT of BIGINT_MAX)
    ),
    Setting(
        "API_PERMISSION_CLASSES",
        ["django_jobstatus.api.permissions.JobRunPermission"],
        (list, tuple),
        "Who may use the API (import strings).",
        import_strings=True,
    ),
    Setting(
        "DATABASE",
        "default",
        (str,),
        "The database alias the app writes to.",
        database=True,
    ),
    Setting(
        "ERROR_MAX_LENGTH",
        10000,
        (int,),
        "Longest `error` kept (the exception's class and message), in characters; longer is cut with a visible marker.",
        minimum=100,
    ),
    Setting(
        "FINISH_RETRY_TIMEOUT",
        30.0,
        (int, float),
        "Seconds `track()` keeps retrying to record a run's end while the database is away.",
        positive=True,
        maximum=MAX_AGE_SECONDS,
    ),
    Setting(
        "HEARTBEAT_TIMEOUT",
        300,
        (int, float),
        "Seconds without a heartbeat after which a running run is stale (and reaped as `lost`). Workers beat every third of it, and at most ten times a second: the bound leaves room for three beats.",
        minimum=HEARTBEAT_TIMEOUT_MIN,
        maximum=HEARTBEAT_TIMEOUT_MAX,
    ),
    Setting(
        "INTEGRATIONS",
        [],
        (list, tuple),
        'Integrations to switch on, e.g. `["django_jobstatus.contrib.celery"]`.',
    ),
    Setting(
        "JSON_MAX_LENGTH",
        100000,
        (int,),
        'Longest JSON kept in `params`, `data`, `result` and a log line\'s `extra`, in characters. Bigger JSON is replaced by `{"cut": true, "length": <characters>, "preview": "<its first characters, REDACT_KEYS masked>"}` (such params cannot be retried with the same arguments).',
        minimum=100,
    ),
    Setting(
        "KEEP_LAST",
        1,
        (int,),
        "The newest N runs of every job survive the purge whatever their age.",
        non_negative=True,
        maximum=BIGINT_MAX,
    ),
    Setting(
        "LOG_MAX_LENGTH",
        10000,
        (int,),
        "Longest log message kept; longer ones are cut with a visible marker.",
        minimum=100,
    ),
    Setting(
        "MESSAGE_MAX_LENGTH",
        2000,
        (int,),
        "Longest status `message` kept; longer ones are cut with a visible marker.",
        minimum=100,
    ),
    Setting(
        "METRICS_BEARER_TOKEN",
        None,
        (str, _NONE),
        "A token that also opens the API's `metrics/` to a scraper (`Authorization: Bearer <token>`). Visible ASCII characters only (no space).",
        min_length=16,
    ),
    Setting(
        "METRICS_WINDOW",
        3600,
        (int, float),
        "Seconds of runs that `metrics/` counts and times per job (runs created within the window).",
        positive=True,
        maximum=MAX_AGE_SECONDS,
    ),
    Setting(
        "MONITOR_CACHE_TIMEOUT",
        60,
        (int, float),
        "Seconds a process keeps the set of monitored job names before it reads it again.",
        positive=True,
        maximum=MAX_AGE_SECONDS,
    ),
    Setting(
        "MONITOR_DURATION_SAMPLE",
        100,
        (int,),
        "The newest successful runs whose p95 duration a monitor's `max_duration_p95_factor` multiplies.",
        positive=True,
        maximum=BIGINT_MAX - 1,  # health reads one run more (the judged one, left out)
    ),
    Setting(
        "PROGRESS_INTERVAL",
        1.0,
        (int, float),
        "Seconds between two progress/heartbeat/log writes (and kill checks) of a running job.",
        positive=True,
        maximum=MAX_AGE_SECONDS,
    ),
    Setting(
        "QUEUED_TIMEOUT",
        None,
        (int, float, _NONE),
        "Seconds a run may wait for a worker (`queued`, or a retry, counted from when it was scheduled) before `reap_jobstatus` ends it `killed` (its message was probably lost) and tells its task system to drop it; `None`: never.",
        positive=True,
        maximum=MAX_AGE_SECONDS,
    ),
    Setting(
        "READ_DATABASE",
        None,
        (str, _NONE),
        "The database alias (a replica) the admin, the API and the dashboard read from, through `django_jobstatus.routers.JobStatusRouter`; `None` means `DATABASE`. Writes always go to `DATABASE` (see Scaling in the docs).",
        database=True,
    ),
    Setting(
        "REDACT_KEYS",
        ["password", "secret", "token", "api_key", "authorization"],
        (list, tuple, set, frozenset),
        'Keys of params/data/result shown as `"********"` in the admin and the API, at any depth.',
    ),
    Setting(
        "RETENTION",
        {"failed": 90},
        (dict,),
        f"Days to keep finished runs, per status, over `RETENTION_DAYS`: whole numbers from 1 to {MAX_AGE_DAYS}.",
    ),
    Setting(
        "RETENTION_DAYS",
        30,
        (int,),
        "Days to keep finished runs.",
        positive=True,
        maximum=MAX_AGE_DAYS,
    ),
    Setting(
        "TRACEBACK_MAX_LENGTH",
        100000,
        (int,),
        "Longest `traceback` kept; a longer one keeps its end, after a visible marker.",
        minimum=100,
    ),
    Setting(
        "WORKER_NAME",
        None,
        (str, _NONE),
        "The `worker` recorded for runs started in this process; `None` means `host:pid`.",
        max_length=255,  # values.MAX_LENGTHS["worker"], the column's
    ),
)

DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}
TYPES: dict[str, tuple[type, ...]] = {s.name: s.types for s in SETTINGS}
# Settings that hold import strings (or lists of them), resolved on first access.
IMPORT_STRINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.import_strings)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

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
