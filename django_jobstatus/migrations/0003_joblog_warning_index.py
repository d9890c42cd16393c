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
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(
                app_label, schema_editor, from_state, to_state
            )
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(
                app_label, schema_editor, from_state, to_state
            )
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)


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
