"""JobMonitor.cadence_changed_at: when ``every`` or ``cron`` last changed, so that a new
cadence expects no run before it was given (an edit from daily to hourly made the monitor
late at once). Empty for the monitors already there: their cadence counts as before.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0021_alert_queued_stamps"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobmonitor",
            name="cadence_changed_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When “every” or the cron expression last changed; the new cadence expects no run before. Empty: unchanged since its creation.",
                null=True,
                verbose_name="cadence changed",
            ),
        ),
    ]
