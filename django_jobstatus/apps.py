from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.db.models.signals import post_delete
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
        from django_jobstatus.models import clear_deleted_owner

        batches.connect()  # a batch's parent follows its children
        health.connect()  # a finished run of a monitored job is judged at once
        # A deleted user's runs on a database of their own lose their owner there.
        post_delete.connect(
            clear_deleted_owner,
            sender=django_settings.AUTH_USER_MODEL,
            dispatch_uid="django_jobstatus.clear_deleted_owner",
        )

        integrations = settings.INTEGRATIONS
        for path in integrations if isinstance(integrations, list | tuple) else ():
            # A value that is not a list of dotted paths is left to the checks, which run
            # after ready() and name the setting (E001, E005): importing it here would fail
            # with an error that names neither.
            if checks.is_module_path(path):
                # Each enabled integration's module has connect(); a missing extra fails here, loudly.
                import_string(f"{path}.connect")()
