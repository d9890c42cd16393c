"""Indexes for the API: ordering by start and by duration, and a GIN index on params.

The GIN index (PostgreSQL only) serves ``?params={...}`` (``@>``); other databases have no
GIN index and no ``@>``, and the API filters them with key lookups. It is created by
RunPython and changes no model state, so ``makemigrations`` stays clean everywhere.
"""

from __future__ import annotations

from typing import Any

import django.db.models.expressions
from django.db import migrations, models

GIN_INDEX = "jobstatus_run_params_gin"


def create_gin_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_jobstatus", "JobRun")._meta.db_table)
    # CONCURRENTLY: adding it to a big existing table does not block writes.
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {GIN_INDEX} ON {table} USING gin (params jsonb_path_ops)")


def drop_gin_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {GIN_INDEX}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("django_jobstatus", "0001_initial"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="jobrun",
            index=models.Index(fields=["started_at"], name="jobstatus_run_started_idx"),
        ),
        migrations.AddIndex(
            model_name="jobrun",
            index=models.Index(
                django.db.models.expressions.CombinedExpression(models.F("finished_at"), "-", models.F("started_at")),
                name="jobstatus_run_duration_idx",
            ),
        ),
        migrations.RunPython(create_gin_index, drop_gin_index, elidable=False),
    ]
