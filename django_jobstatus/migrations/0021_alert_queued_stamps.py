"""An alert's two stamps: queued (a process took it to send) and went out (a channel took
it). An alert queued and never sent (its process was killed, or every channel failed) is
sent again by ``check_jobstatus``. Stamps set before this migration were kept only for
alerts that went out: each is copied to its queued stamp. Two partial indexes hold the
alerts queued and not gone out (a few rows at most), for ``health.resend()``.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def _queued_when_sent(apps: Any, schema_editor: Any) -> None:
    incidents = apps.get_model("django_jobstatus", "JobMonitorIncident")
    rows = incidents.objects.using(schema_editor.connection.alias)
    for queued, sent in (
        ("open_alert_queued_at", "open_alert_at"),
        ("resolve_alert_queued_at", "resolve_alert_at"),
    ):
        rows.filter(**{f"{sent}__isnull": False}).update(**{queued: models.F(sent)})


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobstatus", "0020_alert_stamps_help_text_process_end"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobmonitorincident",
            name="open_alert_queued_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When a process last took the alert of the opening to send it. While the alert has not gone out, manage.py check_jobstatus sends it again (for a day).",
                null=True,
                verbose_name="opening alert queued",
            ),
        ),
        migrations.AddField(
            model_name="jobmonitorincident",
            name="resolve_alert_queued_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When a process last took the alert of the resolution to send it. While the alert has not gone out, manage.py check_jobstatus sends it again (for a day).",
                null=True,
                verbose_name="resolution alert queued",
            ),
        ),
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="open_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the opening went out (a channel took it). Empty: none did (no alert target is set, the rate limit, or it is queued: see when).",
                null=True,
                verbose_name="opening alerted",
            ),
        ),
        migrations.AlterField(
            model_name="jobmonitorincident",
            name="resolve_alert_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the alert of the resolution went out (a channel took it). Empty: none did (its opening was not announced, or it is queued: see when).",
                null=True,
                verbose_name="resolution alerted",
            ),
        ),
        migrations.RunPython(
            _queued_when_sent, migrations.RunPython.noop, elidable=True
        ),
        migrations.AddIndex(
            model_name="jobmonitorincident",
            index=models.Index(
                condition=models.Q(
                    ("open_alert_at__isnull", True),
                    ("open_alert_queued_at__isnull", False),
                ),
                fields=["open_alert_queued_at"],
                name="jobstatus_incident_open_unsent",
            ),
        ),
        migrations.AddIndex(
            model_name="jobmonitorincident",
            index=models.Index(
                condition=models.Q(
                    ("resolve_alert_at__isnull", True),
                    ("resolve_alert_queued_at__isnull", False),
                ),
                fields=["resolve_alert_queued_at"],
                name="jobstatus_incident_res_unsent",
            ),
        ),
    ]
