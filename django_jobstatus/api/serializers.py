"""Serializers of the API: a run with its derived values, a log line, and the bodies of actions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import QueryDict
from django.urls import NoReverseMatch
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from django_jobstatus import health
from django_jobstatus.api.permissions import sees_incidents
from django_jobstatus.models import (
    JobLog,
    JobMonitor,
    JobMonitorIncident,
    JobRun,
    Status,
)
from django_jobstatus.redaction import redact
from django_jobstatus.values import escaped

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
            "due_at",
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


class _RunIdField(serializers.UUIDField):
    """A run id as a string: DRF's UUIDField also takes integers (and so false, as 0)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class _StrictBooleanField(serializers.BooleanField):
    """A JSON ``true``/``false`` (or a form's "true"/"false"): DRF's BooleanField also takes 0, 1 and "yes"."""

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        form = isinstance(getattr(self.root, "initial_data", None), QueryDict)
        if form and isinstance(data, str) and data.lower() in {"true", "false"}:
            return data.lower() == "true"
        self.fail("invalid", input=data)
        raise AssertionError  # pragma: no cover (fail() raises)


class _StrictBody(serializers.Serializer):
    """A request's body: a key that is not one of its fields is a 400 naming it.

    A misspelt ``ids`` (``idz``) must not leave the list filters to pick every run they
    match, a misspelt ``force`` make a kill that is quietly not forced, nor a misspelt
    monitor field (``enabeld``) answer 200 for a change that was not made. Read-only fields
    (a monitor's ``state``) are fields: a body read from the API may be sent back.
    """

    # Django's CSRF token, posted with the form of the browsable API.
    _ALLOWED = frozenset({"csrfmiddlewaretoken"})

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        data = self.initial_data
        keys = data.keys() if hasattr(data, "keys") else ()
        unknown = sorted(set(keys) - set(self.fields) - self._ALLOWED)
        if unknown:
            choices = ", ".join(sorted(self.fields))
            raise serializers.ValidationError(
                {
                    escaped(name): [
                        _("%(name)r is not a field here; use one of %(choices)s.")
                        % {"name": name, "choices": choices}
                    ]
                    for name in unknown
                }
            )
        return attrs


class KillSerializer(_StrictBody):
    force = _StrictBooleanField(
        default=False,
        help_text=_(
            "End the run killed now and stop the job where its task system can "
            "(Celery: terminate; RQ: stop-job or cancel), instead of only asking it."
        ),
    )


# The most ids a bulk action takes, and the most runs a bulk retry enqueues again.
BULK_MAX = 1000


class BulkSerializer(_StrictBody):
    """The body of a bulk action: the runs' ids, or none (then the list filters pick them)."""

    ids = serializers.ListField(
        child=_RunIdField(),
        required=False,
        max_length=BULK_MAX,
        help_text=_(
            "Ids of the runs. Without ids, the list filters in the query string pick the runs."
        ),
    )


class KillRequestSerializer(KillSerializer, BulkSerializer):
    """The body of a bulk kill: the runs' ids (or none: the list filters), and force."""


class NotStoppedSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="run_id")
    job_name = serializers.CharField()
    reason = serializers.CharField(
        help_text=_("Why the task system could not stop it.")
    )
    error = serializers.BooleanField(
        help_text=_(
            "True when the task system failed (e.g. its broker is down); the kill request is recorded all the same."
        )
    )


_NOT_STOPPED_HELP = _(
    "Runs whose task system failed to take the kill (errors) and, when forced, running "
    "runs that nothing can stop (they stop at their next progress call, if they make one)."
)


_IN_BATCHES_HELP = _(
    "Runs under the batches' parents picked, down through nested batches, newly asked to "
    "stop too (with force: ended killed now); not counted in asked or killed."
)


class KillResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text=_("Runs the ids or filters picked."))
    active = serializers.IntegerField(
        help_text=_("Of those, runs still active (queued, running or retrying).")
    )
    asked = serializers.IntegerField(
        help_text=_("Runs newly asked to stop (not asked before).")
    )
    killed = serializers.IntegerField(
        help_text=_("Runs ended killed now (only with force).")
    )
    in_batches = serializers.IntegerField(help_text=_IN_BATCHES_HELP)
    not_stopped = NotStoppedSerializer(many=True, help_text=_NOT_STOPPED_HELP)


class RetriedSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text=_("The run enqueued again."))
    job_name = serializers.CharField()
    new_id = serializers.UUIDField(help_text=_("The new run its task system recorded."))


class NotRetriedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    job_name = serializers.CharField()
    reason = serializers.CharField(help_text=_("Why it was not enqueued again."))
    error = serializers.BooleanField(
        help_text=_(
            "True when the task system failed (e.g. its broker is down): trying again later may work."
        )
    )


class RetryResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text=_("Runs the ids or filters picked."))
    retried = RetriedSerializer(
        many=True, help_text=_("The runs enqueued again, each with its new run.")
    )
    not_retried = NotRetriedSerializer(
        many=True,
        help_text=_(
            "The runs that were not: still active, no enabled integration can enqueue them "
            "again, or their task system failed."
        ),
    )


class DeleteResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text=_("Runs the ids or filters picked."))
    deleted = serializers.IntegerField(help_text=_("Finished runs deleted."))
    logs = serializers.IntegerField(help_text=_("Their log lines, deleted with them."))
    not_finished = serializers.IntegerField(
        help_text=_(
            "Runs left because they are not finished (queued, running or retrying)."
        )
    )
    held = serializers.IntegerField(
        help_text=_(
            "Finished runs left: a batch that has not ended still counts them, another "
            "process held them while the deletes ran (e.g. another purge), or they "
            "finished just after; deleting again later may take them."
        )
    )


class DeleteFailedSerializer(serializers.Serializer):
    detail = serializers.CharField()
    deleted = serializers.IntegerField(
        help_text=_("Finished runs deleted before the database failed.")
    )


class KilledRunSerializer(JobRunSerializer):
    """A run after a kill request, with what its task system could not do."""

    in_batches = serializers.IntegerField(read_only=True, help_text=_IN_BATCHES_HELP)
    not_stopped = NotStoppedSerializer(
        many=True, read_only=True, help_text=_NOT_STOPPED_HELP
    )

    class Meta(JobRunSerializer.Meta):
        fields = [*JobRunSerializer.Meta.fields, "in_batches", "not_stopped"]
        read_only_fields = fields


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


class _BoundField(serializers.DateTimeField):
    """A bound of the stats' range: in the current time zone, as every moment the API
    answers, or in UTC where local time cannot write it.

    A moment at the edge of what UTC holds is a valid bound (docs/api.md), but
    9999-12-31T23:59:59Z is in the year 10000 in Berlin (DRF answered "Datetime value out of
    range.", a 400 naming nothing), and New York's offset before 1883 was -04:56:02, which
    RFC 3339 cannot write.
    """

    def enforce_timezone(self, value: datetime) -> datetime:
        try:
            local: datetime = super().enforce_timezone(value)
        except serializers.ValidationError:  # it overflows
            return value.astimezone(UTC)
        if (local.utcoffset() or timedelta(0)) % timedelta(minutes=1):
            return value.astimezone(UTC)
        return local


class StatsSerializer(serializers.Serializer):
    since = _BoundField(
        allow_null=True, help_text=_("Start of the range (runs created at or after).")
    )
    until = _BoundField(
        allow_null=True,
        help_text=_("End of the range (runs created before); null: now."),
    )
    jobs = JobStatsSerializer(many=True)
    buckets = BucketSerializer(
        many=True,
        required=False,
        help_text=_("Finished runs per hour or day (with ?bucket=)."),
    )


# Monitors.


@extend_schema_field(OpenApiTypes.NUMBER)
class SecondsField(serializers.Field):
    """A duration as a number of seconds (the model's validators judge its sign)."""

    default_error_messages = {"invalid": _("Give a number of seconds.")}

    def to_representation(self, value: timedelta) -> float:
        return value.total_seconds()

    def to_internal_value(self, data: Any) -> timedelta:
        if isinstance(data, bool):
            self.fail("invalid")
        try:
            return timedelta(seconds=float(data))
        except (TypeError, ValueError, OverflowError):
            self.fail("invalid")
        raise AssertionError  # fail() raised


class JobMonitorIncidentSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobMonitorIncident
        fields = ["id", "state", "opened_at", "resolved_at", "detail", "run_id"]
        read_only_fields = fields


class OpenIncidentSerializer(JobMonitorIncidentSerializer):
    """A monitor's open incident, whose detail only a user who may read incidents sees."""

    detail = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text=_(
            "Why the incident opened; null without view_jobmonitorincident, as it quotes failed runs' errors."
        ),
    )


class _LastRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Status.choices)
    created_at = serializers.DateTimeField()


class JobMonitorSerializer(_StrictBody, serializers.ModelSerializer):
    """A monitor with its job's newest run, the next expected run and the open incident.

    Writes are validated by the model (``full_clean()``), as in the admin: a bad cron
    expression, a negative duration or an unknown job name is a 400 naming the field.
    """

    every = SecondsField(
        required=False,
        allow_null=True,
        help_text=_(
            "Seconds between two expected starts; null with a cron expression."
        ),
    )
    grace = SecondsField(
        required=False,
        help_text=_("Seconds after the expected time before the job counts as late."),
    )
    max_duration = SecondsField(
        required=False,
        allow_null=True,
        help_text=_("Seconds a run may take before it is slow."),
    )
    last_run = serializers.SerializerMethodField(
        help_text=_("The job's newest run; null when it has none.")
    )
    next_expected_at = serializers.SerializerMethodField(
        help_text=_("When the job should start next; null without a cadence.")
    )
    open_incident = serializers.SerializerMethodField(
        help_text=_("The incident open now; null when the job is healthy.")
    )

    class Meta:
        model = JobMonitor
        fields = [
            "id",
            "job_name",
            "every",
            "cron",
            "grace",
            "max_duration",
            "max_duration_p95_factor",
            "max_failures",
            "enabled",
            "state",
            "state_changed_at",
            "checked_at",
            "enabled_at",
            "cadence_changed_at",
            "last_run",
            "next_expected_at",
            "open_incident",
        ]
        read_only_fields = [
            "state",
            "state_changed_at",
            "checked_at",
            "enabled_at",
            "cadence_changed_at",
        ]
        extra_kwargs = {
            "job_name": {
                "min_length": 1,  # in the schema too
                # Unique: the model's check, which asks DATABASE (DRF's asks the replica).
                "validators": [],
            }
        }

    @extend_schema_field(_LastRunSerializer(allow_null=True))
    def get_last_run(self, monitor: JobMonitor) -> dict[str, Any] | None:
        run_id = getattr(monitor, "last_run_id", None)
        if run_id is None:
            return None
        return {
            "id": str(run_id),
            "status": monitor.last_run_status,  # type: ignore[attr-defined]
            "created_at": serializers.DateTimeField().to_representation(
                monitor.last_run_at  # type: ignore[attr-defined]
            ),
        }

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_expected_at(self, monitor: JobMonitor) -> str | None:
        expected = health.expected_at(monitor)
        return (
            None
            if expected is None
            else serializers.DateTimeField().to_representation(expected)
        )

    @extend_schema_field(OpenIncidentSerializer(allow_null=True))
    def get_open_incident(self, monitor: JobMonitor) -> dict[str, Any] | None:
        incident = health.open_incident(monitor)
        if incident is None:
            return None
        shown = dict(OpenIncidentSerializer(incident).data)
        request = self.context.get("request")
        if request is None or not sees_incidents(request.user):
            shown["detail"] = None
        return shown

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        monitor = self.instance or JobMonitor()
        for field, value in attrs.items():
            setattr(monitor, field, value)
        try:
            monitor.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs
