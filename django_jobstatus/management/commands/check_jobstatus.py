"""``manage.py check_jobstatus``: evaluate every job monitor, open and resolve incidents, alert."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus import health
from django_jobstatus.conf import settings
from django_jobstatus.management.commands._arguments import (
    add_database,
    job_name,
    seconds,
)
from django_jobstatus.models import JobMonitor, MonitorState


class Command(BaseCommand):
    @property
    def help(self) -> str:  # type: ignore[override]
        return _(
            "Evaluate every job monitor (late, failing, slow), open and resolve its incidents, and send the alerts."
        )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--job",
            action="append",
            type=job_name,
            dest="jobs",
            metavar="NAME",
            help=_(
                "Evaluate only the monitor of this job; repeat for more (default: %(default)r, every monitor)"
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=_(
                "Print each monitor's state as it is now; store and send nothing (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--wait",
            type=seconds,
            default=settings.ALERT_TIMEOUT * 2,
            help=_(
                "Seconds to wait at the end for the alerts to be delivered; those not sent by then are dropped (default: %(default)r)"
            ),
        )
        add_database(parser)

    # From the command line, the process ends with the command; called from code
    # (call_command()), it goes on, and so does the alerts' thread.
    _process_ends = False

    def run_from_argv(self, argv: list[str]) -> None:
        self._process_ends = True
        super().run_from_argv(argv)

    def _wait_for_alerts(self, wait: float) -> None:
        if self._process_ends:
            # The alerts' thread ends with this process: what it has not sent by then
            # is dropped (its incident does not read as announced), for the next check.
            unsent = health.finish(wait)
            if unsent:
                self.stderr.write(
                    ngettext(
                        "%(count)d alert was not sent within %(wait)g seconds; the next check sends it again.",
                        "%(count)d alerts were not sent within %(wait)g seconds; the next check sends them again.",
                        unsent,
                    )
                    % {"count": unsent, "wait": wait}
                )
        elif not health.outbox.join(wait):
            self.stderr.write(
                _(
                    "Some alerts were still being delivered after %(wait)g seconds; they go on in the background."
                )
                % {"wait": wait}
            )

    def handle(
        self,
        *,
        jobs: list[str] | None,
        dry_run: bool,
        wait: float,
        database: str,
        verbosity: int,
        **options: Any,
    ) -> None:
        loud = verbosity > 0
        if jobs:
            known = set(
                JobMonitor.objects.using(database)
                .filter(job_name__in=jobs)
                .values_list("job_name", flat=True)
            )
            missing = sorted(set(jobs) - known)
            if missing:
                raise CommandError(
                    _("No monitor for: %(names)s") % {"names": ", ".join(missing)}
                )
        result = health.check(jobs, dry_run=dry_run, using=database)
        if not dry_run:
            self._wait_for_alerts(wait)
        if not loud:
            return
        for name, assessment in result.assessments.items():
            if dry_run or assessment.state in MonitorState.UNHEALTHY:
                line = f"{name}: {MonitorState(assessment.state).label}"
                if assessment.detail:
                    line += f" — {assessment.detail}"
                self.stdout.write(line)
        counts = ", ".join(
            f"{count} {MonitorState(state).label.lower()}"
            for state, count in result.counts.items()
            if count
        )
        opened = sum(change.opened is not None for change in result.changes)
        resolved = sum(change.resolved is not None for change in result.changes)
        if dry_run:
            message = _(
                "Dry run: %(total)d monitors (%(counts)s); nothing was stored or sent."
            )
        else:
            message = _(
                "Checked %(total)d monitors (%(counts)s); opened %(opened)d incidents, resolved %(resolved)d."
            )
        self.stdout.write(
            self.style.SUCCESS(
                message
                % {
                    "total": len(result.assessments),
                    "counts": counts or "-",
                    "opened": opened,
                    "resolved": resolved,
                }
            )
        )
        if result.resent:
            self.stdout.write(
                ngettext(
                    "Queued again %(count)d alert that had not gone out.",
                    "Queued again %(count)d alerts that had not gone out.",
                    result.resent,
                )
                % {"count": result.resent}
            )
