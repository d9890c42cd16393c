"""JobMonitor.enabled_at: when a monitor was last turned on again, so that a monitor enabled
after a pause expects no run before then, as a new one expects none before its creation.
Empty for the monitors already there: they count from their creation, as before.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0015_failure_group_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobmonitor",
            name="enabled_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the monitor was last turned on again; no run is expected before. Empty: on since its creation.",
                null=True,
                verbose_name="enabled again",
            ),
        ),
    ]
