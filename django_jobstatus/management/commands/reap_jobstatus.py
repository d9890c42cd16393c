"""``manage.py reap_jobstatus``: mark running runs whose worker went silent as ``lost``."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from django_jobstatus.conf import settings
from django_jobstatus.management.commands._arguments import (
    add_database_and_quiet,
    seconds,
)
from django_jobstatus.models import JobRun


class Command(BaseCommand):
    @property
    def help(self) -> str:  # type: ignore[override]
        # A property: argparse needs a str, and translating needs the active language.
        return _(
            "Mark as lost every running job run whose heartbeat (or start) is older than the timeout."
        )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--timeout",
            type=seconds,
            default=settings.HEARTBEAT_TIMEOUT,
            help=_(
                "Seconds without a heartbeat after which a running run is lost (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=_(
                "List the runs that would be marked lost; change nothing (default: %(default)r)"
            ),
        )
        add_database_and_quiet(parser)

    def handle(
        self,
        *,
        timeout: float,
        dry_run: bool,
        database: str,
        quiet: bool,
        verbosity: int,
        **options: Any,
    ) -> None:
        loud = verbosity > 0 and not quiet
        try:
            if dry_run:
                stale = list(
                    JobRun.objects.using(database)
                    .stale(timeout)
                    .order_by("pk")
                    .values_list("pk", "job_name", "worker")
                )
            else:
                result = JobRun.objects.using(database).reap(timeout)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not loud:
            return
        if dry_run:
            for pk, job_name, worker in stale:
                self.stdout.write(
                    _("%(job_name)s %(pk)s (worker %(worker)s)")
                    % {"job_name": job_name, "pk": pk, "worker": worker or "?"}
                )
            self.stdout.write(
                self.style.SUCCESS(
                    _(
                        "Dry run: %(count)d runs would be marked lost; nothing was changed."
                    )
                    % {"count": len(stale)}
                )
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                _(
                    "Marked %(reaped)d runs lost; %(finished)d finished before they could be."
                )
                % {"reaped": result.reaped, "finished": result.finished}
            )
        )
