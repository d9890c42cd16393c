"""Record every run of a background job, and watch, filter, stop and clean up those runs."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_jobstatus.exceptions import JobKilled
    from django_jobstatus.tracking import current_job, track, tracked

__all__ = ["JobKilled", "current_job", "track", "tracked"]

__version__ = importlib.metadata.version("django-jobstatus")


def __getattr__(name: str) -> Any:
    # PEP 562: importing the package must not import models (it may happen while apps load).
    if name == "JobKilled":
        from django_jobstatus.exceptions import JobKilled

        return JobKilled
    if name in {"track", "tracked", "current_job"}:
        from django_jobstatus import tracking

        return getattr(tracking, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
