from __future__ import annotations

from django.apps import AppConfig


class TestProjectConfig(AppConfig):
    name = "testproject"
    verbose_name = "Demo"
