"""Index operations that build or drop CONCURRENTLY on PostgreSQL, and plainly elsewhere; pg_trgm.

CONCURRENTLY: adding or removing an index on a big table that workers are writing to does
not block them. A migration using these must set ``atomic = False``. (The leading
underscore keeps Django's migration loader from taking this module for a migration.)
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, migrations

logger = logging.getLogger(__name__)


def trigram_extension(schema_editor: Any, without: str) -> bool:
    """Install pg_trgm if needed; False, with a warning saying ``without``, where it cannot be."""
    try:
        # pg_trgm is a "trusted" extension since PostgreSQL 13: the database's owner may install it.
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        logger.warning("pg_trgm is not available (%s): %s", exc, without)
        return False
    return True


def _concurrently(
    operation: Any, schema_editor: Any, app_label: str, state: Any, method: str
) -> bool:
    """On PostgreSQL, add or remove ``operation``'s index CONCURRENTLY; False elsewhere."""
    if schema_editor.connection.vendor != "postgresql":
        return False
    model = state.apps.get_model(app_label, operation.model_name)
    if operation.allow_migrate_model(schema_editor.connection.alias, model):
        index = (
            operation.index
            if hasattr(operation, "index")
            else state.models[app_label, operation.model_name_lower].get_index_by_name(
                operation.name
            )
        )
        getattr(schema_editor, method)(model, index, concurrently=True)
    return True


class AddIndexConcurrentlyOnPostgres(migrations.AddIndex):
    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not _concurrently(self, schema_editor, app_label, to_state, "add_index"):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not _concurrently(self, schema_editor, app_label, from_state, "remove_index"):
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class RemoveIndexConcurrentlyOnPostgres(migrations.RemoveIndex):
    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not _concurrently(self, schema_editor, app_label, from_state, "remove_index"):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not _concurrently(self, schema_editor, app_label, to_state, "add_index"):
            super().database_backwards(app_label, schema_editor, from_state, to_state)
