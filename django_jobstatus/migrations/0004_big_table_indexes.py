"""Indexes for a big history: (created_at, id) for newest-first pages, and trigram search of log lines.

- ``jobstatus_run_created_id_idx`` and ``jobstatus_log_created_id_idx`` replace the
  ``created_at`` indexes: the same newest-first order, and a deep page finds its first
  row with an index-only OFFSET of (created_at, id). Each new index is built before the
  old one is dropped, so the order is served throughout.
- The log lines' foreign key loses its own index: ``jobstatus_log_run_idx`` (run,
  created_at) serves every lookup by run, and each line written updates one index fewer.
- ``jobstatus_log_message_trgm``, on PostgreSQL only, serves the JobLog changelist's search
  (``UPPER(message) LIKE UPPER('%word%')``, what Django writes for icontains) with pg_trgm;
  it is skipped, with a warning, where the extension cannot be installed. It is made by
  RunPython and changes no model state, so ``makemigrations`` stays clean elsewhere.

Everything is built CONCURRENTLY on PostgreSQL: workers keep writing meanwhile.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

from django_jobstatus.migrations._concurrently import (
    AddIndexConcurrentlyOnPostgres,
    DropForeignKeyIndexConcurrentlyOnPostgres,
    RemoveIndexConcurrentlyOnPostgres,
    trigram_extension,
)

TRGM_INDEX = "jobstatus_log_message_trgm"


def create_message_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_jobstatus", "JobLog")._meta.db_table)
    if not trigram_extension(schema_editor, "the log search will scan the table."):
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TRGM_INDEX} ON {table} USING gin (UPPER(message) gin_trgm_ops)"
    )
    # The statistics of UPPER(message) come with the index, at the next ANALYZE: without
    # them the planner takes a common word for a rare one and reads every match to sort
    # them, instead of walking the newest lines until a page is full.
    schema_editor.execute(f"ANALYZE {table}")


def drop_message_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TRGM_INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("django_jobstatus", "0003_joblog_warning_index"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(fields=["created_at", "id"], name="jobstatus_run_created_id_idx"),
        ),
        RemoveIndexConcurrentlyOnPostgres(model_name="jobrun", name="jobstatus_run_created_idx"),
        AddIndexConcurrentlyOnPostgres(
            model_name="joblog",
            index=models.Index(fields=["created_at", "id"], name="jobstatus_log_created_id_idx"),
        ),
        RemoveIndexConcurrentlyOnPostgres(model_name="joblog", name="jobstatus_log_created_idx"),
        # The foreign key's own index repeats jobstatus_log_run_idx's first column: it
        # alone is dropped (Django's AlterField drops the key and adds it again, checked
        # against every line while the tables are locked).
        DropForeignKeyIndexConcurrentlyOnPostgres(
            model_name="joblog",
            name="run",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="logs",
                to="django_jobstatus.jobrun",
                verbose_name="run",
            ),
        ),
        migrations.RunPython(create_message_index, drop_message_index, elidable=False),
    ]
