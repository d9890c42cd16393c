"""A process for the SQLite forced-kill test: a file database in WAL mode, as the demo runs
it, with Django's default (deferred) transactions and Python's 5-second busy timeout.

``python -m tests.sqlite_kill DB_PATH`` prints one JSON line: what the
forced kill of a running batch did while another connection (a child's worker writing
its progress) committed a write each time a run was about to be ended killed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from typing import Any

from tests.commands.sqlite_purge import configure


def main(path: str) -> None:
    configure(path)
    import django
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    with django.db.connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")

    from django_jobstatus.batches import start_batch
    from django_jobstatus.models import JobRun

    parent = start_batch("tests.batch", ["tests.child", "tests.other"])
    child, other = parent.children.order_by("job_name")
    child.mark_running(worker="host:1")
    other.mark_running(worker="host:2")

    # The worker of the batch's other child writes its progress (a zero busy timeout:
    # refused at once while this process holds the write lock).
    worker = sqlite3.connect(path, timeout=0, isolation_level=None)
    writes: list[str] = []

    def write() -> None:
        try:
            worker.execute(
                "UPDATE django_jobstatus_jobrun SET progress_current = ?"
                " WHERE job_name = 'tests.other'",
                [len(writes) + 1],
            )
            writes.append("committed")
        except sqlite3.OperationalError as exc:
            writes.append(str(exc))

    mark_killed = JobRun.mark_killed

    def meanwhile(run: Any, *args: Any, **kwargs: Any) -> Any:
        write()
        return mark_killed(run, *args, **kwargs)

    JobRun.mark_killed = meanwhile  # type: ignore[method-assign]
    try:
        result = JobRun.objects.filter(pk=parent.pk).request_kill(force=True)
        outcome: dict[str, Any] = {"code": 0, "killed": result.killed}
    except Exception as exc:  # the test reports what the kill raised
        outcome = {"code": 1, "err": f"{type(exc).__name__}: {exc}"}
    JobRun.mark_killed = mark_killed  # type: ignore[method-assign]
    outcome["statuses"] = dict(JobRun.objects.values_list("job_name", "status"))
    outcome["writes"] = writes
    print(json.dumps(outcome))  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:])
