"""Template filters and tags of the admin pages: ``{{ moment|jobstatus_ago }}``,
``{% jobstatus_result_list cl %}``, ``{{ choices|jobstatus_filter_choices }}``,
``{{ logs|jobstatus_log_rows }}``, ``{{ jobs|jobstatus_job_rows }}``."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django import template
from django.conf import settings
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.utils import timezone
from django.utils.encoding import iri_to_uri
from django.utils.formats import localize
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

from django_jobstatus.admin.display import escaped, level_badge
from django_jobstatus.admin.rows import fast_result_list

if TYPE_CHECKING:
    from django_jobstatus.models import JobLog

register = template.Library()

# Django 6.1 gives InclusionAdminNode the tag's name as its first argument; 5.2 does not.
_NAMED = "name" in inspect.signature(InclusionAdminNode.__init__).parameters


@register.filter
def jobstatus_ago(moment: datetime | None) -> str:
    """``3 minutes ago``; ``just now`` under a minute (never ``0 minutes ago``); ``""`` for None."""
    if moment is None:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return _("just now")
    return _("%(time)s ago") % {"time": timesince(moment, depth=1)}


@register.tag(name="jobstatus_result_list")
def jobstatus_result_list(parser: Any, token: Any) -> InclusionAdminNode:
    """Django's ``{% result_list cl %}`` (the same templates, the same HTML), its rows built cheaply."""
    node: Any = InclusionAdminNode  # the stubs know one of the two signatures
    args = ("jobstatus_result_list", parser, token) if _NAMED else (parser, token)
    return cast(
        "InclusionAdminNode",
        node(
            *args,
            func=fast_result_list,
            template_name="change_list_results.html",
            takes_context=False,
        ),
    )


@register.filter
def jobstatus_filter_choices(choices: list[dict[str, Any]]) -> SafeString:
    """A list filter's ``<li>`` items, the HTML of the loop in Django's ``admin/filter.html``,
    joined in Python: a filter of a hundred job names is a hundred template loops less."""
    items = [
        '\n    <li{}>\n    <a href="{}">{}</a></li>\n  '.format(
            ' class="selected"' if choice["selected"] else "",
            escaped(iri_to_uri(choice["query_string"])),
            escaped(choice["display"]),
        )
        for choice in choices
    ]
    return SafeString("".join(items))


@register.filter
def jobstatus_log_rows(lines: Iterable[JobLog]) -> SafeString:
    """A run page's log lines as the rows of its log table, built in Python.

    The same HTML as a template loop over them (the time as the ``date:"Y-m-d H:i:s"``
    filter shows it, in the current time zone), which rendered the page's 200 lines in
    half of its time.
    """
    rows = []
    for line in lines:
        level = line.level
        at = line.created_at
        if settings.USE_TZ and timezone.is_aware(at):
            at = timezone.localtime(at)  # what the date filter formats
        stamp = (
            f"{at.year:04d}-{at.month:02d}-{at.day:02d} "
            f"{at.hour:02d}:{at.minute:02d}:{at.second:02d}"
        )
        rows.append(
            f'\n      <tr class="jobstatus-log-row" data-level="{level}">'
            f'\n        <td class="nowrap"><time datetime="{escaped(line.created_at.isoformat())}">{stamp}</time></td>'
            f"\n        <td>{level_badge(level)}</td>"
            f'\n        <td class="jobstatus-log-message">{escaped(line.message)}</td>'
            "\n      </tr>\n    "
        )
    return SafeString("".join(rows))


def _shown(value: Any) -> str:
    """What ``{{ value }}`` writes: the value localized, then escaped."""
    return escaped(localize(value))


def _rate(pct: float, job: dict[str, Any]) -> str:
    """The failure rate ``pct`` (to one decimal) as shown: "<0.1" for a job that failed,
    ">99.9" for one that did not always fail, where rounding would read 0 or 100 and say
    the opposite of the counts beside it."""
    if pct == 0 and job["failed"]:
        return f"&lt;{_shown(0.1)}"
    if pct == 100 and job["failed"] < job["total"]:
        return f"&gt;{_shown(99.9)}"
    return _shown(pct)


@register.filter
def jobstatus_job_rows(jobs: Iterable[dict[str, Any]]) -> SafeString:
    """The dashboard's job table rows (``job_table()``'s dicts), built in Python.

    The same HTML as a template loop over them, which was most of the dashboard's rendering.
    """
    rows = []
    for job in jobs:
        failed = (
            f'<a href="{_shown(job["failed_url"])}" class="jobstatus-failed-link">{_shown(job["failed"])}</a>'
            if job["failed"]
            else "0"
        )
        pct = job["failure_pct"]
        if pct is None:
            rate = "—"
        else:
            css = (
                " jobstatus-rate-bad"
                if pct >= 10
                else " jobstatus-rate-warn"
                if job["failed"]
                else ""
            )
            rate = f'<span class="jobstatus-rate{css}">{_rate(pct, job)}%</span>'
        latest = job["latest"]
        last = (
            f'<a href="{_shown(job["latest_url"])}"><span class="jobstatus-badge jobstatus-{_shown(latest.status)}">'
            f"{_shown(latest.get_status_display())}</span></a>"
            f' <span class="jobstatus-sub">{_shown(jobstatus_ago(latest.created_at))}</span>'
            if latest
            else ""
        )
        rows.append(
            "\n        <tr>"
            f'\n          <td><a href="{_shown(job["url"])}">{_shown(job["job_name"])}</a></td>'
            f'\n          <td class="num">{_shown(job["total"])}</td>'
            f'\n          <td class="num">{failed}</td>'
            f'\n          <td class="num">{rate}</td>'
            f'\n          <td class="num">{_shown(job["p50"] or "—")}</td>'
            f'\n          <td class="num">{_shown(job["p95"] or "—")}</td>'
            f"\n          <td>{last}</td>"
            "\n        </tr>\n      "
        )
    return SafeString("".join(rows))
