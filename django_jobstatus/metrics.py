"""Prometheus/OpenMetrics figures, computed from the tables at each scrape (the ``metrics`` extra).

Every process reads the same rows, so every process agrees. A scrape is three queries:
``stats()`` over the runs created in the last ``METRICS_WINDOW`` seconds (an index range
on ``created_at``), the active runs (the partial index of active states), and the monitors.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from django_jobstatus.conf import settings
from django_jobstatus.models import JobMonitor, JobRun, MonitorState, Status

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric


class JobStatusCollector(Collector):
    """A custom collector: its figures come from the database at each ``collect()``."""

    def __init__(self, *, using: str | None = None, now: datetime | None = None):
        self.using = using or settings.DATABASE
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        yield from self._recent(now)
        yield from self._active(now)
        yield self._monitors()

    def _recent(self, now: datetime) -> Iterator[Metric]:
        window = float(settings.METRICS_WINDOW)
        since = now - timedelta(seconds=window)
        rows = JobRun.objects.using(self.using).filter(created_at__gte=since).stats()
        runs = GaugeMetricFamily(
            "jobstatus_recent_runs",
            f"Runs created in the last {window:g} seconds, by job and status (statuses with none left out).",
            labels=["job_name", "status"],
        )
        p50 = GaugeMetricFamily(
            "jobstatus_run_duration_p50_seconds",
            f"Median duration of the finished runs created in the last {window:g} seconds.",
            labels=["job_name"],
        )
        p95 = GaugeMetricFamily(
            "jobstatus_run_duration_p95_seconds",
            f"95th percentile duration of the finished runs created in the last {window:g} seconds.",
            labels=["job_name"],
        )
        for row in rows:
            name = row["job_name"]
            for status, count in row["counts"].items():
                if count:  # a status with no run in the window is left out
                    runs.add_metric([name, status], count)
            if row["p50_duration"] is not None:
                p50.add_metric([name], row["p50_duration"])
                p95.add_metric([name], row["p95_duration"])
        yield from (runs, p50, p95)

    def _active(self, now: datetime) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "jobstatus_active_runs",
            "Runs not finished yet (queued, running, retrying), by job and status.",
            labels=["job_name", "status"],
        )
        oldest = GaugeMetricFamily(
            "jobstatus_oldest_queued_age_seconds",
            "Seconds since the oldest queued run of each job was created.",
            labels=["job_name"],
        )
        rows = (
            JobRun.objects.using(self.using)
            .active()
            .values_list("job_name", "status")
            # count(*) and the index's order: an index-only scan of jobstatus_run_active_job_idx.
            .annotate(n=Count("*"), oldest=Min("created_at"))
            .order_by("status", "job_name")
        )
        for name, status, count, since in rows:
            active.add_metric([name, status], count)
            if status == Status.QUEUED and since is not None:
                oldest.add_metric([name], max((now - since).total_seconds(), 0.0))
        yield from (active, oldest)

    def _monitors(self) -> Metric:
        states = StateSetMetricFamily(
            "jobstatus_monitor_state",
            "Each job monitor's state: healthy, late, failing, slow or disabled.",
            labels=["job_name"],
        )
        monitors = JobMonitor.objects.using(self.using).order_by("job_name")
        for name, state in monitors.values_list("job_name", "state"):
            states.add_metric(
                [name], {value: value == state for value in MonitorState.values}
            )
        return states


def exposition(accept: str | None, **options: Any) -> tuple[bytes, str]:
    """The figures in the format the ``Accept`` header asks for: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobStatusCollector(**options))
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):
        # A version prometheus_client cannot parse (``version=abc``): Accept is only a
        # preference, so the default format rather than a 500.
        encoder, content_type = choose_encoder("")
    return encoder(registry), content_type
