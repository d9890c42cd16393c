"""Mount with ``path("api/jobstatus/", include("django_jobstatus.api.urls"))``."""

from __future__ import annotations

from rest_framework.routers import DefaultRouter

from django_jobstatus.api.views import APIRootView, JobRunViewSet

app_name = "django_jobstatus"

router = DefaultRouter()
router.APIRootView = APIRootView
# No format suffixes (runs.json): ?format=json does the same, and ids stay unambiguous.
router.include_format_suffixes = False
router.register("runs", JobRunViewSet, basename="jobrun")

urlpatterns = router.urls
