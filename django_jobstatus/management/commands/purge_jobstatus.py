"""``manage.py purge_jobstatus``: delete old finished runs and their logs, in short batches."""

from __future__ import annotations

import argparse
from functools import reduce
from operator import or_
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus.conf import settings
from django_jobstatus.management.commands._arguments import (
    add_database,
    day_count,
    job_name,
    positive_int,
    status_name,
    whole_number,
)
from django_jobstatus.models import JobRun

if TYPE_CHECKING:
    from django_jobstatus.retention import PurgeResult


class Command(BaseCommand):
    @property
    def help(self) -> str:  # type: ignore[override]
        # A property: argparse needs a str, and translating needs the active language.
        return _(
            "Delete finished job runs and their logs older than the retention, in short batches."
        )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--days",
            type=day_count,
            default=None,
            help=_(
                "Delete runs created more than this many days ago, whatever their status; when not given, JOBSTATUS['RETENTION'] per status, then JOBSTATUS['RETENTION_DAYS'] (%(retention_days)s) (default: %%(default)r)"
            )
            % {"retention_days": settings.RETENTION_DAYS},
        )
        parser.add_argument(
            "--keep-last",
            type=whole_number,
            default=settings.KEEP_LAST,
            help=_(
                "Keep the newest N runs of every job name whatever their age (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--job-name",
            action="append",
            type=job_name,
            default=None,
            help=_("Only runs of this job; repeat for several (default: %(default)r)"),
        )
        parser.add_argument(
            "--status",
            action="append",
            type=status_name,
            default=None,
            help=_(
                "Only runs in this status; repeat for several (default: %(default)r, every finished status)"
            ),
        )
        parser.add_argument(
            "--include-active",
            action="store_true",
            help=_(
                "Also delete queued, running and retrying runs (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=10_000,
            help=_(
                "Most runs deleted (with their logs) per transaction; each batch is sized to take about 0.1 s (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--jobs",
            type=positive_int,
            default=1,
            help=_(
                "Delete with this many database connections at once, on PostgreSQL: a long backlog goes faster, using as many of the database's cores (default: %(default)r)"
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=_(
                "Print what would be deleted per job name and status; delete nothing (default: %(default)r)"
            ),
        )
        add_database(parser)

    def handle(
        self,
        *,
        days: int | None,
        keep_last: int,
        job_name: list[str] | None,
        status: list[str] | None,
        include_active: bool,
        batch_size: int,
        jobs: int,
        dry_run: bool,
        database: str,
        verbosity: int,
        **options: Any,
    ) -> None:
        loud = verbosity > 0
        self.verbosity = verbosity
        self._printed_at = 0.0
        runs = JobRun.objects.using(database).all()
        if job_name:
            runs = reduce(or_, (runs.for_job(name) for name in job_name))
        try:
            result = runs.purge(
                days=days,
                keep_last=keep_last,
                statuses=status,
                include_active=include_active,
                batch_size=batch_size,
                jobs=jobs,
                dry_run=dry_run,
                progress=self._progress if loud else None,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not loud:
            return
        if dry_run:
            for row in result.rows:
                self.stdout.write(
                    _("%(job_name)s %(status)s: %(runs)s, %(logs)s")
                    % {**row, **_counted(row["runs"], row["logs"])}
                )
            self.stdout.write(
                self.style.SUCCESS(
                    _(
                        "Dry run: %(runs)s and %(logs)s would be deleted; nothing was deleted."
                    )
                    % _counted(result.runs, result.logs)
                )
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                _(
                    "Deleted %(runs)s and %(logs)s in %(batches)s, %(elapsed).1f s (%(rate).0f runs/s; longest batch %(longest).3f s)."
                )
                % {
                    **_counted(result.runs, result.logs),
                    "batches": ngettext("%(n)d batch", "%(n)d batches", result.batches)
                    % {"n": result.batches},
                    "elapsed": result.elapsed,
                    "rate": result.runs / result.elapsed if result.elapsed else 0,
                    "longest": result.longest_batch,
                }
            )
        )

    def _progress(self, result: PurgeResult) -> None:
        # One line a second at most (every batch with --verbosity 2).
        if self.verbosity < 2 and result.elapsed - self._printed_at < 1.0:
            return
        self._printed_at = result.elapsed
        rate = result.runs / result.elapsed if result.elapsed else 0
        self.stdout.write(
            _("%(runs)s, %(logs)s deleted (%(rate).0f runs/s)")
            % {**_counted(result.runs, result.logs), "rate": rate},
        )


def _counted(runs: int, logs: int) -> dict[str, str]:
    """``{"runs": "3 runs", "logs": "1 log line"}``: each count with its plural form."""
    return {
        "runs": ngettext("%(n)d run", "%(n)d runs", runs) % {"n": runs},
        "logs": ngettext("%(n)d log line", "%(n)d log lines", logs) % {"n": logs},
    }
