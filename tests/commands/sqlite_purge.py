"""A process for the SQLite lock tests: migrates, seeds, purges, reaps or records tasks in a file SQLite database.

``python -m tests.commands.sqlite_purge DB_PATH migrate|seed RUNS|purge|reap|record``
(``purge`` runs ``manage.py purge_jobstatus``, ``reap`` ``manage.py reap_jobstatus``,
``record`` what an integration records of a task; each prints its outcome as one JSON line).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import django
from django.conf import settings


def configure(path: str, **extra: Any) -> None:
    """Set Django up on the file SQLite database ``path`` (with ``extra`` settings)."""
    settings.configure(
        # The defaults a project gets: no transaction_mode, Python's 5-second busy timeout.
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_jobstatus",
        ],
        USE_TZ=True,
        **extra,
    )
    django.setup()


def main(path: str, action: str, *args: str) -> None:
    configure(path)
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
    elif action == "reap":
        _reap(path)
    elif action == "record":
        _record(path)
    else:
        sys.exit(f"unknown action {action!r}")


def _another_writer(path: str) -> tuple[Callable[[], None], list[str]]:
    """A run ``tests.bystander``, and a function that updates it from another connection
    (a zero busy timeout: refused at once while this process holds the write lock),
    with the list of what each call did: "committed", or SQLite's refusal.

    Each update changes the row: after one that left the row as it was, a transaction
    that had read before it could still write (seen while writing these tests).
    """
    import sqlite3

    from django_jobstatus.models import JobRun

    JobRun.objects.start("tests.bystander")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    writes: list[str] = []

    def write() -> None:
        try:
            other.execute(
                "UPDATE django_jobstatus_jobrun SET message = ?"
                " WHERE job_name = 'tests.bystander'",
                [f"written meanwhile ({len(writes)})"],
            )
            writes.append("committed")
        except sqlite3.OperationalError as exc:
            writes.append(str(exc))

    return write, writes


def _reap(path: str) -> None:
    """``reap_jobstatus`` on a lost run and a queued one, another connection writing each
    time the reaper is about to end a run it read (``_another_writer()``); prints what
    happened as one JSON line."""
    from django.core.management import call_command
    from django.utils import timezone

    from django_jobstatus.models import JobRun

    old = timezone.now() - timedelta(hours=1)
    JobRun.objects.start("tests.silent", started_at=old, heartbeat_at=old)
    JobRun.objects.enqueue("tests.forgotten", queued_at=old, created_at=old)
    write, writes = _another_writer(path)

    def meanwhile(method: Any) -> Any:
        def wrapped(run: Any, *args: Any, **kwargs: Any) -> Any:
            write()
            return method(run, *args, **kwargs)

        return wrapped

    JobRun.mark_lost = meanwhile(JobRun.mark_lost)  # type: ignore[method-assign]
    JobRun.mark_killed = meanwhile(JobRun.mark_killed)  # type: ignore[method-assign]
    out = io.StringIO()
    try:
        call_command(
            "reap_jobstatus", "--timeout=600", "--queued-timeout=600", stdout=out
        )
        code, err = 0, ""
    except Exception as exc:  # the test reports what the command raised
        code, err = 1, f"{type(exc).__name__}: {exc}"
    statuses = dict(JobRun.objects.values_list("job_name", "status"))
    print(  # noqa: T201
        json.dumps(
            {
                "code": code,
                "out": out.getvalue(),
                "err": err,
                "writes": writes,
                "statuses": statuses,
            }
        )
    )


def _record(path: str) -> None:
    """An integration records a task enqueued and a task started that has no run yet,
    another connection writing each time it has looked the task's run up
    (``_another_writer()``); prints what was recorded as one JSON line."""
    from django_jobstatus.contrib import _execution
    from django_jobstatus.models import JobRun

    write, writes = _another_writer(path)
    find_run = _execution.find_run

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        run = find_run(*args, **kwargs)
        write()
        return run

    _execution.find_run = meanwhile  # type: ignore[assignment]
    queued = _execution.record_queued("rq", "job-queued", "tests.queued")
    execution = _execution.Execution("rq", "job-started", "tests.started", worker="w1")
    execution.start()
    statuses = dict(JobRun.objects.values_list("job_name", "status"))
    print(  # noqa: T201
        json.dumps(
            {
                "queued": queued is not None,
                "started": execution.recorded,
                "writes": writes,
                "statuses": statuses,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
