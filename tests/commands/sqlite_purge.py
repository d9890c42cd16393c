"""A process for the SQLite lock test: migrates, seeds or purges a file SQLite database.

``python -m tests.commands.sqlite_purge DB_PATH migrate|seed RUNS|purge`` (``purge`` runs
``manage.py purge_jobstatus`` and prints its exit status and output as one JSON line).
"""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta

import django
from django.conf import settings


def main(path: str, action: str, *args: str) -> None:
    settings.configure(
        # The defaults a project gets: no transaction_mode, Python's 5-second busy timeout.
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_jobstatus",
        ],
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from django_jobstatus.models import JobLog, JobRun, Status

    if action == "migrate":
        call_command("migrate", verbosity=0)
        with django.db.connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
    elif action == "seed":
        old = timezone.now() - timedelta(days=60)
        runs = JobRun.objects.bulk_create(
            JobRun(
                job_name=f"tests.old_{i % 7}",
                status=Status.SUCCEEDED,
                created_at=old + timedelta(seconds=i),
                started_at=old,
                finished_at=old,
            )
            for i in range(int(args[0]))
        )
        JobLog.objects.bulk_create(
            JobLog(run=run, created_at=old, message=f"line {n}")
            for run in runs
            for n in range(2)
        )
    elif action == "purge":
        out, err = io.StringIO(), io.StringIO()
        try:
            call_command(
                "purge_jobstatus",
                "--days=30",
                "--keep-last=0",
                "--batch-size=10",
                stdout=out,
                stderr=err,
            )
            code = 0
        except Exception as exc:  # the test reports what the command raised
            code, err = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
        left = JobRun.objects.filter(job_name__startswith="tests.old_").count()
        print(  # noqa: T201
            json.dumps(
                {
                    "code": code,
                    "out": out.getvalue(),
                    "err": err.getvalue(),
                    "left": left,
                }
            )
        )
    else:
        sys.exit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
