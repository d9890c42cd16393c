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
        # Importing checks registers the system checks.
        from django_jobstatus import batches, checks, health
        from django_jobstatus.conf import settings

        batches.connect()  # a batch's parent follows its children
        health.connect()  # a finished run of a monitored job is judged at once

        integrations = settings.INTEGRATIONS
        for path in integrations if isinstance(integrations, list | tuple) else ():
            # A value that is not a list of dotted paths is left to the checks, which run
            # after ready() and name the setting (E001, E005): importing it here would fail
            # with an error that names neither.
            if checks.is_module_path(path):
                # Each enabled integration's module has connect(); a missing extra fails here, loudly.
                import_string(f"{path}.connect")()
