"""Template filters of the admin pages: ``{{ moment|jobstatus_ago }}``."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def jobstatus_ago(moment: datetime | None) -> str:
    """``3 minutes ago``; ``just now`` under a minute (never ``0 minutes ago``); ``""`` for None."""
    if moment is None:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return _("just now")
    return _("%(time)s ago") % {"time": timesince(moment, depth=1)}
