"""The alert stamps' help names one more reason a stamp stays empty: the process that
queued the alert ended before it was sent (health.finish()). Help text only: no SQL.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0019_alert_stamps_help_text"),
    ]

    operations = [
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="open_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the opening went out. Empty: none did (no alert target is set, the rate limit, every target failed, or its process ended before it was sent).",
                null=True,
                verbose_name="opening alerted",
            ),
        ),
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="resolve_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the resolution went out. Empty: none did (its opening was not announced, every target failed, or its process ended before it was sent).",
                null=True,
                verbose_name="resolution alerted",
            ),
        ),
    ]
