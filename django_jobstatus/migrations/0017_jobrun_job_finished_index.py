"""An index of each job's finished runs by finish time: a monitor judges the last runs to
finish (``health.py``), and a run created before many newer ones that ended first is read
one range of this index away, however many runs the table holds. Partial, on the runs that
have a finish time (the finished ones): a run is written into it once, when it finishes
(an UPDATE that changes indexed columns, so never a HOT one: one index entry more), never
when it is queued or started.
Built CONCURRENTLY on PostgreSQL.
"""

from __future__ import annotations

from django.db import migrations, models

from django_jobstatus.migrations._concurrently import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("django_jobstatus", "0016_jobmonitor_enabled_at"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="jobrun",
            index=models.Index(
                condition=models.Q(("finished_at__isnull", False)),
                fields=["job_name", "finished_at", "id"],
                name="jobstatus_run_job_finished_idx",
            ),
        ),
    ]
