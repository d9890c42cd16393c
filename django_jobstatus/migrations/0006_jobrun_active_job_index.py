"""A partial index of the active runs by status, job and creation, for metrics/.

Built CONCURRENTLY on PostgreSQL (the operation of migration 0003), so adding it to a big
run table that workers are writing to does not block them.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

AddIndexConcurrentlyOnPostgres = importlib.import_module(
    "django_jobstatus.migrations.0003_joblog_warning_index"
).AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("django_jobstatus", "0005_jobmonitor"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(
                condition=models.Q(status__in=["queued", "running", "retrying"]),
                fields=["status", "job_name", "created_at"],
                name="jobstatus_run_active_job_idx",
            ),
        ),
    ]
