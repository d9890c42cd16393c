"""The API mounted in a project without the admin."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("api/jobstatus/", include("django_jobstatus.api.urls"))]
