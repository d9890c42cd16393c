from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _


class JobStatusConfig(AppConfig):
    name = "django_jobstatus"
    label = "django_jobstatus"
    verbose_name = _("Job status")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_jobstatus import batches, checks, health  # noqa: F401 (checks registers the system checks)
        from django_jobstatus.conf import settings

        batches.connect()  # a batch's parent follows its children
        health.connect()  # a finished run of a monitored job is judged at once

        for path in settings.INTEGRATIONS:
            # Each enabled integration's module has connect(); a missing extra fails here, loudly.
            import_string(f"{path}.connect")()
