"""Admin registrations: JobRun, JobLog, and the dashboard's row on the admin index."""

from __future__ import annotations

from django.contrib import admin

from django_jobstatus.admin.dashboard import DashboardAdmin
from django_jobstatus.admin.logs import JobLogAdmin
from django_jobstatus.admin.monitors import JobMonitorAdmin, JobMonitorIncidentAdmin
from django_jobstatus.admin.runs import JobRunAdmin
from django_jobstatus.models import (
    Dashboard,
    JobLog,
    JobMonitor,
    JobMonitorIncident,
    JobRun,
)

admin.site.register(JobRun, JobRunAdmin)
admin.site.register(JobLog, JobLogAdmin)
admin.site.register(Dashboard, DashboardAdmin)
admin.site.register(JobMonitor, JobMonitorAdmin)
admin.site.register(JobMonitorIncident, JobMonitorIncidentAdmin)

__all__ = [
    "DashboardAdmin",
    "JobLogAdmin",
    "JobMonitorAdmin",
    "JobMonitorIncidentAdmin",
    "JobRunAdmin",
]
