"""JobStatusRouter: the app's tables on their own database, read from a replica if there is one.

Add ``"django_jobstatus.routers.JobStatusRouter"`` to ``DATABASE_ROUTERS``. Every write
(and every read that locks, such as ``select_for_update()``) of JobRun and JobLog goes to
``JOBSTATUS["DATABASE"]``; other reads (the admin, the API, the dashboard) go to
``JOBSTATUS["READ_DATABASE"]`` when it is set. Other apps' models are left to the next
router. Migrations of the app run on ``DATABASE`` only (a replica copies them).
"""

from __future__ import annotations

from typing import Any

from django_jobstatus.conf import settings

APP_LABEL = "django_jobstatus"


def _ours(model: Any) -> bool:
    return bool(model._meta.app_label == APP_LABEL)


def write_database(alias: str | None) -> str:
    """Where a write of a row read through ``alias`` goes: ``DATABASE`` for a row read
    from ``READ_DATABASE`` (a replica refuses the write, or keeps it from the primary),
    else ``alias`` itself (a tracking connection of the app's own), or ``DATABASE``."""
    if not alias or alias == settings.READ_DATABASE:
        return str(settings.DATABASE)
    return alias


class JobStatusRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if not _ours(model):
            return None
        return str(settings.READ_DATABASE or settings.DATABASE)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return str(settings.DATABASE) if _ours(model) else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # Runs may point at users (owner) kept in another database: Django cannot join them,
        # but the ids stay valid. Relations between the app's own rows are always fine.
        if _ours(obj1) and _ours(obj2):
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if app_label != APP_LABEL:
            return None
        return bool(db == settings.DATABASE)
