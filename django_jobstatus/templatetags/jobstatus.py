"""Template filters and tags of the admin pages: ``{{ moment|jobstatus_ago }}``,
``{% jobstatus_result_list cl %}``, ``{{ choices|jobstatus_filter_choices }}``."""

from __future__ import annotations

import inspect
from datetime import datetime
from typing import Any, cast

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.utils import timezone
from django.utils.encoding import iri_to_uri
from django.utils.html import conditional_escape, escape
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

from django_jobstatus.admin.rows import fast_result_list

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
            escape(iri_to_uri(choice["query_string"])),
            conditional_escape(choice["display"]),
        )
        for choice in choices
    ]
    return SafeString("".join(items))
