"""Mount with ``path("api/jobstatus/", include("django_jobstatus.api.urls"))``."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from django_jobstatus.api.views import (
    APIRootView,
    JobMonitorViewSet,
    JobRunViewSet,
    MetricsView,
)
from django_jobstatus.compat import installed
from django_jobstatus.retention import own_transactions

app_name = "django_jobstatus"

router = DefaultRouter()
router.APIRootView = APIRootView
# No format suffixes (runs.json): ?format=json does the same, and ids stay unambiguous.
router.include_format_suffixes = False
router.register("runs", JobRunViewSet, basename="jobrun")
router.register("monitors", JobMonitorViewSet, basename="jobmonitor")

urlpatterns = router.urls
for pattern in urlpatterns:
    if pattern.name == "jobrun-bulk-delete":
        # The purge's batches commit one by one, under ATOMIC_REQUESTS too.
        own_transactions(pattern.callback)
if installed("prometheus_client"):  # the metrics extra
    urlpatterns.append(path("metrics/", MetricsView.as_view(), name="metrics"))
