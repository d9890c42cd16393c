"""JobMonitorIncident.resolved_to: the state the monitor moved to as the incident ended
(healthy, or disabled). An end's alert sent again read it from the monitor, which had
moved on: "healthy again" for a monitor that was disabled. A column with a constant
default: on PostgreSQL a change of the catalog only; older incidents keep it empty.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0023_jobrun_due_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobmonitorincident",
            name="resolved_to",
            field=models.CharField(
                blank=True,
                choices=[
                    ("healthy", "Healthy"),
                    ("late", "Late"),
                    ("failing", "Failing"),
                    ("slow", "Slow"),
                    ("disabled", "Disabled"),
                ],
                default="",
                help_text="The state the monitor moved to as the incident ended.",
                max_length=8,
                verbose_name="resolved to",
            ),
        ),
    ]
