"""A worker process for the concurrency tests: creates and finishes tracked runs with logs.

Run as ``python -m tests.commands.writer STOP_FILE`` with ``JOBSTATUS_WRITER_DB`` holding
the database settings as JSON. It prints ``ready`` after a few runs, keeps going until
STOP_FILE exists, then prints one JSON line: every operation's start time and latency,
and any error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import Any

import django
from django.conf import settings

WARM_UP = 5


def main(stop_file: str) -> None:
    settings.configure(
        DATABASES={"default": json.loads(os.environ["JOBSTATUS_WRITER_DB"])},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_jobstatus",
        ],
        USE_TZ=True,
        # Every progress and log call is written at once: as many writes as possible.
        JOBSTATUS={"PROGRESS_INTERVAL": 0, "FINISH_RETRY_TIMEOUT": 2.0},
    )
    django.setup()
    from django_jobstatus import track

    ops: list[tuple[float, float]] = []  # (start, seconds)
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(
                self.format(record)
            )  # tracking logs write failures instead of raising

    logging.getLogger("django_jobstatus").addHandler(Collect(logging.WARNING))
    runs = 0

    def timed(action: Any) -> None:
        began = time.time()
        action()
        ops.append((began, time.time() - began))

    while not os.path.exists(stop_file):
        try:
            began = time.time()
            with track("tests.writer", source="command") as job:
                ops.append((began, time.time() - began))
                for n in range(3):
                    timed(lambda n=n: job.info("line %d", n))
                    timed(lambda n=n: job.progress(n + 1, total=3))
                ending = time.time()
            ops.append((ending, time.time() - ending))
            if job.run.status != "succeeded":
                errors.append(f"run {job.run.pk} ended {job.run.status}")
        except Exception:
            errors.append(traceback.format_exc())
        runs += 1
        if runs == WARM_UP:
            print("ready", flush=True)  # noqa: T201
    print(json.dumps({"ops": ops, "errors": errors, "runs": runs}), flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1])
