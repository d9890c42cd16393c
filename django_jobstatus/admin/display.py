"""HTML pieces shared by the run pages and the dashboard (all built with format_html, or
with format_cell, its equivalent for what every changelist row calls)."""

from __future__ import annotations

import functools
import html
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from django_jobstatus.models import Status
from django_jobstatus.redaction import redact

if TYPE_CHECKING:
    from django_jobstatus.models import JobRun

MEDIA_CSS = {"all": ["django_jobstatus/css/jobstatus.css"]}
MEDIA_JS = ["django_jobstatus/js/jobstatus.js"]
# Stands for a primary key in a URL reversed once, then filled in per row.
PK_PLACEHOLDER = "0jobstatus0pk0"


@functools.lru_cache(maxsize=256)
def _reversed(name: str, prefix: str, urlconf: Any, *, placeholder: bool) -> str:
    return reverse(name, urlconf=urlconf, args=[PK_PLACEHOLDER] if placeholder else [])


def admin_url(name: str, pk: Any = None) -> str:
    """``reverse(name)`` (with ``pk`` as its one argument, if given), reversed once per
    script prefix and URLconf rather than once per row or link.
    """
    url = _reversed(
        name,
        get_script_prefix(),
        get_urlconf() or settings.ROOT_URLCONF,
        placeholder=pk is not None,
    )
    return url if pk is None else url.replace(PK_PLACEHOLDER, str(pk))


def run_url(pk: Any) -> str:
    """A run's admin page."""
    return admin_url("admin:django_jobstatus_jobrun_change", pk)


def shorten(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters, the last one "…" when cut (``truncatechars``, cheaper)."""
    return text if len(text) <= length else text[: length - 1] + "…"


def format_duration(delta: timedelta | None) -> str:
    """``1 h 02 min``, ``3 min 04 s``, ``5.2 s``; an empty string for None."""
    if delta is None:
        return ""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def escaped(value: Any) -> str:
    """``conditional_escape(value)`` as text: safe HTML as it is, anything else escaped
    (without the lazy-argument check of Django's ``escape`` on each call)."""
    if isinstance(value, Promise):
        value = str(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    return html.escape(str(value))


def format_cell(template: str, *args: Any) -> SafeString:
    """``format_html(template, *args)``, the same HTML, for the pieces of a changelist row.

    A page of runs calls it some 300 times and escapes a thousand values: Django's
    ``escape`` checks every call for lazy arguments, which cost a fifth of the rows' time.
    """
    return SafeString(template.format(*map(escaped, args)))


def status_badge(run: JobRun) -> SafeString:
    badge = format_cell(
        '<span class="jobstatus-badge jobstatus-{}">{}</span>',
        run.status,
        run.get_status_display(),
    )
    if run.is_active and run.kill_requested:
        badge = format_cell(
            '{} <span class="jobstatus-badge jobstatus-stopping">{}</span>',
            badge,
            _("stopping"),
        )
    return badge


def moment(when: datetime, *, seconds: bool = True) -> SafeString:
    """A ``<time>`` in the current time zone, to the second (or the minute), the full stamp as its title."""
    local = timezone.localtime(when)
    return format_cell(
        '<time datetime="{}" title="{}">{}</time>',
        local.isoformat(),
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"),
    )


def error_line(error: str) -> str:
    """The line of an error text that says what went wrong: its first non-empty line."""
    return next((line.strip() for line in error.splitlines() if line.strip()), "")


def progress_bar(run: JobRun, *, counts: bool = False) -> SafeString:
    """A bar with its percentage and step (and ``current / total`` with ``counts``).

    While the total is unknown, a running run's bar is animated; a queued or retrying
    run's bar stays empty (it is waiting, not working).
    """
    share = run.progress
    if share is None and not run.is_active and not run.progress_current:
        return format_cell('<span class="jobstatus-step">{}</span>', run.step or "—")
    if share is None:
        label = str(run.progress_current) if run.progress_current else ""
        width, css = (
            ("100", "jobstatus-indeterminate")
            if run.status == Status.RUNNING
            else ("0", "")
        )
    else:
        label = f"{run.percent_done}%"
        width, css = f"{share * 100:.1f}", ""
        if counts:
            label += f" ({run.progress_current} / {run.progress_total})"
    return format_cell(
        '<span class="jobstatus-progress {}" data-run="{}" title="{} / {}">'
        '<span class="jobstatus-progress-bar" style="width: {}%"></span></span>'
        ' <span class="jobstatus-progress-label">{}</span> <span class="jobstatus-step">{}</span>',
        css,
        run.pk,
        run.progress_current,
        run.progress_total if run.progress_total is not None else "?",
        width,
        label,
        run.step,
    )


def elapsed_seconds(run: JobRun) -> float | None:
    """How long an active run has been running, by the server's clock; None otherwise.

    The script counts on from this by the time passed in the browser since it arrived: the
    viewer's clock against ``started_at`` would be off by as much as that computer's clock.
    """
    if run.started_at is None or not run.is_active:
        return None
    return round((timezone.now() - run.started_at).total_seconds(), 3)


def duration_cell(run: JobRun) -> SafeString:
    """The run time; running runs carry their start and how long they have been running
    (``data-elapsed``, counted on by the script)."""
    started = run.started_at.isoformat() if run.started_at and run.is_active else ""
    elapsed = elapsed_seconds(run)
    return format_cell(
        '<span class="jobstatus-duration" data-started="{}" data-elapsed="{}">{}</span>',
        started,
        "" if elapsed is None else elapsed,
        format_duration(run.duration),
    )


def pretty_json(value: Any) -> SafeString:
    """Redacted, indented JSON in a <pre> (escaped: never HTML)."""
    text = json.dumps(
        redact(value),
        indent=2,
        sort_keys=True,
        ensure_ascii=False,
        cls=DjangoJSONEncoder,
    )
    return format_html('<pre class="jobstatus-json">{}</pre>', text)


def level_css(level: int) -> str:
    """The colour class of a logging level: ``error``, ``warning``, ``info`` or ``debug``."""
    if level >= logging.ERROR:
        return "error"
    if level >= logging.WARNING:
        return "warning"
    return "debug" if level < logging.INFO else "info"


def level_badge(level: int) -> SafeString:
    return format_cell(
        '<span class="jobstatus-level jobstatus-level-{}">{}</span>',
        level_css(level),
        logging.getLevelName(level),
    )
