"""A partial index on the warning and error lines, for "WARNING and above, newest first".

On PostgreSQL it is built CONCURRENTLY, so adding it to a big log table that workers are
writing to does not block them; elsewhere it is a plain CREATE INDEX.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(migrations.AddIndex):
    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not self._concurrently(schema_editor, app_label, to_state, "add_index"):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if not self._concurrently(schema_editor, app_label, from_state, "remove_index"):
            super().database_backwards(app_label, schema_editor, from_state, to_state)

    def _concurrently(
        self, schema_editor: Any, app_label: str, state: Any, method: str
    ) -> bool:
        """On PostgreSQL, add or remove the index CONCURRENTLY; False elsewhere."""
        if schema_editor.connection.vendor != "postgresql":
            return False
        model = state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            getattr(schema_editor, method)(model, self.index, concurrently=True)
        return True


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("django_jobstatus", "0002_jobrun_api_indexes"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="joblog",
            index=models.Index(
                condition=models.Q(level__gte=30),
                fields=["created_at", "id"],
                name="jobstatus_log_warning_idx",
            ),
        ),
    ]
