"""Admin registrations (JobRun, JobLog, the dashboard)."""

from __future__ import annotations
