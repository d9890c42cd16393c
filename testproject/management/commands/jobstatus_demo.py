"""Seed demo history, create an admin user, and keep a few jobs running for the admin to show."""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, transaction
from django.utils import timezone

from django_jobstatus import health
from django_jobstatus.fingerprints import fingerprint
from django_jobstatus.models import (
    JobLog,
    JobMonitor,
    JobRun,
    JobRunHour,
    Status,
    uuid7,
)
from django_jobstatus.values import default_worker
from testproject import jobs

# (job name, source, share of the runs, failure rate, typical seconds)
JOBS = [
    ("library.import_books", "command", 0.25, 0.05, 90),
    ("reports.build_report", "schedule", 0.2, 0.25, 20),
    ("mail.send_newsletter", "celery", 0.2, 0.03, 300),
    ("search.reindex", "rq", 0.15, 0.1, 600),
    # A real task (testproject/tasks.py): its runs' Retry enqueues it again.
    ("testproject.tasks.charge_subscriptions", "django_tasks", 0.1, 0.08, 45),
    ("maintenance.long_cleanup", "manual", 0.1, 0.02, 1200),
]
# Active runs among the seeded ones: one stuck, three queued.
ACTIVE = 4
ERRORS = [
    "ConnectionError: warehouse API unavailable",
    "ValueError: invalid ISBN '978-0'",
    "TimeoutError: SMTP server did not answer in 30 s",
    "IntegrityError: duplicate key value violates unique constraint",
]
# Seconds the live jobs have to stop once asked (they check at least twice a second).
STOP_TIMEOUT = 10


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or more")
    return number


class Command(BaseCommand):
    help = "Fill the demo database with job history, and optionally keep live jobs running."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--runs",
            type=positive_int,
            default=3000,
            help="Runs of history to seed over the last 30 days, 4 of them active (one stuck, three queued) when there are 4 or more; --monitors adds its own (default: %(default)r).",
        )
        parser.add_argument(
            "--monitors",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Create 4 job monitors (one healthy, one late, one failing, one slow): the --runs runs of history, plus the 5 runs the monitors need (6 when --runs is 1 to 3: the slow monitor's stuck run too; none with --runs 0). With --no-monitors, exactly --runs runs (default: %(default)r).",
        )
        parser.add_argument(
            "--admin",
            action="store_true",
            help="Create the superuser admin/admin if it does not exist, and print the login.",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Delete every run and monitor, and the dashboard's roll-ups of them, first.",
        )
        parser.add_argument(
            "--live",
            action="store_true",
            help="Keep demo jobs running until Ctrl-C, SIGTERM or --for seconds, then stop them (their runs end killed).",
        )
        parser.add_argument(
            "--for",
            dest="duration",
            type=positive_int,
            default=3600,
            help="Seconds the live jobs go on (default: %(default)r).",
        )

    def handle(
        self,
        *,
        runs: int,
        monitors: bool,
        admin: bool,
        reset: bool,
        live: bool,
        duration: int,
        **options: Any,
    ) -> None:
        if admin:
            self._admin()
        if reset:
            JobMonitor.objects.all().delete()
            JobRun.objects.all().delete()
            # The dashboard's figures of closed hours: rows, and their sums in the cache.
            JobRunHour.objects.all().delete()
            cache.clear()
        if live:
            self._live(duration)
            return
        if JobRun.objects.exists():
            self.stdout.write(
                f"The database already has {JobRun.objects.count()} runs; use --reset to seed again."
            )
        else:
            self._seed(runs)
        if (
            monitors and runs and not JobMonitor.objects.exists()
        ):  # --runs 0: no run at all
            self._monitors()

    def _admin(self) -> None:
        User = get_user_model()  # noqa: N806
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.org", "admin")
        self.stdout.write(
            self.style.SUCCESS(
                "Admin login: http://127.0.0.1:8000/admin/  user: admin  password: admin"
            )
        )

    def _seed(self, count: int) -> None:
        rng = random.Random(7)
        now = timezone.now()
        runs, logs = [], []
        # Exactly ``count`` runs: the active ones (one stuck, three queued) are part of it.
        active = ACTIVE if count >= ACTIVE else 0
        for _ in range(count - active):
            name, source, _share, fail_rate, seconds = rng.choices(
                JOBS, weights=[j[2] for j in JOBS]
            )[0]
            created = now - timedelta(seconds=rng.uniform(600, 30 * 86400))
            started = created + timedelta(seconds=rng.expovariate(1 / 5))
            finished = started + timedelta(seconds=rng.lognormvariate(0, 0.5) * seconds)
            roll = rng.random()
            status = (
                Status.FAILED
                if roll < fail_rate
                else Status.KILLED
                if roll < fail_rate + 0.01
                else Status.SUCCEEDED
            )
            total = rng.choice([None, 100, 1000, 5000])
            error = rng.choice(ERRORS) if status == Status.FAILED else ""
            run = JobRun(
                id=uuid7(),
                job_name=name,
                source=source,
                status=status,
                params={"args": [rng.randint(1, 40)], "kwargs": {}},
                created_at=created,
                queued_at=created,
                started_at=started,
                finished_at=finished,
                updated_at=finished,
                heartbeat_at=finished,
                progress_total=total,
                progress_current=(total or 0)
                if status == Status.SUCCEEDED
                else rng.randint(0, total or 0),
                result={"rows": rng.randint(10, 5000)}
                if status == Status.SUCCEEDED
                else None,
                error=error,
                # bulk_create skips mark_failed(), which fingerprints the error.
                error_fingerprint=fingerprint(error),
                traceback=f'Traceback (most recent call last):\n  File "jobs.py", line 42, in run\n{error}'
                if error
                else "",
                has_errors=bool(error),
                worker=f"worker-{rng.randint(1, 4)}:{rng.randint(1000, 9999)}",
                message="Done" if status == Status.SUCCEEDED else error,
            )
            runs.append(run)
            logs.append(
                JobLog(run=run, created_at=started, level=20, message=f"Started {name}")
            )
            if error:
                logs.append(
                    JobLog(run=run, created_at=finished, level=40, message=error)
                )
        with transaction.atomic():
            JobRun.objects.bulk_create(runs, batch_size=500)
            JobLog.objects.bulk_create(logs, batch_size=500)
            if active:
                # A stuck run: its worker died an hour ago.
                JobRun.objects.start(
                    "search.reindex",
                    source="rq",
                    started_at=now - timedelta(hours=1),
                    heartbeat_at=now - timedelta(hours=1),
                    worker="worker-3:4242",
                )
                for _ in range(active - 1):
                    JobRun.objects.enqueue(
                        "mail.send_newsletter", source="celery", queue="mail"
                    )
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {len(runs) + active} runs and {len(logs)} log lines over 30 days."
            )
        )

    def _monitors(self) -> None:
        """Four monitors, with runs that make one healthy, one late, one failing and one slow."""
        now = timezone.now()
        before = JobRun.objects.count()
        with transaction.atomic():
            # Late: a nightly export whose last run was three days ago.
            started = now - timedelta(days=3, hours=1)
            JobRun.objects.create(
                job_name="exports.nightly_export",
                source="schedule",
                status=Status.SUCCEEDED,
                created_at=started,
                queued_at=started,
                started_at=started,
                finished_at=started + timedelta(minutes=4),
                updated_at=started + timedelta(minutes=4),
            )
            # Failing: the last three charges failed.
            for minutes in (50, 30, 10):
                run = JobRun.objects.start(
                    "billing.charge_subscriptions",
                    source="schedule",  # not a real task: no Retry button that can only fail
                    started_at=now - timedelta(minutes=minutes),
                )
                run.mark_failed(
                    ConnectionError("payment provider unavailable (HTTP 503)")
                )
            # Slow: the stuck reindex has been running for an hour (see _seed).
            if not JobRun.objects.for_job("search.reindex").exists():
                JobRun.objects.start(
                    "search.reindex", started_at=now - timedelta(hours=1)
                )
            # Healthy: the import runs every day (and the live demo runs it again).
            JobRun.objects.start(
                "library.import_books", source="command"
            ).mark_succeeded()
            # Watched for a week: a monitor expects nothing before its creation.
            JobMonitor.objects.create(
                job_name="exports.nightly_export",
                cron="0 2 * * *",
                created_at=now - timedelta(days=7),
            )
            JobMonitor.objects.create(
                job_name="billing.charge_subscriptions", max_failures=3
            )
            JobMonitor.objects.create(
                job_name="search.reindex", max_duration=timedelta(minutes=30)
            )
            JobMonitor.objects.create(
                job_name="library.import_books",
                every=timedelta(days=1),
                max_duration_p95_factor=3,
            )
        added = JobRun.objects.count() - before
        result = health.check()
        self.stdout.write(
            self.style.SUCCESS(
                f"Created 4 job monitors and {added} runs for them: "
                + ", ".join(
                    f"{name} is {assessment.state}"
                    for name, assessment in result.assessments.items()
                )
                + "."
            )
        )

    def _live(self, duration: int) -> None:
        """Run demo jobs in threads, one after another, until the time is up, Ctrl-C or SIGTERM.

        Then the runs they hold are asked to stop and end ``killed`` before the command
        returns: daemon threads killed with the interpreter would leave them ``running``.
        """
        if JobRun.objects.count() == 0:
            raise CommandError("Seed the demo first: manage.py jobstatus_demo")
        stop = threading.Event()

        def loop(target: Any) -> None:
            while not stop.is_set():
                try:
                    target()
                except Exception:  # noqa: S110 (a failing demo job is the demo)
                    pass
                finally:
                    close_old_connections()
                stop.wait(2)

        def check_health() -> None:
            health.check()  # what manage.py check_jobstatus does, twice a minute
            stop.wait(28)

        targets = [
            lambda: jobs.import_books(400, delay=0.1),
            lambda: jobs.build_report(),
            lambda: jobs.long_cleanup(120),
            check_health,
        ]
        threads = [
            threading.Thread(target=loop, args=(target,), daemon=True)
            for target in targets
        ]
        # Ctrl-C, and the SIGTERM of `make demo`'s trap, only note that the demo is to stop:
        # an exception raised by a second signal (the trap follows Ctrl-C with SIGTERM)
        # would cut the stopping short and leave runs running.
        signals: list[int] = []
        handlers = {
            signum: signal.signal(signum, lambda signum, frame: signals.append(signum))
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for thread in threads:
                thread.start()
            self.stdout.write("Live demo jobs are running; Ctrl-C stops them.")
            deadline = time.monotonic() + duration
            while not signals and time.monotonic() < deadline:
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            stop.set()
            self._stop(threads)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """Ask the live jobs' runs to stop, wait for their threads, and kill what is left.

        The live threads are the only code of this process that runs jobs, so its runs are
        the active runs with this process's worker name. Asked again while waiting: a
        thread may have started a run just before ``stop`` was set.
        """
        held = JobRun.objects.active().filter(worker=default_worker())
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            held.request_kill()
            for thread in threads:
                thread.join(timeout=0.5)
            if not any(thread.is_alive() for thread in threads):
                break
        # A job that did not stop in time: its run ends killed now, not left running.
        held.request_kill(
            force=True, message="The live demo ended before this run did."
        )
        self.stdout.write(self.style.SUCCESS("Stopped the live demo jobs."))
