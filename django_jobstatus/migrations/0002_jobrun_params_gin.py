"""A GIN index on JobRun.params, on PostgreSQL only: it serves ``?params={...}`` (``@>``).

Other databases have no GIN index (and no ``@>``); the API filters them with key lookups.
The operation changes no model state, so ``makemigrations`` stays clean everywhere.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

INDEX = "jobstatus_run_params_gin"


def create_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_jobstatus", "JobRun")._meta.db_table)
    # CONCURRENTLY: adding it to a big existing table does not block writes.
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {table} USING gin (params jsonb_path_ops)")


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("django_jobstatus", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
