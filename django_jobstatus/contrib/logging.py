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
``job_status_changed``) is written at once. Outside a run the handler does nothing.
Records of django-jobstatus's own loggers, SQL logging of the app's own queries, and
records emitted while the handler is writing are left out, so it can never call itself.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django_jobstatus.tracking import current_job, tracking_database

if TYPE_CHECKING:
    from django_jobstatus.tracking import JobHandle

# True while this context is inside emit(): what it logs meanwhile is not recorded.
_emitting: ContextVar[bool] = ContextVar("django_jobstatus_log_emitting", default=False)

_OWN_LOGGERS = ("django_jobstatus", "django_jobstatus.")
# SQL on the app's tables, and the savepoints around its writes.
_OWN_SQL = re.compile(r'django_jobstatus_|^(RELEASE |ROLLBACK TO )?SAVEPOINT "')


class JobLogHandler(logging.Handler):
    """Write records to the current run's log (level, message, logger, exception text)."""

    def emit(self, record: logging.LogRecord) -> None:
        if (
            _emitting.get()
            or record.name == _OWN_LOGGERS[0]
            or record.name.startswith(_OWN_LOGGERS[1])
        ):
            return
        if _OWN_SQL.search(str(getattr(record, "sql", ""))):
            return  # django.db.backends logging the app's own writes (with DEBUG)
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
    logging): its handle writes no more lines, so it is written at once."""
    from django_jobstatus.models import JobLog

    JobLog.build(job.run, level, message, extra=extra).save(using=tracking_database())


def connect() -> None:
    """Nothing to switch on: the handler works once ``LOGGING`` names it (kept for INTEGRATIONS)."""


def disconnect() -> None:
    """Nothing to switch off."""
