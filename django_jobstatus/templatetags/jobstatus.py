"""Template filters and tags of the admin pages: ``{{ moment|jobstatus_ago }}``, ``{% jobstatus_result_list cl %}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.utils import timezone
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

from django_jobstatus.admin.rows import fast_result_list

register = template.Library()


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
    # django-stubs gives InclusionAdminNode a ``name`` argument Django's does not take.
    return InclusionAdminNode(  # type: ignore[call-arg]
        parser,
        token,
        func=fast_result_list,
        template_name="change_list_results.html",
        takes_context=False,
    )
