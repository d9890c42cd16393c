"""The API's one viewset: runs, with their logs, kill, latest and stats."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from django.db.models import Count, Q
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone
from django.utils.translation import gettext as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, routers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import get_object_or_404
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from django_jobstatus import contrib, export
from django_jobstatus.api.filters import JobLogFilterSet, JobRunFilterSet
from django_jobstatus.api.pagination import KeysetPagination, LogPagination
from django_jobstatus.api.permissions import owner_scoped
from django_jobstatus.api.serializers import (
    ConflictSerializer,
    DetailSerializer,
    JobLogSerializer,
    JobRunSerializer,
    KillRequestSerializer,
    KillResultSerializer,
    StatsSerializer,
)
from django_jobstatus.conf import settings
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.querysets import JobRunQuerySet

# The stats endpoint's range when the request gives none.
STATS_DEFAULT_PERIOD = timedelta(hours=24)
_BUCKETS = {"hour": TruncHour, "day": TruncDay}

_ERROR = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description=_(
        "Bad input: for each bad parameter or field, its messages (or ``detail`` for a body that is not JSON)."
    ),
    examples=[
        OpenApiExample(
            "Bad status",
            {
                "status": [
                    "'done' is not a valid choice; use one or more of queued, running, …"
                ]
            },
        )
    ],
)
_NOT_FOUND = OpenApiResponse(
    DetailSerializer, description=_("No run with this id (or not one you may see).")
)
_CONFLICT = OpenApiResponse(
    ConflictSerializer, description=_("The run's status does not allow it.")
)
_ID = OpenApiParameter(
    "id", OpenApiTypes.UUID, OpenApiParameter.PATH, description=_("The run's id.")
)
_DENIED = OpenApiResponse(
    DetailSerializer, description=_("Not signed in, or without the permission.")
)


class _FilterBackend(DjangoFilterBackend):
    """Each action names its own FilterSet (runs or log lines) through ``get_filterset_class()``."""

    def get_filterset_class(self, view: Any, queryset: Any = None) -> Any:
        return view.get_filterset_class()


def contrib_error(exc: Exception) -> str:
    """An integration's error as one line for a person: its class and message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _ExportNegotiation(DefaultContentNegotiation):
    """On the export, ``?format=`` names the file format (csv, jsonl), not a renderer: errors stay JSON."""

    def select_renderer(
        self, request: Any, renderers: Any, format_suffix: Any = None
    ) -> Any:
        return renderers[0], renderers[0].media_type


class Access:
    """Authentication and permissions from JOBSTATUS, for every view of the API.

    Settings are read per request, so that changes (and override_settings) apply at once.
    """

    def get_authenticators(self) -> list[Any]:
        classes = (
            settings.API_AUTHENTICATION_CLASSES
            or api_settings.DEFAULT_AUTHENTICATION_CLASSES
        )
        return [cls() for cls in classes]

    def get_permissions(self) -> list[Any]:
        return [cls() for cls in settings.API_PERMISSION_CLASSES]


class APIRootView(Access, routers.APIRootView):
    """The API's root (links to its lists), behind the same permissions as the rest."""


@extend_schema_view(
    list=extend_schema(
        summary=_("List runs"),
        description=_(
            "Runs, newest first (see ordering), filtered and paginated with a cursor."
        ),
        responses={
            200: JobRunSerializer(many=True),
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
        },
    ),
    retrieve=extend_schema(
        summary=_("One run"),
        parameters=[_ID],
        responses={200: JobRunSerializer, 401: _DENIED, 403: _DENIED, 404: _NOT_FOUND},
    ),
    destroy=extend_schema(
        summary=_("Delete a finished run"),
        parameters=[_ID],
        description=_(
            "Deletes the run and its log lines. Only finished runs: an active run answers 409."
        ),
        responses={
            204: None,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
            409: _CONFLICT,
        },
    ),
)
class JobRunViewSet(
    Access,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = JobRun.objects.all()
    serializer_class = JobRunSerializer
    filter_backends = [_FilterBackend]
    # Any path segment reaches the view, so that a malformed id answers a JSON 404.
    lookup_value_regex = "[^/]+"

    @property
    def pagination_class(self) -> type[KeysetPagination]:
        return (
            LogPagination
            if getattr(self, "action", None) == "logs"
            else KeysetPagination
        )

    def get_filterset_class(self) -> type[Any] | None:
        if self.action == "logs":
            return JobLogFilterSet
        if self.action in ("list", "stats", "bulk_kill", "export"):
            return JobRunFilterSet
        return None

    def get_serializer_class(self) -> type[Any]:
        return JobLogSerializer if self.action == "logs" else JobRunSerializer

    def get_queryset(self) -> JobRunQuerySet:
        runs = JobRun.objects.all()
        user = self.request.user
        if owner_scoped(user):
            runs = runs.filter(owner_id=user.pk)
        return runs

    def get_object(self) -> JobRun:
        try:
            uuid.UUID(str(self.kwargs["pk"]))
        except ValueError as exc:
            raise NotFound(
                _("%(value)r is not a run id (a UUID).") % {"value": self.kwargs["pk"]}
            ) from exc
        # Not filter_queryset(): the list filters pick runs for lists, not for one run.
        run = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        self.check_object_permissions(self.request, run)
        return cast(JobRun, run)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        run = self.get_object()
        if not run.is_finished:
            return Response(
                {
                    "detail": _(
                        "Only finished runs can be deleted; this one is %(status)s."
                    )
                    % {"status": run.status},
                    "status": run.status,
                },
                status=status.HTTP_409_CONFLICT,
            )
        run.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary=_("A run's log lines"),
        parameters=[_ID],
        description=_("Oldest first, filtered and paginated with a cursor."),
        responses={
            200: JobLogSerializer(many=True),
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
        },
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        lines = self.filter_queryset(JobLog.objects.for_run(run))
        page = self.paginate_queryset(lines)
        return self.get_paginated_response(
            JobLogSerializer(
                page, many=True, context=self.get_serializer_context()
            ).data
        )

    @extend_schema(
        summary=_("Ask a run to stop"),
        parameters=[_ID],
        description=_(
            "Records a kill request (and tells the task system, when its integration is on). The run stops at its next check."
        ),
        request=None,
        responses={
            202: JobRunSerializer,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
            409: _CONFLICT,
        },
    )
    @action(detail=True, methods=["post"])
    def kill(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        if run.is_finished:
            return Response(
                {
                    "detail": _("The run has already finished (%(status)s).")
                    % {"status": run.status},
                    "status": run.status,
                },
                status=status.HTTP_409_CONFLICT,
            )
        contrib.request_kill(JobRun.objects.filter(pk=run.pk))
        run.refresh_from_db()
        return Response(self.get_serializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="jobstatus_runs_bulk_kill",
        summary=_("Ask many runs to stop"),
        description=_(
            'Runs picked by {"ids": [...]} in the body, or by the list filters in the query string (at least one of them).'
        ),
        request=KillRequestSerializer,
        responses={200: KillResultSerializer, 400: _ERROR, 401: _DENIED, 403: _DENIED},
        filters=True,
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="kill",
        url_name="bulk-kill",
        parser_classes=[JSONParser],
    )
    def bulk_kill(self, request: Request) -> Response:
        body = KillRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ids = body.validated_data.get("ids")
        filtered = any(
            name in request.query_params for name in JobRunFilterSet.base_filters
        )
        if not ids and not filtered:
            raise ValidationError(
                {
                    "ids": [
                        _(
                            "Give the ids of the runs to stop, or at least one list filter."
                        )
                    ]
                }
            )
        runs = self.filter_queryset(self.get_queryset())
        if ids:
            runs = runs.filter(pk__in=ids)
        matched = runs.count()
        active = runs.active().count()
        asked = contrib.request_kill(runs)
        return Response(
            KillResultSerializer(
                {"matched": matched, "active": active, "asked": asked}
            ).data
        )

    @extend_schema(
        summary=_("Enqueue a run again"),
        parameters=[_ID],
        description=_(
            "Enqueues the run's job again with the same arguments, through the integration that "
            "recorded it (Django tasks, Celery, RQ), and answers the new run. 409 when no enabled "
            "integration can retry it; 503 when the task system refused (e.g. its broker is away)."
        ),
        request=None,
        responses={
            202: JobRunSerializer,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
            409: _CONFLICT,
            503: OpenApiResponse(
                ConflictSerializer,
                description=_("The task system could not enqueue it; try again later."),
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        if not contrib.can_retry(run):
            return Response(
                {
                    "detail": _(
                        "This run cannot be retried: no enabled integration can enqueue source %(source)r again."
                    )
                    % {"source": run.source},
                    "status": run.status,
                },
                status=status.HTTP_409_CONFLICT,
            )
        try:
            new = contrib.retry(run)
        except Exception as exc:  # the task system's error is answered, never a 500
            return Response(
                {
                    "detail": _(
                        "The task system could not enqueue the run again: %(error)s"
                    )
                    % {"error": contrib_error(exc)},
                    "status": run.status,
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(self.get_serializer(new).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary=_("Export runs as CSV or JSON Lines"),
        description=_(
            "Every run the list filters pick (no pagination), newest first, streamed: as CSV "
            "(format=csv, the default) or one JSON object per line (format=jsonl). params, data "
            "and result are redacted as in the other endpoints; tracebacks and log lines are left out."
        ),
        parameters=[
            OpenApiParameter(
                "format",
                OpenApiTypes.STR,
                enum=list(export.FORMATS),
                default="csv",
                description=_("csv or jsonl."),
            )
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description=_("A header line, then one run a line.")
            ),
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR, description=_("One run a line, as a JSON object.")
            ),
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
        },
        filters=True,
    )
    @action(
        detail=False,
        methods=["get"],
        content_negotiation_class=_ExportNegotiation,
    )
    def export(self, request: Request) -> Any:
        file_format = request.query_params.get("format") or "csv"
        if file_format not in export.FORMATS:
            raise ValidationError(
                {
                    "format": [
                        _("%(value)r is not an export format; use csv or jsonl.")
                        % {"value": file_format}
                    ]
                }
            )
        runs = self.filter_queryset(self.get_queryset()).order_by("-created_at", "-id")
        return export.response(runs, file_format)

    @extend_schema(
        summary=_("The latest run of a job"),
        parameters=[
            OpenApiParameter(
                "job_name",
                OpenApiTypes.STR,
                required=True,
                description=_("The job's name."),
            )
        ],
        responses={
            200: JobRunSerializer,
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
        },
        filters=False,
    )
    @action(detail=False, methods=["get"])
    def latest(self, request: Request) -> Response:
        name = request.query_params.get("job_name", "").strip()
        if not name:
            raise ValidationError({"job_name": [_("This parameter is required.")]})
        if "\x00" in name:
            raise ValidationError({"job_name": [_("Null characters are not allowed.")]})
        run = self.get_queryset().latest_for(name)
        if run is None:
            raise NotFound(_("Job %(name)r has no runs.") % {"name": name})
        self.check_object_permissions(request, run)
        return Response(self.get_serializer(run).data)

    @extend_schema(
        summary=_("Numbers per job"),
        description=_(
            "Per job: runs per status, failure rate and duration figures (seconds) of the runs the "
            "filters pick; without period, created_after or created_before, the last 24 hours. "
            "With bucket=hour or day, also the finished runs per hour or day."
        ),
        parameters=[
            OpenApiParameter(
                "bucket",
                OpenApiTypes.STR,
                enum=list(_BUCKETS),
                description=_("Also count finished runs per hour or day."),
            )
        ],
        responses={200: StatsSerializer, 400: _ERROR, 401: _DENIED, 403: _DENIED},
        filters=True,
    )
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        bucket = request.query_params.get("bucket") or None
        if bucket is not None and bucket not in _BUCKETS:
            raise ValidationError(
                {
                    "bucket": [
                        _("%(value)r is not a bucket; use hour or day.")
                        % {"value": bucket}
                    ]
                }
            )
        filterset = JobRunFilterSet(
            request.query_params, queryset=self.get_queryset(), request=request
        )
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        runs = filterset.qs
        since, until = _range(filterset.form.cleaned_data)
        if since is None and until is None:
            since = timezone.now() - STATS_DEFAULT_PERIOD
            runs = runs.filter(created_at__gte=since)
        data: dict[str, Any] = {"since": since, "until": until, "jobs": runs.stats()}
        if bucket is not None:
            data["buckets"] = _buckets(runs, _BUCKETS[bucket])
        return Response(StatsSerializer(data).data)


def _range(cleaned: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The ``created_at`` range a stats request asks for."""
    since, until = cleaned.get("created_after"), cleaned.get("created_before")
    if cleaned.get("period"):
        period_since, period_until = cleaned["period"]
        since = max(since, period_since) if since else period_since
        if period_until is not None:
            until = min(until, period_until) if until else period_until
    return since, until


def _buckets(runs: JobRunQuerySet, trunc: Any) -> list[dict[str, Any]]:
    counts = {
        name: Count("pk", filter=Q(status=name)) for name in sorted(Status.TERMINAL)
    }
    rows = (
        runs.finished()
        .order_by()
        .annotate(start=trunc("finished_at"))
        .values("start")
        .annotate(finished=Count("pk"), **counts)
        .order_by("start")
    )
    return [dict(row) for row in rows]
