"""Health: JobMonitor (one per job name) and JobMonitorIncident (its history of late, failing and slow spells)."""

import datetime
import django.core.validators
import django.db.models.deletion
import django.utils.timezone
import django_jobstatus.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_jobstatus', '0004_big_table_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='JobMonitor',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('job_name', models.CharField(help_text='The job to watch: a name its runs are recorded with.', max_length=255, unique=True, verbose_name='job name')),
                ('every', models.DurationField(blank=True, help_text='How often the job should start, e.g. “1:00:00” for hourly. Or give a cron expression.', null=True, validators=[django_jobstatus.models.validate_positive_duration], verbose_name='every')),
                ('cron', models.CharField(blank=True, default='', help_text='When the job should start, as a cron expression in TIME_ZONE, e.g. “0 2 * * *”.', max_length=255, validators=[django_jobstatus.models.validate_cron], verbose_name='cron')),
                ('grace', models.DurationField(default=datetime.timedelta(seconds=300), help_text='How long after the expected time a missing run is still not late.', validators=[django_jobstatus.models.validate_not_negative_duration], verbose_name='grace')),
                ('max_duration', models.DurationField(blank=True, help_text='A run taking longer is slow.', null=True, validators=[django_jobstatus.models.validate_positive_duration], verbose_name='maximum duration')),
                ('max_duration_p95_factor', models.FloatField(blank=True, help_text="A run taking longer than this many times the job's own p95 duration is slow (p95 of its recent finished runs). Instead of a maximum duration.", null=True, validators=[django.core.validators.MinValueValidator(1.0), django.core.validators.MaxValueValidator(1000.0)], verbose_name='maximum duration, × p95')),
                ('max_failures', models.PositiveIntegerField(default=1, help_text='This many failed runs in a row make the job failing; 0: failures never do.', validators=[django.core.validators.MaxValueValidator(100)], verbose_name='maximum failures')),
                ('enabled', models.BooleanField(default=True, verbose_name='enabled')),
                ('state', models.CharField(choices=[('healthy', 'Healthy'), ('late', 'Late'), ('failing', 'Failing'), ('slow', 'Slow'), ('disabled', 'Disabled')], default='healthy', editable=False, max_length=8, verbose_name='state')),
                ('state_changed_at', models.DateTimeField(blank=True, editable=False, null=True, verbose_name='state changed')),
                ('checked_at', models.DateTimeField(blank=True, editable=False, null=True, verbose_name='last checked')),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False, verbose_name='created')),
            ],
            options={
                'verbose_name': 'job monitor',
                'verbose_name_plural': 'job monitors',
                'ordering': ['job_name'],
                'indexes': [models.Index(fields=['state', 'job_name'], name='jobstatus_monitor_state_idx')],
            },
        ),
        migrations.CreateModel(
            name='JobMonitorIncident',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('state', models.CharField(choices=[('failing', 'Failing'), ('late', 'Late'), ('slow', 'Slow')], max_length=8, verbose_name='state')),
                ('opened_at', models.DateTimeField(default=django.utils.timezone.now, verbose_name='opened')),
                ('resolved_at', models.DateTimeField(blank=True, null=True, verbose_name='resolved')),
                ('detail', models.TextField(blank=True, default='', verbose_name='detail')),
                ('run_id', models.UUIDField(blank=True, help_text='The run that showed the problem, when one did.', null=True, verbose_name='run')),
                ('open_alert_at', models.DateTimeField(blank=True, help_text='When the alert of the opening was sent; empty: not sent (rate limit).', null=True, verbose_name='opening alerted')),
                ('resolve_alert_at', models.DateTimeField(blank=True, null=True, verbose_name='resolution alerted')),
                ('monitor', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='incidents', to='django_jobstatus.jobmonitor', verbose_name='monitor')),
            ],
            options={
                'verbose_name': 'monitor incident',
                'verbose_name_plural': 'monitor incidents',
                'ordering': ['-opened_at', '-id'],
                'indexes': [models.Index(fields=['monitor', 'opened_at'], name='jobstatus_incident_monitor_idx'), models.Index(fields=['opened_at'], name='jobstatus_incident_opened_idx')],
                'constraints': [models.UniqueConstraint(condition=models.Q(('resolved_at__isnull', True)), fields=('monitor',), name='jobstatus_incident_one_open')],
            },
        ),
    ]
