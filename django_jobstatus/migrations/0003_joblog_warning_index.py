"""A partial index on the warning and error lines, for "WARNING and above, newest first".

On PostgreSQL it is built CONCURRENTLY, so adding it to a big log table that workers are
writing to does not block them; elsewhere it is a plain CREATE INDEX.
"""

from __future__ import annotations

from django.db import migrations, models

from django_jobstatus.migrations._concurrently import AddIndexConcurrentlyOnPostgres


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
