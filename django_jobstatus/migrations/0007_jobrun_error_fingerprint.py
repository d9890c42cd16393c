"""JobRun.error_fingerprint, its partial index for the failures view, and its backfill.

The index is built CONCURRENTLY on PostgreSQL (as in 0003), so workers writing runs are
not blocked; the backfill fingerprints the failed and lost runs already there, in batches.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from django_jobstatus.fingerprints import fingerprint

from django_jobstatus.migrations._concurrently import AddIndexConcurrentlyOnPostgres

BATCH = 1000


def backfill(apps: Any, schema_editor: Any) -> None:
    JobRun = apps.get_model("django_jobstatus", "JobRun")
    runs = JobRun.objects.using(schema_editor.connection.alias)
    last = None
    while True:
        batch = runs.filter(status__in=["failed", "lost"]).order_by("pk")
        if last is not None:
            batch = batch.filter(pk__gt=last)
        rows = list(batch.values_list("pk", "status", "error", "message")[:BATCH])
        for pk, status, error, message in rows:
            text = error or (message if status == "lost" else "")
            if text:
                runs.filter(pk=pk).update(error_fingerprint=fingerprint(text))
        if len(rows) < BATCH:
            return
        last = rows[-1][0]


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("django_jobstatus", "0006_jobrun_active_job_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobrun",
            name="error_fingerprint",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                editable=False,
                help_text="The error with its numbers, ids and quoted values stripped: runs failing for one cause share it.",
                max_length=255,
                verbose_name="error fingerprint",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(
                condition=models.Q(("status__in", ["failed", "lost"])),
                fields=["finished_at", "job_name", "error_fingerprint"],
                name="jobstatus_run_failure_idx",
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
