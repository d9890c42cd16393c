"""Indexes for the API: ordering by start and by duration, and, on PostgreSQL only, GIN indexes.

- ``jobstatus_run_params_gin`` serves ``?params={...}`` (``@>``).
- ``jobstatus_run_search_trgm`` serves ``?q=`` (``UPPER(col) LIKE UPPER('%text%')`` on
  job_name, subject and message) with the pg_trgm extension; it is skipped, with a
  warning, where the extension cannot be installed.

Other databases have neither (nor ``@>``: the API filters params with key lookups). They
are created by RunPython and change no model state, so ``makemigrations`` stays clean.
Every index is built CONCURRENTLY on PostgreSQL: workers keep writing runs meanwhile.
"""

from __future__ import annotations

from typing import Any

import django.db.models.expressions
from django.db import migrations, models

from django_jobstatus.migrations._concurrently import (
    AddIndexConcurrentlyOnPostgres,
    trigram_extension,
)

GIN_INDEX = "jobstatus_run_params_gin"
TRGM_INDEX = "jobstatus_run_search_trgm"


def create_gin_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_jobstatus", "JobRun")._meta.db_table)
    # CONCURRENTLY: adding it to a big existing table does not block writes.
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {GIN_INDEX} ON {table} USING gin (params jsonb_path_ops)")
    if not trigram_extension(schema_editor, "the API's ?q= search will scan the table."):
        return
    # The expressions are the ones Django writes for icontains, so the planner matches them.
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TRGM_INDEX} ON {table} USING gin"
        " (UPPER(job_name::text) gin_trgm_ops, UPPER(subject::text) gin_trgm_ops, UPPER(message) gin_trgm_ops)"
    )


def drop_gin_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TRGM_INDEX}")
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {GIN_INDEX}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("django_jobstatus", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(fields=["started_at"], name="jobstatus_run_started_idx"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(
                django.db.models.expressions.CombinedExpression(models.F("finished_at"), "-", models.F("started_at")),
                name="jobstatus_run_duration_idx",
            ),
        ),
        migrations.RunPython(create_gin_indexes, drop_gin_indexes, elidable=False),
    ]
