"""System checks for the JOBSTATUS setting (ids jobstatus.E001…, jobstatus.W001…)."""

from __future__ import annotations

import difflib
import re
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import router
from django.utils.module_loading import import_string

from django_jobstatus.conf import (
    BY_NAME,
    DEFAULTS,
    IMPORT_STRINGS,
    MAX_AGE_DAYS,
    REMOVED_SETTINGS,
    TYPES,
    settings,
)
from django_jobstatus.states import Status


def _has_type(value: Any, expected: tuple[type, ...]) -> bool:
    # bool is an int to isinstance(); a flag is never a number here, nor the reverse.
    if isinstance(value, bool):
        return bool in expected
    return isinstance(value, expected)


@register(Tags.compatibility)
def check_unknown_keys(**kwargs: Any) -> list[CheckMessage]:
    """W001: a key this app does not know (a typo, most likely)."""
    messages: list[CheckMessage] = []
    for key in settings.user_settings:
        if key in DEFAULTS or key in REMOVED_SETTINGS:
            continue
        nearest = difflib.get_close_matches(key, DEFAULTS, n=1)
        hint = (
            f"Did you mean {nearest[0]!r}?"
            if nearest
            else "See the settings reference in the docs for the valid keys."
        )
        messages.append(
            Warning(
                f"JOBSTATUS has an unknown key {key!r}.", hint=hint, id="jobstatus.W001"
            )
        )
    return messages


@register(Tags.compatibility)
def check_removed_keys(**kwargs: Any) -> list[CheckMessage]:
    """E002: a key that this app no longer reads."""
    return [
        Error(
            f"JOBSTATUS[{key!r}] has been removed.",
            hint=REMOVED_SETTINGS[key],
            id="jobstatus.E002",
        )
        for key in settings.user_settings
        if key in REMOVED_SETTINGS
    ]


@register(Tags.compatibility)
def check_types(**kwargs: Any) -> list[CheckMessage]:
    """E001: JOBSTATUS that is not a dict, or a known key whose value has the wrong type."""
    messages: list[CheckMessage] = []
    given = getattr(django_settings, "JOBSTATUS", None)
    if given is not None and not isinstance(given, dict):
        messages.append(
            Error(
                f"JOBSTATUS must be a dict, not {type(given).__name__}.",
                hint="For example JOBSTATUS = {'RETENTION_DAYS': 14}.",
                id="jobstatus.E001",
            )
        )
    for key, value in settings.user_settings.items():
        expected = TYPES.get(key)
        if expected is None or _has_type(value, expected):
            continue
        names = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
        messages.append(
            Error(
                f"JOBSTATUS[{key!r}] must be {names}, not {type(value).__name__}.",
                hint=f"The default is {DEFAULTS[key]!r}.",
                id="jobstatus.E001",
            )
        )
    return messages


def _value_message(name: str, value: Any) -> CheckMessage | None:
    """E003 for a number outside its declared bound; W003 for a string longer than kept."""
    declared = BY_NAME[name]
    if isinstance(value, str) and declared.max_length is not None:
        if len(value) > declared.max_length:
            return Warning(
                f"JOBSTATUS[{name!r}] is {len(value)} characters long; runs keep only its first {declared.max_length}.",
                hint=f"Use a name of at most {declared.max_length} characters.",
                id="jobstatus.W003",
            )
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if not declared.breaks_bound(value):
        return None
    return Error(
        f"JOBSTATUS[{name!r}] must be {declared.bound}, not {value!r}.",
        hint=f"The default is {declared.default!r}.",
        id="jobstatus.E003",
    )


def _retention_messages(retention: dict[Any, Any]) -> list[CheckMessage]:
    """E004: RETENTION names finished statuses, each with days a purge can take."""
    messages: list[CheckMessage] = []
    for status, days in retention.items():
        if status not in Status.TERMINAL:
            messages.append(
                Error(
                    f"JOBSTATUS['RETENTION'] names {status!r}, which is not a finished status.",
                    hint=f"Use one of {sorted(Status.TERMINAL)}.",
                    id="jobstatus.E004",
                )
            )
        elif (
            not isinstance(days, int)
            or isinstance(days, bool)
            or not 0 < days <= MAX_AGE_DAYS
        ):
            messages.append(
                Error(
                    f"JOBSTATUS['RETENTION'][{status!r}] must be a whole number of days from 1 to {MAX_AGE_DAYS}, not {days!r}.",
                    hint="For example {'failed': 90}.",
                    id="jobstatus.E004",
                )
            )
    return messages


def _database_messages(user: dict[str, Any]) -> list[CheckMessage]:
    """E003: DATABASE and READ_DATABASE are aliases in DATABASES; W002: and they are routed to."""
    messages: list[CheckMessage] = []
    routed = []
    for name in ("DATABASE", "READ_DATABASE"):
        value = user.get(name)
        if isinstance(value, str) and value not in django_settings.DATABASES:
            messages.append(
                Error(
                    f"JOBSTATUS[{name!r}] is {value!r}, which is not in DATABASES.",
                    hint=f"Use one of {sorted(django_settings.DATABASES)}.",
                    id="jobstatus.E003",
                )
            )
        elif isinstance(value, str) and (name == "READ_DATABASE" or value != "default"):
            routed.append(name)
    if routed and not messages and not _routed_there():
        given = " and ".join(f"JOBSTATUS[{name!r}]" for name in routed)
        messages.append(
            Warning(
                f"{given} {'are' if len(routed) > 1 else 'is'} set, but no router in DATABASE_ROUTERS sends the app's tables there.",
                hint="Add 'django_jobstatus.routers.JobStatusRouter' to DATABASE_ROUTERS (see Scaling in the docs), ahead of any router that answers for every model (Django takes the first answer): without it, the admin and the API read 'default'.",
                id="jobstatus.W002",
            )
        )
    return messages


def _routed_there() -> bool:
    """Whether Django's routers send the app's writes to DATABASE and its reads to
    READ_DATABASE (or DATABASE): JobStatusRouter, or another that does the same, is
    asked before any router that answers for every model."""
    from django_jobstatus.models import JobRun

    return bool(
        router.db_for_write(JobRun) == settings.DATABASE
        and router.db_for_read(JobRun) == (settings.READ_DATABASE or settings.DATABASE)
    )


@register(Tags.compatibility)
def check_values(**kwargs: Any) -> list[CheckMessage]:
    """E003: numbers within their bounds, databases that exist; E004: RETENTION's shape;
    W002: a database of the app's own with no router to it; W003: a WORKER_NAME too long."""
    user = settings.user_settings
    messages = _database_messages(user)
    for name, value in user.items():
        if name in BY_NAME and not BY_NAME[name].database:
            message = _value_message(name, value)
            if message is not None:
                messages.append(message)
    retention = user.get("RETENTION")
    if isinstance(retention, dict):
        messages += _retention_messages(retention)
    return messages


def is_module_path(value: Any) -> bool:
    """Whether an INTEGRATIONS item is the dotted path of a module (``ready()`` imports only
    those; E005 reports the others)."""
    return isinstance(value, str) and all(
        part.isidentifier() for part in value.split(".")
    )


def _import_problem(path: str) -> str | None:
    """Why ``import_string(path)`` fails, or None. Importing runs a module's code, which
    may raise anything: a check reports it and never crashes."""
    try:
        import_string(path)
    except Exception as exc:
        return f"which cannot be imported: {exc}"
    return None


@register(Tags.compatibility)
def check_import_strings(**kwargs: Any) -> list[CheckMessage]:
    """E005: an integration or class path that cannot be imported, or an item that is neither."""
    messages: list[CheckMessage] = []
    user = settings.user_settings
    integrations = user.get("INTEGRATIONS")
    # Not a list: check_types says so (E001).
    for path in integrations if isinstance(integrations, list | tuple) else ():
        # ready() calls each one's connect(), found by its dotted path.
        problem = (
            _import_problem(f"{path}.connect")
            if is_module_path(path)
            else "which is not the dotted path of a module"
        )
        if problem:
            messages.append(
                Error(
                    f"JOBSTATUS['INTEGRATIONS'] lists {path!r}, {problem}.",
                    hint="Give the dotted path of a module with connect(), e.g. 'django_jobstatus.contrib.celery', and install its extra: pip install 'django-jobstatus[celery]'.",
                    id="jobstatus.E005",
                )
            )
    for key in IMPORT_STRINGS:
        given = user.get(key)
        for item in given if isinstance(given, list | tuple) else ():
            # conf resolves a string and passes anything else through, as DRF takes a class.
            if isinstance(item, str):
                problem = _import_problem(item)
            elif isinstance(item, type):
                problem = None
            else:
                problem = "which is neither an import string nor a class"
            if problem:
                messages.append(
                    Error(
                        f"JOBSTATUS[{key!r}] lists {item!r}, {problem}.",
                        hint="Give the dotted path of a class, or the class.",
                        id="jobstatus.E005",
                    )
                )
    return messages


_WEBHOOK_KEYS = frozenset({"url", "format", "headers"})
_WEBHOOK_FORMATS = ("json", "slack")
# RFC 9110's token: what a header's name is made of.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII: what every scraper sends and every server hands over as it is (RFC 6750's
# b64token is narrower; Django's get_random_secret_key() and many tokens are not).
_BEARER_TOKEN = re.compile(r"[\x21-\x7e]+")


def _has_control_character(text: str) -> bool:
    """Whether ``text`` has a line break or another control character (a tab aside)."""
    return any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in text)


def _url_problem(url: Any) -> str | None:
    """What keeps a request to ``url`` from reaching a webhook, or None."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return f"has {url!r}, which is not an http(s) URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for the ValueError of a port that is not a number)
    except ValueError as exc:
        return f"has {url!r}, which is not a valid URL ({exc})"
    if not parts.hostname:
        return f"has {url!r}, which names no host"
    if parts.username is not None or parts.password is not None:
        # urllib takes "user:secret@host" for the host's name: nothing is ever sent.
        return "has a URL with credentials (user:password@), which urllib does not send: put them in an Authorization header"
    if any(char.isspace() for char in url) or _has_control_character(url):
        return (
            f"has {url!r}, which has a space or a control character (percent-encode it)"
        )
    if not (parts.path + parts.query).isascii():
        return f"has {url!r}, whose path or query is not ASCII (percent-encode it)"
    return None


def _header_problem(name: Any, value: Any) -> str | None:
    """What keeps the header ``name: value`` from being sent as it is, or None."""
    if not isinstance(name, str) or not _HTTP_TOKEN.fullmatch(name):
        return f"has a header name {name!r}, which is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
    if not isinstance(value, str):
        return f"has header {name!r} set to {value!r}, which is not a string"
    if _has_control_character(value):
        return f"has header {name!r} set to {value!r}, which has a line break or another control character"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"has header {name!r} set to {value!r}, which has characters that are not latin-1"
    return None


def _webhook_problem(hook: Any) -> str | None:
    """What is wrong with one ALERT_WEBHOOKS entry, or None: each of these would make every
    delivery fail before a byte is sent, and the alert be queued again and again."""
    if isinstance(hook, dict):
        unknown = set(hook) - _WEBHOOK_KEYS
        if unknown:
            return f"has unknown keys {sorted(unknown)}"
        if hook.get("format", "json") not in _WEBHOOK_FORMATS:
            return f"has format {hook.get('format')!r}, not one of {list(_WEBHOOK_FORMATS)}"
        headers = hook.get("headers", {})
        if not isinstance(headers, dict):
            return "has headers that are not a dict"
        for name, value in headers.items():
            problem = _header_problem(name, value)
            if problem:
                return problem
        hook = hook.get("url")
    return _url_problem(hook)


_ADDRESSES = HeaderRegistry()


def _is_recipient(item: Any) -> bool:
    """Whether ``send_mail()`` delivers to ``item``: one address, bare or with a display
    name (``"Ops Team <ops@example.com>"``, as Django's ADMINS take), the way the email
    package parses a To header. Two addresses in one item, a group, an empty or broken
    address, a line break, or a stray comma (Django 5.2 refuses the empty address after
    it) would make every alert email fail when it is sent, not when the app starts."""
    if not isinstance(item, str) or item.rstrip().endswith(","):
        return False
    try:
        header = _ADDRESSES("to", item)
    except ValueError:  # a line break
        return False
    if not isinstance(header, AddressHeader) or header.defects:
        return False  # unparsable
    if len(header.groups) != 1 or header.groups[0].display_name is not None:
        return False  # a group ("Team: a@example.com;")
    if len(header.addresses) != 1:
        return False
    try:
        validate_email(header.addresses[0].addr_spec)
    except ValidationError:
        return False
    return True


@register(Tags.compatibility)
def check_alerts(**kwargs: Any) -> list[CheckMessage]:
    """E006: alert addresses, webhooks, base URL and the metrics token must be usable."""
    user = settings.user_settings
    messages: list[CheckMessage] = []
    emails = user.get("ALERT_EMAILS")
    for address in emails if isinstance(emails, list | tuple) else ():
        if not _is_recipient(address):
            messages.append(
                Error(
                    f"JOBSTATUS['ALERT_EMAILS'] has {address!r}, which is not an email address.",
                    hint="One address an item, bare or with a name: for example ['ops@example.com', 'Ops Team <ops@example.com>'].",
                    id="jobstatus.E006",
                )
            )
    hooks = user.get("ALERT_WEBHOOKS")
    for index, hook in enumerate(hooks if isinstance(hooks, list | tuple) else ()):
        problem = _webhook_problem(hook)
        if problem:
            messages.append(
                Error(
                    f"JOBSTATUS['ALERT_WEBHOOKS'][{index}] {problem}.",
                    hint="Give a URL, or {'url': 'https://…', 'format': 'slack', 'headers': {'Authorization': 'Bearer …'}}: header names and values are strings, the values latin-1 on one line.",
                    id="jobstatus.E006",
                )
            )
    base = user.get("ALERT_BASE_URL")
    if isinstance(base, str) and not base.startswith(("http://", "https://")):
        messages.append(
            Error(
                f"JOBSTATUS['ALERT_BASE_URL'] is {base!r}, which is not an http(s) URL.",
                hint="For example 'https://ops.example.com'.",
                id="jobstatus.E006",
            )
        )
    token = user.get("METRICS_BEARER_TOKEN")
    if isinstance(token, str):
        messages += _token_messages(token)
    return messages


def _token_messages(token: str) -> list[CheckMessage]:
    """E006: a METRICS_BEARER_TOKEN that is long, and that a scraper can send as it is."""
    shortest = BY_NAME["METRICS_BEARER_TOKEN"].min_length or 0
    hint = "Use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'."
    messages: list[CheckMessage] = []
    if len(token) < shortest:
        messages.append(
            Error(
                f"JOBSTATUS['METRICS_BEARER_TOKEN'] is shorter than {shortest} characters.",
                hint=hint,
                id="jobstatus.E006",
            )
        )
    # A space is stripped from a header's ends, and a character that is not ASCII travels
    # as bytes each server decodes its own way: such a token may never match.
    elif not _BEARER_TOKEN.fullmatch(token):
        messages.append(
            Error(
                "JOBSTATUS['METRICS_BEARER_TOKEN'] has characters that a scraper cannot send as they are (a space, a control character, or a character that is not ASCII).",
                hint=hint,
                id="jobstatus.E006",
            )
        )
    return messages


@register(Tags.compatibility)
def check_use_tz(**kwargs: Any) -> list[CheckMessage]:
    """E007: runs are stamped and compared in UTC; USE_TZ = False is not supported."""
    if django_settings.USE_TZ:
        return []
    return [
        Error(
            "django-jobstatus needs USE_TZ = True.",
            hint="Its timestamps are aware datetimes: with USE_TZ = False the admin and the purge fail.",
            id="jobstatus.E007",
        )
    ]
