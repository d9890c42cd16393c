from __future__ import annotations

app_name = "django_jobstatus"
urlpatterns: list[object] = []
