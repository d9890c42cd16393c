"""A process that raises alerts and then exits, for the tests of the alerts left to send at exit.

``python -m tests.health.alert_process DB_PATH HOOK_URL ACTION``, on a file SQLite
database (migrated by the first call), with webhook alerts to HOOK_URL:

- ``command``: two monitors whose jobs have just failed, then ``manage.py
  check_jobstatus --wait=0.3``, as the command line runs it;
- ``script``: a monitor, then a tracked job that fails, as a cron script's would: its
  monitor is judged in the background, and the process ends right after the job;
- ``held``: a monitor whose job has just failed, checked; then the process waits for its
  alert (the test kills it meanwhile, with SIGKILL);
- ``later``: a check ten minutes on, as ``check_jobstatus`` will run by then (the alerts
  it queues again are delivered before the process ends).
"""

from __future__ import annotations

import sys
from datetime import timedelta

from tests.commands.sqlite_purge import configure

urlpatterns: list[object] = []


def main(path: str, hook: str, action: str) -> None:
    configure(
        path,
        ROOT_URLCONF=__name__,  # no URL: the alerts link to no page
        # ``held``: the alert is still under way when the test kills the process.
        JOBSTATUS={
            "ALERT_WEBHOOKS": [hook],
            "ALERT_TIMEOUT": 60 if action == "held" else 5,
        },
    )
    from django.core.management import call_command, execute_from_command_line
    from django.utils import timezone

    from django_jobstatus import health, track
    from django_jobstatus.models import JobMonitor, JobRun, Status

    call_command("migrate", verbosity=0)
    now = timezone.now()

    def monitored(name: str, status: str) -> None:
        """A run of job ``name`` a minute ago that ended ``status``, and a monitor of the job."""
        JobRun.objects.create(
            job_name=name,
            status=status,
            error="KeyError: 'x'" if status == Status.FAILED else "",
            created_at=now - timedelta(minutes=2),
            started_at=now - timedelta(minutes=2),
            finished_at=now - timedelta(minutes=1),
        )
        JobMonitor.objects.create(
            job_name=name, max_failures=1, created_at=now - timedelta(days=30)
        )

    if action == "command":
        for name in ("tests.first", "tests.second"):
            monitored(name, Status.FAILED)
        # As ``manage.py check_jobstatus`` runs it (not call_command()).
        execute_from_command_line(["manage.py", "check_jobstatus", "--wait=0.3", "-v0"])
    elif action == "script":
        monitored("tests.cron", Status.SUCCEEDED)
        try:
            with track("tests.cron"):
                raise KeyError("x")
        except KeyError:
            pass
    elif action == "held":
        monitored("tests.held", Status.FAILED)
        health.check()
        health.outbox.join(120)
    elif action == "later":
        health.check(now=now + timedelta(minutes=10))
        health.finish(30)
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
