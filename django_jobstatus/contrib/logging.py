"""A logging handler that writes log records as JobLog lines of the run executing them.

Configure it in ``LOGGING`` like any handler::

    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"jobstatus": {"class": "django_jobstatus.contrib.logging.JobLogHandler", "level": "INFO"}},
        "loggers": {"myproject.jobs": {"handlers": ["jobstatus"], "level": "INFO"}},
    }

Inside a tracked run (whatever ``current_job()`` returns: ``track()``, ``@tracked`` or a
task recorded by an integration) each record becomes a line of that run, buffered by
the run's handle and written in batches with its next throttled write (at most one
write per ``PROGRESS_INTERVAL``, or per 500 lines), so a chatty job does not write a row
per line. A line logged once the run's end is recorded (a receiver of
``job_status_changed``) is written at once, and sets the run's ``has_errors`` at ERROR.
Outside a run the handler does nothing. Records of django-jobstatus's own loggers, the
SQL logging of the handle's own writes and of queries on the app's tables, and records
emitted while the handler is writing are left out, so it can never call itself.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import connections

from django_jobstatus.tracking import current_job, in_handle_write, tracking_database

if TYPE_CHECKING:
    from django_jobstatus.tracking import JobHandle

# True while this context is inside emit(): what it logs meanwhile is not recorded.
_emitting: ContextVar[bool] = ContextVar("django_jobstatus_log_emitting", default=False)

_OWN_LOGGERS = ("django_jobstatus", "django_jobstatus.")
# SQL on the app's tables that is not a handle's write (an integration recording a task
# the job enqueues, a nested run's start).
_OWN_SQL = re.compile(r"django_jobstatus_")


class JobLogHandler(logging.Handler):
    """Write records to the current run's log (level, message, logger, exception text)."""

    def emit(self, record: logging.LogRecord) -> None:
        if (
            _emitting.get()
            or record.name == _OWN_LOGGERS[0]
            or record.name.startswith(_OWN_LOGGERS[1])
        ):
            return
        # django.db.backends logging SQL (with DEBUG) of a handle's write: its statements,
        # and its COMMIT, logged before autocommit is back on, when no write may follow.
        # A job_status_changed receiver, run by the end's COMMIT, is inside that write:
        # its SQL is left out, its other records are lines of the run.
        sql = getattr(record, "sql", None)
        if sql is not None and (in_handle_write() or _OWN_SQL.search(str(sql))):
            return
        job = current_job()
        if job is None:
            return
        token = _emitting.set(True)
        try:
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                extra["exception"] = (self.formatter or _FORMATTER).formatException(
                    record.exc_info
                )
            elif record.exc_text:
                extra["exception"] = record.exc_text
            if record.stack_info:
                extra["stack"] = record.stack_info
            message = self.format(record) if self.formatter else record.getMessage()
            if job.run.is_finished:
                _write_now(job, record.levelno, message, extra)
            else:
                job.log(
                    record.levelno, message, extra=extra
                )  # no args: the message is already formatted
        except Exception:
            self.handleError(record)
        finally:
            _emitting.reset(token)


_FORMATTER = logging.Formatter()


def _write_now(job: JobHandle, level: int, message: str, extra: dict[str, Any]) -> None:
    """A line logged once the run's end is recorded (a receiver of job_status_changed
    logging): its handle writes no more lines, so it is written at once, through the
    run's own ``log()``, which sets ``has_errors`` with an error line."""
    alias = tracking_database()
    connection = connections[alias]
    if not connection.in_atomic_block and not connection.get_autocommit():
        # Between a COMMIT and Django turning autocommit back on (the SQL logging of that
        # COMMIT gets here): an INSERT would open a transaction nothing commits, and
        # turning autocommit on would fail. That record is left out.
        return
    job.run.log(level, message, extra=extra, using=alias)


def connect() -> None:
    """Nothing to switch on: the handler works once ``LOGGING`` names it (kept for INTEGRATIONS)."""


def disconnect() -> None:
    """Nothing to switch off."""
