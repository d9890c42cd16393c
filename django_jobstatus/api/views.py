"""The API's one viewset: runs, with their logs, kill, latest and stats."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import DatabaseError, DataError, router
from django.db.models.functions import TruncDay, TruncHour
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django_filters import utils
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, routers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ParseError, ValidationError
from rest_framework.generics import get_object_or_404
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from django_jobstatus import contrib, export, health, retention
from django_jobstatus.api.filters import (
    JobLogFilterSet,
    JobMonitorFilterSet,
    JobRunFilterSet,
)
from django_jobstatus.api.pagination import (
    KeysetPagination,
    LogPagination,
    MonitorPagination,
)
from django_jobstatus.api.permissions import (
    JobMonitorPermission,
    MetricsPermission,
    visible_runs,
)
from django_jobstatus.api.serializers import (
    BULK_MAX,
    BulkSerializer,
    ConflictSerializer,
    DeleteFailedSerializer,
    DeleteResultSerializer,
    DetailSerializer,
    JobLogSerializer,
    JobMonitorIncidentSerializer,
    JobMonitorSerializer,
    JobRunSerializer,
    KilledRunSerializer,
    KillRequestSerializer,
    KillResultSerializer,
    KillSerializer,
    RetryResultSerializer,
    StatsSerializer,
)
from django_jobstatus.conf import settings
from django_jobstatus.exceptions import RetryRefused
from django_jobstatus.models import JobLog, JobMonitor, JobRun, Status
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
_NOT_JSON = OpenApiResponse(
    DetailSerializer, description=_("The body is not JSON (its Content-Type).")
)


class _FilterBackend(DjangoFilterBackend):
    """Each action names its own FilterSet (runs or log lines) through ``get_filterset_class()``.

    The FilterSets are strict (StrictFilterSet): a query parameter that is neither a filter
    nor one the view reads (``known_parameters()``) is a 400 naming it.
    """

    def get_filterset_class(self, view: Any, queryset: Any = None) -> Any:
        return view.get_filterset_class()

    def get_filterset_kwargs(
        self, request: Request, queryset: Any, view: Any
    ) -> dict[str, Any]:
        return {
            **super().get_filterset_kwargs(request, queryset, view),
            "known": view.known_parameters(),
        }

    def valid_filterset(self, request: Request, queryset: Any, view: Any) -> Any:
        """The view's FilterSet for this request, validated: a 400 when it is not valid."""
        filterset = self.get_filterset(request, queryset, view)
        if not filterset.is_valid():
            raise utils.translate_validation(filterset.errors)
        return filterset


class _JSONParser(JSONParser):
    """DRF's JSON parser; a body nested deeper than Python can parse is a 400 too."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(_("JSON parse error - nested too deep.")) from exc


def contrib_error(exc: Exception) -> str:
    """An integration's error as one line for a person: its class and message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _Negotiation(DefaultContentNegotiation):
    """DRF's, but an unknown ``?format=`` is a 400 naming ``format``, as any bad parameter is.

    DRF answers it 404 "Not found.", which on ``runs/<id>/`` says a run that exists is missing.
    """

    def select_renderer(
        self, request: Any, renderers: Any, format_suffix: Any = None
    ) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except Http404:
            name = self.settings.URL_FORMAT_OVERRIDE
            value = request.query_params.get(name) if name else None
            if format_suffix or not value:
                raise
            choices = ", ".join(sorted({r.format for r in renderers if r.format}))
            raise ValidationError(
                {
                    name: [
                        _("%(value)r is not a format here; use one of %(choices)s.")
                        % {"value": value, "choices": choices}
                    ]
                }
            ) from None


class _Schema(AutoSchema):
    """drf-spectacular's, with the ``format`` parameter the views read (_Negotiation).

    Its values are the formats of the view's JSON renderers; any other is a 400, but for
    ``api``, the browsable API where it is on: HTML for a person, not for a client. The
    export names its own formats.
    """

    def get_override_parameters(self) -> list[Any]:
        formats = sorted(
            {
                r.format
                for r in self.view.get_renderers()
                if r.format and r.media_type == "application/json"
            }
        )
        name = api_settings.URL_FORMAT_OVERRIDE
        if not name or not formats:
            return super().get_override_parameters()
        return [
            OpenApiParameter(
                name,
                OpenApiTypes.STR,
                enum=formats,
                description=_(
                    "The answer's format: json (the default), or api for the browsable API."
                ),
            ),
            *super().get_override_parameters(),
        ]


class _ExportNegotiation(DefaultContentNegotiation):
    """On the export, ``?format=`` names the file format (csv, jsonl), not a renderer: errors stay JSON."""

    def select_renderer(
        self, request: Any, renderers: Any, format_suffix: Any = None
    ) -> Any:
        return renderers[0], renderers[0].media_type


def _bulk_action(
    name: str,
    *,
    summary: str,
    description: str,
    responses: dict[int, Any],
    request: Any = BulkSerializer,
    **kwargs: Any,
) -> Callable[[Callable[..., Response]], Any]:
    """A bulk action on runs, with its schema: ``POST runs/<name>/``, a JSON body and the list filters."""
    schema = extend_schema(
        operation_id=f"jobstatus_runs_bulk_{name}",
        summary=summary,
        description=description,
        request=request,
        responses={
            **responses,
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            415: _NOT_JSON,
        },
        filters=True,
    )
    route = action(
        detail=False,
        methods=["post"],
        url_path=name,
        url_name=f"bulk-{name}",
        parser_classes=[_JSONParser],
        **kwargs,
    )
    return lambda method: schema(route(method))


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

    def perform_authentication(self, request: Request) -> None:
        # Credentials the database cannot even look up (a NUL in a Basic user name, on
        # PostgreSQL) are refused like any wrong ones: a 401/403, never a 500.
        try:
            super().perform_authentication(request)  # type: ignore[misc]
        except DataError as exc:
            raise exceptions.AuthenticationFailed() from exc

    def get_permissions(self) -> list[Any]:
        return [cls() for cls in settings.API_PERMISSION_CLASSES]


class APIRootView(Access, routers.APIRootView):
    """The API's root (links to its lists), behind the same permissions as the rest."""

    content_negotiation_class = _Negotiation


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
        responses={
            200: JobRunSerializer,
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
        },
    ),
    destroy=extend_schema(
        summary=_("Delete a finished run"),
        parameters=[_ID],
        description=_(
            "Deletes the run and its log lines. Only finished runs: an active run answers 409."
        ),
        responses={
            204: None,
            400: _ERROR,
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
    content_negotiation_class = _Negotiation
    schema = _Schema()
    # Any path segment reaches the view, so that a malformed id answers a JSON 404.
    lookup_value_regex = "[^/]+"
    # The permission an action needs besides view, when not the one its method implies
    # (permissions.required_permissions): the bulk delete is a POST that needs delete.
    acting_permission: str | None = None

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
        # Bulk actions (bulk_kill…) and the export pick runs with the list filters.
        if self.action in ("list", "stats", "export") or self.action.startswith(
            "bulk_"
        ):
            return JobRunFilterSet
        return None

    def known_parameters(self) -> list[str]:
        """The query parameters this action reads besides its filters."""
        known = [api_settings.URL_FORMAT_OVERRIDE or "format"]
        if self.action in ("list", "logs"):
            paginator = self.pagination_class()
            known += [paginator.cursor_query_param, paginator.page_size_query_param]
            if paginator.ordering_param_enabled:
                known.append(paginator.ordering_query_param)
        if self.action == "stats":
            known.append("bucket")
        return known

    def bulk_runs(self, request: Request, ids: list[Any] | None) -> JobRunQuerySet:
        """The runs a bulk action picks: by ``ids`` and the list filters, at least one given.

        An empty filter (``job_name=``) filters nothing, so it does not count: a bulk action
        never falls back to every run. An unknown parameter is a 400 (StrictFilterSet).
        Ids given are a selection, even an empty one: ``{"ids": []}`` with a filter picks no
        run (a client sending the rows it selected, none, with its view's filter).
        """
        filterset = _FilterBackend().valid_filterset(request, self.get_queryset(), self)
        if not ids and not filterset.narrows():
            raise ValidationError(
                {
                    "ids": [
                        _(
                            "Give the ids of the runs, or at least one list filter with a value."
                        )
                    ]
                }
            )
        runs: JobRunQuerySet = filterset.qs
        # Picked, counted and acted on where the writes go: a replica (READ_DATABASE) may
        # not have a run yet, or still have it active.
        if ids is not None:
            runs = runs.filter(pk__in=ids) if ids else runs.none()
        return runs.writing()

    def get_serializer_class(self) -> type[Any]:
        return JobLogSerializer if self.action == "logs" else JobRunSerializer

    def get_queryset(self) -> JobRunQuerySet:
        return visible_runs(self.request.user, JobRun.objects.all())

    def get_object(self) -> JobRun:
        try:
            uuid.UUID(str(self.kwargs["pk"]))
        except ValueError as exc:
            raise NotFound(
                _("%(value)r is not a run id (a UUID).") % {"value": self.kwargs["pk"]}
            ) from exc
        # Not filter_queryset(): the list filters pick runs for lists, not for one run.
        runs = self.get_queryset()
        if self.request.method not in SAFE_METHODS:
            # Judged where the write goes: a replica (READ_DATABASE) may not have the run
            # yet (a 404), or still have it running (a 409 for a run that just ended).
            runs = runs.writing()
        run = get_object_or_404(runs, pk=self.kwargs["pk"])
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
        if (
            JobRun.objects.using(run._state.db)
            .filter(pk=run.pk)
            .held_by_batch()
            .exists()
        ):
            # The batch adds its runs up until it ends: without this one, it would add
            # up short (a batch with a killed child ended succeeded), as the purge and
            # the bulk delete, which keep it, know.
            return Response(
                {
                    "detail": _(
                        "This run belongs to a batch that has not ended, which still "
                        "counts it: it can be deleted once the batch has ended."
                    ),
                    "status": run.status,
                },
                status=status.HTTP_409_CONFLICT,
            )
        _total, deleted = run.delete()
        if not deleted.get(JobRun._meta.label):
            raise NotFound(_("The run was deleted meanwhile."))
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
            "Records a kill request and tells the task system, when its integration is on. The run "
            'stops at its next progress call or check. With {"force": true} it ends killed now and '
            "its task system stops it where it can; not_stopped says which task system could not, and why."
        ),
        request=KillSerializer,
        responses={
            202: KilledRunSerializer,
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _NOT_FOUND,
            409: _CONFLICT,
            415: _NOT_JSON,
        },
    )
    # DRF's default parsers, with the JSON one that answers a body nested too deep with a
    # 400; the forms are the browsable API's.
    @action(
        detail=True,
        methods=["post"],
        parser_classes=[_JSONParser, FormParser, MultiPartParser],
    )
    def kill(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        body = KillSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if run.is_finished:
            return _finished_conflict(run)
        force = body.validated_data["force"]
        result = JobRun.objects.filter(pk=run.pk).request_kill(
            force=force, among=self.get_queryset()
        )
        try:
            # Read back where the kill was written: a replica (READ_DATABASE) may lag.
            run.refresh_from_db(using=router.db_for_write(JobRun, instance=run))
        except JobRun.DoesNotExist as exc:  # deleted meanwhile (a purge of active runs)
            raise NotFound(_("The run was deleted meanwhile.")) from exc
        if run.is_finished and not (result.killed if force else result.asked):
            # It finished (or another request killed it) between the read and the write:
            # this request asked nothing and killed nothing.
            return _finished_conflict(run)
        run.in_batches = result.in_batches  # type: ignore[attr-defined]
        run.not_stopped = result.not_stopped  # type: ignore[attr-defined]
        return Response(
            KilledRunSerializer(run, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @_bulk_action(
        "kill",
        summary=_("Ask many runs to stop"),
        description=_(
            'Runs picked by {"ids": [...]} in the body, or by the list filters in the query string (at least one of them). '
            'With {"force": true} they end killed now, stopped where their task system can.'
        ),
        request=KillRequestSerializer,
        responses={200: KillResultSerializer},
    )
    def bulk_kill(self, request: Request) -> Response:
        body = KillRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        runs = self.bulk_runs(request, body.validated_data.get("ids"))
        matched = runs.count()
        active = runs.active().count()
        result = runs.request_kill(
            force=body.validated_data["force"], among=self.get_queryset()
        )
        return Response(
            KillResultSerializer(
                {
                    "matched": matched,
                    "active": active,
                    "asked": result.asked,
                    "killed": result.killed,
                    "in_batches": result.in_batches,
                    "not_stopped": result.not_stopped,
                }
            ).data
        )

    @_bulk_action(
        "retry",
        summary=_("Enqueue many runs again"),
        description=_(
            'Finished runs picked by {"ids": [...]} in the body, or by the list filters in the query '
            "string (at least one of them), enqueued again through the integration that recorded "
            "each, at most %(max)d at a time. Answers each new run, and each run that was not "
            "enqueued again with the reason: still active, no enabled integration can retry it, "
            "or its task system failed (error)."
        )
        % {"max": BULK_MAX},
        responses={202: RetryResultSerializer},
    )
    def bulk_retry(self, request: Request) -> Response:
        runs = self.bulk_runs(request, _bulk_ids(request))
        # Read once: the runs counted are the runs retried (more may match meanwhile).
        picked = list(runs.order_by("created_at", "pk")[: BULK_MAX + 1])
        matched = len(picked)
        if matched > BULK_MAX:
            raise ValidationError(
                {
                    "ids": [
                        _(
                            "The ids and filters pick %(n)d runs; retry at most %(max)d at a time."
                        )
                        % {"n": runs.count(), "max": BULK_MAX}
                    ]
                }
            )
        retried: list[dict[str, Any]] = []
        not_retried: list[dict[str, Any]] = []
        for run in picked:
            try:
                new = _retry_finished(run)
            except _NotRetried as refusal:
                not_retried.append(
                    {
                        "id": run.pk,
                        "job_name": run.job_name,
                        "reason": refusal.reason,
                        "error": refusal.error,
                    }
                )
            else:
                retried.append(
                    {"id": run.pk, "job_name": run.job_name, "new_id": new.pk}
                )
        return Response(
            RetryResultSerializer(
                {"matched": matched, "retried": retried, "not_retried": not_retried}
            ).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @_bulk_action(
        "delete",
        summary=_("Delete many finished runs"),
        description=_(
            'Runs picked by {"ids": [...]} in the body, or by the list filters in the query string '
            "(at least one of them): the finished ones are deleted with their log lines, in short "
            "batches; the others stay (not_finished). Needs the delete permission."
        ),
        responses={
            200: DeleteResultSerializer,
            503: OpenApiResponse(
                DeleteFailedSerializer,
                description=_(
                    "The database failed partway: the batches before it are deleted (deleted)."
                ),
            ),
        },
        acting_permission="delete",
    )
    def bulk_delete(self, request: Request) -> Response:
        runs = self.bulk_runs(request, _bulk_ids(request))
        matched = runs.count()
        gone: list[JobRun] = []
        try:
            purged = retention.delete_finished(runs, deleted=gone.extend)
        except DatabaseError as exc:
            # The batches before the error are committed: say so, not a bare 500.
            return Response(
                {
                    "detail": ngettext(
                        "The database failed after %(n)d run was deleted; the others stay: %(error)s",
                        "The database failed after %(n)d runs were deleted; the others stay: %(error)s",
                        len(gone),
                    )
                    % {"n": len(gone), "error": contrib_error(exc)},
                    "deleted": len(gone),
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        # Counted once the deletes are done, in one query: a run that finished meanwhile
        # was deleted, and a finished run another process held was skipped, and is left.
        left = runs.count_by_status()
        not_finished = sum(left.get(state, 0) for state in Status.ACTIVE)
        held = sum(left.get(state, 0) for state in Status.TERMINAL)
        return Response(
            DeleteResultSerializer(
                {
                    "matched": matched,
                    "deleted": purged.runs,
                    "logs": purged.logs,
                    "not_finished": not_finished,
                    "held": held,
                }
            ).data
        )

    @extend_schema(
        summary=_("Enqueue a run again"),
        parameters=[_ID],
        description=_(
            "Enqueues the run's job again with the same arguments, through the integration that "
            "recorded it (Django tasks, Celery, RQ), and answers the new run. 409 when it is still "
            "active (only finished runs are retried), no enabled integration can retry it, or the run "
            "cannot be enqueued as it was recorded (its parameters were cut, or its task system has "
            "nowhere to send it); 503 when the task system failed (e.g. its broker is away)."
        ),
        request=None,
        responses={
            202: JobRunSerializer,
            400: _ERROR,
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
        refusal = contrib.retry_refusal(run)
        if refusal is not None:
            return Response(
                {"detail": refusal, "status": run.status},
                status=status.HTTP_409_CONFLICT,
            )
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
        except RetryRefused as exc:  # the same answer later: not "try again"
            return Response(
                {"detail": str(exc), "status": run.status},
                status=status.HTTP_409_CONFLICT,
            )
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
                # Not blank, no NUL.
                pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
                allow_blank=False,
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
                enum=["", *_BUCKETS],
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
        filterset = _FilterBackend().valid_filterset(request, self.get_queryset(), self)
        runs = filterset.qs
        since, until = _range(filterset.form.cleaned_data)
        if since is None and until is None:
            since = timezone.now() - STATS_DEFAULT_PERIOD
            runs = runs.filter(created_at__gte=since)
        data: dict[str, Any] = {"since": since, "until": until, "jobs": runs.stats()}
        if bucket is not None:
            data["buckets"] = runs.finished_buckets(bucket)
        return Response(StatsSerializer(data).data)


def _finished_conflict(run: JobRun) -> Response:
    """The 409 of a kill of a run that has finished."""
    return Response(
        {
            "detail": _("The run has already finished (%(status)s).")
            % {"status": run.status},
            "status": run.status,
        },
        status=status.HTTP_409_CONFLICT,
    )


def _bulk_ids(request: Request) -> list[Any] | None:
    """The ``ids`` of a bulk action's body, validated (a 400 naming the field)."""
    body = BulkSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    ids: list[Any] | None = body.validated_data.get("ids")
    return ids


class _NotRetried(Exception):  # noqa: N818 (a refusal, reported, never raised out)
    def __init__(self, reason: str, *, error: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _retry_finished(run: JobRun) -> JobRun:
    """Enqueue a finished ``run`` again: the new run, or _NotRetried saying why not."""
    refusal = contrib.retry_refusal(run)
    if refusal is not None:
        raise _NotRetried(refusal)
    if not contrib.can_retry(run):
        raise _NotRetried(
            _("No enabled integration can enqueue source %(source)r again.")
            % {"source": run.source}
        )
    try:
        return contrib.retry(run)
    except RetryRefused as exc:
        raise _NotRetried(str(exc)) from exc
    except Exception as exc:  # the task system's error is reported, never a 500
        raise _NotRetried(contrib_error(exc), error=True) from exc


def _range(cleaned: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The ``created_at`` range a stats request asks for."""
    since, until = cleaned.get("created_after"), cleaned.get("created_before")
    if cleaned.get("period"):
        period_since, period_until = cleaned["period"]
        since = max(since, period_since) if since else period_since
        if period_until is not None:
            until = min(until, period_until) if until else period_until
    return since, until


# Monitors.

_MONITOR_ID = OpenApiParameter(
    "id", OpenApiTypes.INT, OpenApiParameter.PATH, description=_("The monitor's id.")
)
_MONITOR_NOT_FOUND = OpenApiResponse(
    DetailSerializer, description=_("No monitor with this id, or no such page.")
)
_NO_PAGE = OpenApiResponse(DetailSerializer, description=_("No such page."))


def _monitor_schema(
    summary: str, ok: int, *, one: bool = True, body: bool = False, **extra: Any
) -> Any:
    """The schema of a monitor endpoint: its answer, and the errors every one shares
    (``body``: it reads a JSON body, so a body of another type answers 415)."""
    responses: dict[int, Any] = {ok: JobMonitorSerializer if ok != 204 else None}
    responses |= {400: _ERROR, 401: _DENIED, 403: _DENIED, 404: _MONITOR_NOT_FOUND}
    if body:
        responses[415] = _NOT_JSON
    return extend_schema(
        summary=summary,
        parameters=[_MONITOR_ID] if one else [],
        responses=responses,
        **extra,
    )


@extend_schema_view(
    list=extend_schema(
        summary=_("List job monitors"),
        description=_(
            "Each job's monitor with its state, newest run, next expected run and open incident; by job name."
        ),
        responses={
            200: JobMonitorSerializer(many=True),
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _NO_PAGE,
        },
    ),
    retrieve=_monitor_schema(_("One job monitor"), 200),
    create=_monitor_schema(_("Watch a job"), 201, one=False, body=True),
    update=_monitor_schema(_("Change a job monitor"), 200, body=True),
    partial_update=_monitor_schema(
        _("Change some fields of a job monitor"), 200, body=True
    ),
    destroy=_monitor_schema(
        _("Stop watching a job"),
        204,
        description=_("Deletes the monitor and its incidents; the runs stay."),
    ),
)
class JobMonitorViewSet(Access, viewsets.ModelViewSet):
    """Job monitors: staff with the JobMonitor model permissions (view, add, change, delete)."""

    queryset = JobMonitor.objects.all()
    serializer_class = JobMonitorSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = JobMonitorFilterSet
    content_negotiation_class = _Negotiation
    schema = _Schema()
    pagination_class = MonitorPagination
    parser_classes = [_JSONParser]
    # Any path segment reaches the view, so that a malformed id answers a JSON 404.
    lookup_value_regex = "[^/]+"
    # Whether the action lists incidents, which also needs view_jobmonitorincident
    # (permissions.JobMonitorPermission): their details quote failed runs' errors.
    reads_incidents = False

    def get_permissions(self) -> list[Any]:
        return [JobMonitorPermission()]

    def get_queryset(self) -> Any:
        monitors = JobMonitor.objects.order_by("job_name")
        if self.request.method not in SAFE_METHODS:
            # Picked where the write goes: a replica (READ_DATABASE) may not have a monitor
            # just created (a 404), nor the state a check just stored.
            monitors = monitors.using(router.db_for_write(JobMonitor))
        return health.with_last_run(monitors)

    def perform_create(self, serializer: Any) -> None:
        super().perform_create(serializer)
        self._read_again(serializer)

    def perform_update(self, serializer: Any) -> None:
        # Only the fields sent (and the stamps save() adds): the serializer's whole save()
        # wrote back the state as read, over a check that stored another meanwhile (the
        # monitor healthy again with its incident open, and the next check opened another).
        monitor = serializer.instance
        changes = serializer.validated_data
        for field, value in changes.items():
            setattr(monitor, field, value)
        monitor.save(update_fields=list(changes))
        self._read_again(serializer)

    def _read_again(self, serializer: Any) -> None:
        """Answer with the monitor as saved, read with its job's newest run: a new one had
        none read, a changed job_name kept the old job's run and last start. Where it was
        written: a replica (READ_DATABASE) may not have it yet."""
        saved = serializer.instance
        monitors = self.get_queryset().using(saved._state.db)
        serializer.instance = monitors.get(pk=saved.pk)

    @extend_schema(
        summary=_("A monitor's incidents"),
        parameters=[_MONITOR_ID],
        description=_(
            "Newest first: each spell the job spent late, failing or slow. Needs view_jobmonitorincident besides view_jobmonitor, as the details quote failed runs' errors."
        ),
        responses={
            200: JobMonitorIncidentSerializer(many=True),
            400: _ERROR,
            401: _DENIED,
            403: _DENIED,
            404: _MONITOR_NOT_FOUND,
        },
        filters=False,
    )
    @action(detail=True, methods=["get"], filter_backends=[], reads_incidents=True)
    def incidents(self, request: Request, pk: str | None = None) -> Response:
        monitor = self.get_object()
        page = self.paginate_queryset(monitor.incidents.order_by("-opened_at", "-id"))
        return self.get_paginated_response(
            JobMonitorIncidentSerializer(page, many=True).data
        )


# Metrics.


class MetricsView(Access, APIView):
    """Prometheus text or OpenMetrics (by the Accept header), computed from the tables.

    Open to whoever may read the API, and, with ``JOBSTATUS["METRICS_BEARER_TOKEN"]``, to a
    scraper that sends ``Authorization: Bearer <token>``.
    """

    renderer_classes = [JSONRenderer]

    def get_authenticators(self) -> list[Any]:
        # Before authentication: an authenticator of Bearer tokens (JWT) would refuse ours.
        if self._bearer_request():
            return []
        return super().get_authenticators()

    def _bearer_request(self) -> bool:
        """Whether the request sends ``Authorization: Bearer <METRICS_BEARER_TOKEN>``.

        Check E006 refuses a token that is not visible ASCII; a server that never
        ran the checks still lets the scraper in. So the bytes sent are compared (the
        server hands the header over decoded as latin-1, PEP 3333, and a scraper sends
        the token UTF-8 encoded), and the token's ends are stripped as the server strips
        the header's.
        """
        token = settings.METRICS_BEARER_TOKEN
        expected = token.strip().encode() if isinstance(token, str) else b""
        request = getattr(self, "request", None)
        if not expected or request is None:
            return False
        scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(
            " "
        )
        try:
            sent = credentials.strip().encode("latin-1")
        except UnicodeEncodeError:  # not bytes a server decoded: no token of ours
            return False
        return scheme.lower() == "bearer" and secrets.compare_digest(sent, expected)

    def get_permissions(self) -> list[Any]:
        if self._bearer_request():
            return []
        return [*super().get_permissions(), MetricsPermission()]

    def perform_content_negotiation(
        self,
        request: Request,
        force: bool = False,  # noqa: FBT001, FBT002 (DRF's signature)
    ) -> Any:
        # Errors (401, 403) are JSON; the figures choose their own format in get().
        return (JSONRenderer(), JSONRenderer.media_type)

    @extend_schema(
        summary=_("Prometheus metrics"),
        description=_(
            "Runs by job and status (last METRICS_WINDOW seconds), active runs, the age of the "
            "oldest queued run, duration p50/p95 per job, monitor states. Prometheus text, or "
            "OpenMetrics when the Accept header asks for it. Needs the metrics extra."
        ),
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            401: _DENIED,
            403: _DENIED,
        },
    )
    def get(self, request: Request) -> HttpResponse:
        from django_jobstatus.metrics import exposition

        body, content_type = exposition(request.META.get("HTTP_ACCEPT"))
        return HttpResponse(body, content_type=content_type)
