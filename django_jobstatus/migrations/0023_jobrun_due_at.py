"""JobRun.due_at: when a job scheduled for later is due (a Celery ETA or countdown, RQ's
enqueue_at/enqueue_in and retry intervals, a task's run_after). The queued timeout counted
such a job's wait from its enqueue and ended it before it was due. A nullable column with
no default: no table rewrite, on PostgreSQL a change of the catalog only.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0022_jobmonitor_cadence_changed_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobrun",
            name="due_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When a job scheduled for later is due (an ETA or countdown, enqueue_at, run_after, a retry's delay): a worker is not expected before.",
                null=True,
                verbose_name="due",
            ),
        ),
    ]
