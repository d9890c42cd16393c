"""``manage.py reap_jobstatus``: mark running runs whose worker went silent as ``lost``, and
roll up the dashboard's closed hours."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError
from django.db import router
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus import rollups
from django_jobstatus.conf import settings
from django_jobstatus.management.commands._arguments import (
    add_database,
    positive_seconds,
    seconds,
)
from django_jobstatus.models import JobRun, JobRunHour

if TYPE_CHECKING:
    from django_jobstatus.retention import ReapResult


class Command(BaseCommand):
    @property
    def help(self) -> str:  # type: ignore[override]
        # A property: argparse needs a str, and translating needs the active language.
        return _(
            "Mark as lost every running job run whose heartbeat (or start) is older than the "
            "timeout; with --queued-timeout, also end the runs queued too long. Then roll up "
            "the dashboard's closed hours, so that it never has to."
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
            "--queued-timeout",
            type=positive_seconds,
            default=settings.QUEUED_TIMEOUT,
            help=_(
                "Also end, killed, every run queued longer than this many seconds: no worker "
                "started it, its message was probably lost (default: %(default)r, "
                "JOBSTATUS['QUEUED_TIMEOUT']; None: never)"
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=_(
                "List the runs that would be marked lost; change nothing (default: %(default)r)"
            ),
        )
        add_database(parser)

    def handle(
        self,
        *,
        timeout: float,
        queued_timeout: float | None,
        dry_run: bool,
        database: str,
        verbosity: int,
        **options: Any,
    ) -> None:
        loud = verbosity > 0
        try:
            result = JobRun.objects.using(database).reap(
                timeout, queued_timeout=queued_timeout, dry_run=dry_run
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if loud:
            if dry_run:
                self._dry_run(result, queued_timeout)
            else:
                self._done(result, queued_timeout)
        if not dry_run and database == router.db_for_write(JobRunHour):
            # The dashboard's hours, so that its first request after a quiet spell reads
            # them rather than rolling them up (seconds for a busy week).
            rollups.roll_up(timezone.now())

    def _done(self, result: ReapResult, queued_timeout: float | None) -> None:
        self.stdout.write(
            self.style.SUCCESS(
                # Translators: two sentences joined, e.g. "Marked 2 runs lost; 1 finished before it could be."
                _("%(reaped)s; %(finished)s")
                % {
                    "reaped": ngettext(
                        "Marked %(n)d run lost", "Marked %(n)d runs lost", result.reaped
                    )
                    % {"n": result.reaped},
                    "finished": ngettext(
                        "%(n)d finished before it could be.",
                        "%(n)d finished before they could be.",
                        result.finished,
                    )
                    % {"n": result.finished},
                }
            )
        )
        if result.settled:
            self.stdout.write(
                self.style.SUCCESS(
                    ngettext(
                        "Ended %(n)d batch whose children had all ended, as they add up.",
                        "Ended %(n)d batches whose children had all ended, as they add up.",
                        result.settled,
                    )
                    % {"n": result.settled}
                )
            )
        if queued_timeout is not None:
            self.stdout.write(
                self.style.SUCCESS(
                    ngettext(
                        "Ended %(expired)d run queued too long (killed).",
                        "Ended %(expired)d runs queued too long (killed).",
                        result.expired,
                    )
                    % {"expired": result.expired}
                )
            )

    def _dry_run(self, result: ReapResult, queued_timeout: float | None) -> None:
        for pk, job_name, worker in result.stale_runs:
            self.stdout.write(
                _("%(job_name)s %(pk)s (worker %(worker)s)")
                % {"job_name": job_name, "pk": pk, "worker": worker or "?"}
            )
        self.stdout.write(
            self.style.SUCCESS(
                ngettext(
                    "Dry run: %(count)d run would be marked lost; nothing was changed.",
                    "Dry run: %(count)d runs would be marked lost; nothing was changed.",
                    result.reaped,
                )
                % {"count": result.reaped}
            )
        )
        if result.settled:
            self.stdout.write(
                self.style.SUCCESS(
                    ngettext(
                        "Dry run: %(n)d batch whose children have all ended would be ended as they add up.",
                        "Dry run: %(n)d batches whose children have all ended would be ended as they add up.",
                        result.settled,
                    )
                    % {"n": result.settled}
                )
            )
        if queued_timeout is None:
            return
        for pk, job_name in result.queued_runs:
            self.stdout.write(
                _("%(job_name)s %(pk)s (queued)") % {"job_name": job_name, "pk": pk}
            )
        self.stdout.write(
            self.style.SUCCESS(
                ngettext(
                    "Dry run: %(count)d run queued too long would be ended killed; nothing was changed.",
                    "Dry run: %(count)d runs queued too long would be ended killed; nothing was changed.",
                    result.expired,
                )
                % {"count": result.expired}
            )
        )
