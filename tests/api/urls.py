"""The test URLs plus the OpenAPI schema and Swagger UI, mounted as a project would."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tests.urls import urlpatterns as base

urlpatterns = [
    *base,
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema"),
        name="swagger-ui",
    ),
]
