"""Serializers of the API: a run with its derived values, a log line, and the bodies of actions."""

from __future__ import annotations

import logging
from typing import Any

from django.urls import NoReverseMatch
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.redaction import redact

# Stands for a run id in URLs reversed once for a whole page.
_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def _seconds(value: Any) -> float | None:
    return None if value is None else value.total_seconds()


@extend_schema_field(OpenApiTypes.ANY)
class RedactedJSONField(serializers.JSONField):
    """JSON shown with the values of JOBSTATUS["REDACT_KEYS"] masked, at any depth."""

    def to_representation(self, value: Any) -> Any:
        return redact(value)


class JobRunSerializer(serializers.ModelSerializer):
    params = RedactedJSONField(
        read_only=True, help_text=_("The job's arguments (sensitive keys masked).")
    )
    data = RedactedJSONField(
        read_only=True, help_text=_("Job-specific data (sensitive keys masked).")
    )
    result = RedactedJSONField(
        read_only=True,
        allow_null=True,
        help_text=_("The job's result (sensitive keys masked)."),
    )
    progress = serializers.FloatField(
        read_only=True,
        allow_null=True,
        help_text=_("Share done, 0.0 to 1.0; null while the total is unknown."),
    )
    duration = serializers.SerializerMethodField(
        help_text=_(
            "Seconds the last attempt ran (growing while it runs); null before it starts."
        )
    )
    waiting = serializers.SerializerMethodField(
        help_text=_(
            "Seconds spent queued before the start (growing while it waits); null if never queued."
        )
    )
    is_active = serializers.BooleanField(read_only=True)
    is_finished = serializers.BooleanField(read_only=True)
    kill_requested = serializers.BooleanField(read_only=True)
    logs_url = serializers.SerializerMethodField(
        help_text=_("This run's log lines in the API.")
    )
    admin_url = serializers.SerializerMethodField(
        help_text=_("This run's admin page; null when the admin is not mounted.")
    )

    class Meta:
        model = JobRun
        fields = [
            "id",
            "job_name",
            "status",
            "source",
            "backend_job_id",
            "queue",
            "priority",
            "subject",
            "params",
            "data",
            "result",
            "message",
            "step",
            "progress_current",
            "progress_total",
            "progress",
            "error",
            "error_fingerprint",
            "traceback",
            "has_errors",
            "attempt",
            "attempts",
            "worker",
            "owner",
            "parent",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "kill_requested_at",
            "updated_at",
            "duration",
            "waiting",
            "is_active",
            "is_finished",
            "kill_requested",
            "logs_url",
            "admin_url",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_duration(self, run: JobRun) -> float | None:
        return _seconds(run.duration)

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_waiting(self, run: JobRun) -> float | None:
        return _seconds(run.waiting)

    @extend_schema_field(serializers.URLField())
    def get_logs_url(self, run: JobRun) -> str:
        return str(self._urls()["logs"]).replace(_PLACEHOLDER, str(run.pk))

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_admin_url(self, run: JobRun) -> str | None:
        template = self._urls()["admin"]
        return template.replace(_PLACEHOLDER, str(run.pk)) if template else None

    def _urls(self) -> dict[str, str | None]:
        """The logs and admin URLs with a placeholder id, reversed once per response (not per run)."""
        cached: dict[str, Any] | None = self.context.get("_jobstatus_urls")
        if cached is None:
            request = self.context.get("request")
            match = getattr(request, "resolver_match", None)
            namespace = (
                match.namespace if match and match.namespace else "django_jobstatus"
            )
            logs = str(
                reverse(
                    f"{namespace}:jobrun-logs",
                    kwargs={"pk": _PLACEHOLDER},
                    request=request,
                )
            )
            try:
                admin: str | None = JobRun(pk=_PLACEHOLDER).get_absolute_url()
            except NoReverseMatch:
                admin = None
            if admin is not None and request is not None:
                admin = request.build_absolute_uri(admin)
            cached = self.context["_jobstatus_urls"] = {"logs": logs, "admin": admin}
        return cached


class JobLogSerializer(serializers.ModelSerializer):
    level_name = serializers.SerializerMethodField(
        help_text=_("The level's name, e.g. ERROR.")
    )
    extra = RedactedJSONField(read_only=True)

    class Meta:
        model = JobLog
        fields = ["id", "run", "created_at", "level", "level_name", "message", "extra"]
        read_only_fields = fields

    def get_level_name(self, entry: JobLog) -> str:
        return logging.getLevelName(entry.level)


class KillRequestSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=1000,
        help_text=_(
            "Ids of the runs to stop. Without ids, the list filters in the query string pick the runs."
        ),
    )


class KillResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text=_("Runs the ids or filters picked."))
    active = serializers.IntegerField(
        help_text=_("Of those, runs still active (queued, running or retrying).")
    )
    asked = serializers.IntegerField(
        help_text=_("Runs newly asked to stop (not asked before).")
    )


class DetailSerializer(serializers.Serializer):
    """An error with one message."""

    detail = serializers.CharField()


class ConflictSerializer(DetailSerializer):
    """A request the run's status does not allow."""

    status = serializers.ChoiceField(
        choices=Status.choices, help_text=_("The run's status.")
    )


class _CountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    retrying = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    killed = serializers.IntegerField()
    lost = serializers.IntegerField()


class JobStatsSerializer(serializers.Serializer):
    job_name = serializers.CharField()
    total = serializers.IntegerField()
    counts = _CountsSerializer()
    failure_rate = serializers.FloatField(
        allow_null=True, help_text=_("failed / finished.")
    )
    min_duration = serializers.FloatField(allow_null=True)
    avg_duration = serializers.FloatField(allow_null=True)
    max_duration = serializers.FloatField(allow_null=True)
    p50_duration = serializers.FloatField(allow_null=True)
    p95_duration = serializers.FloatField(allow_null=True)


class BucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text=_("Start of the hour or day."))
    finished = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    killed = serializers.IntegerField()
    lost = serializers.IntegerField()


class StatsSerializer(serializers.Serializer):
    since = serializers.DateTimeField(
        allow_null=True, help_text=_("Start of the range (runs created at or after).")
    )
    until = serializers.DateTimeField(
        allow_null=True,
        help_text=_("End of the range (runs created before); null: now."),
    )
    jobs = JobStatsSerializer(many=True)
    buckets = BucketSerializer(
        many=True,
        required=False,
        help_text=_("Finished runs per hour or day (with ?bucket=)."),
    )
