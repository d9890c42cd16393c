"""Index operations that build or drop CONCURRENTLY on PostgreSQL, and plainly elsewhere; pg_trgm.

CONCURRENTLY: adding or removing an index on a big table that workers are writing to does
not block them. A migration using these must set ``atomic = False``. (The leading
underscore keeps Django's migration loader from taking this module for a migration.)
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, migrations, models

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


# Where a foreign key's index can be dropped alone (MySQL needs one for the key).
_INDEX_DROPPED_ALONE = ("postgresql", "sqlite")


def _concurrently_on_postgres(schema_editor: Any) -> dict[str, bool]:
    """``concurrently=True`` on PostgreSQL; nothing elsewhere (SQLite's editor has no such keyword)."""
    postgres = schema_editor.connection.vendor == "postgresql"
    return {"concurrently": True} if postgres else {}


class DropForeignKeyIndexConcurrentlyOnPostgres(migrations.AlterField):
    """``AlterField`` to ``db_index=False`` of a foreign key that an index of ``Meta.indexes``
    now serves: only the field's own index is dropped, CONCURRENTLY on PostgreSQL.

    Django's ``AlterField`` would also drop the foreign key and add it again on PostgreSQL
    (without the ``ON DELETE`` action migration 0008 gave it, and validated while the table
    is locked), and rebuild the whole table on SQLite. Backwards, the index comes back
    under the name Django gives it. On other databases this is Django's ``AlterField``.
    """

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor not in _INDEX_DROPPED_ALONE:
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        column = model._meta.get_field(self.name).column
        declared = {index.name for index in model._meta.indexes}
        with schema_editor.connection.cursor() as cursor:
            found = schema_editor.connection.introspection.get_constraints(
                cursor, model._meta.db_table
            )
        for name, details in found.items():
            # What Django's AlterField drops: a plain index of the column alone, not declared.
            if (
                details["index"]
                and details["columns"] == [column]
                and details["type"] == models.Index.suffix
                and not (details["unique"] or details["primary_key"])
                and name not in declared
            ):
                index = models.Index(fields=[self.name], name=name)
                schema_editor.remove_index(
                    model, index, **_concurrently_on_postgres(schema_editor)
                )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor not in _INDEX_DROPPED_ALONE:
            super().database_backwards(app_label, schema_editor, from_state, to_state)
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        column = model._meta.get_field(self.name).column
        name = schema_editor._create_index_name(model._meta.db_table, [column])
        index = models.Index(fields=[self.name], name=name)
        schema_editor.add_index(
            model, index, **_concurrently_on_postgres(schema_editor)
        )
