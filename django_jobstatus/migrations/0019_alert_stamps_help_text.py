"""The alert stamps' help says every reason one stays empty (no alert target, the rate
limit, every target failed; for a resolution, an opening that was not announced).
Help text only: no SQL.
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0018_foreign_key_indexes_where_set"),
    ]

    operations = [
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="open_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the opening went out. Empty: none did (no alert target is set, the rate limit, or every target failed).",
                null=True,
                verbose_name="opening alerted",
            ),
        ),
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="resolve_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the resolution went out. Empty: none did (its opening was not announced, or every target failed).",
                null=True,
                verbose_name="resolution alerted",
            ),
        ),
    ]
