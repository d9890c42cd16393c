"""django_jobstatus.contrib.logging.JobLogHandler: log records as JobLog lines of the current run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection

from django_jobstatus import track
from django_jobstatus.contrib.logging import JobLogHandler
from django_jobstatus.models import JobLog, JobRun

NAME = "tests.contrib.logging_target"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger with only the handler, as LOGGING would configure it."""
    target = logging.getLogger(NAME)
    handler = JobLogHandler(level=logging.INFO)
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    target.propagate = False
    yield target
    target.removeHandler(handler)
    target.propagate = True
    target.setLevel(logging.NOTSET)


def test_outside_a_run_nothing_is_written(
    db: None, logger: logging.Logger, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        logger.warning("nobody listens")
    assert not JobLog.objects.exists()


def test_records_become_lines_of_the_current_run(
    db: None, logger: logging.Logger
) -> None:
    with track("logging.job", interval=3600) as job:
        logger.info("processing %s of %d", "item", 3)
        logger.debug("below the handler's level")
        logger.warning("careful: 100%")
    lines = list(
        JobLog.objects.for_run(job.run)
        .order_by("id")
        .values_list("level", "message", "extra")
    )
    assert lines == [
        (logging.INFO, "processing item of 3", {"logger": NAME}),
        (logging.WARNING, "careful: 100%", {"logger": NAME}),
    ]


def test_exception_text_is_kept_and_marks_errors(
    db: None, logger: logging.Logger
) -> None:
    with track("logging.job", interval=3600) as job:
        try:
            raise ValueError("bad row 7")
        except ValueError:
            logger.exception("import failed")
    line = JobLog.objects.for_run(job.run).get()
    assert (line.level, line.message) == (logging.ERROR, "import failed")
    assert line.extra["exception"].startswith("Traceback (most recent call last):")
    assert line.extra["exception"].endswith("ValueError: bad row 7")
    job.run.refresh_from_db()
    assert job.run.has_errors is True


def test_a_chatty_job_writes_in_batches(
    db: None, logger: logging.Logger, django_assert_max_num_queries: Any
) -> None:
    with (
        track("logging.chatty", interval=3600) as job,
        django_assert_max_num_queries(20) as queries,
    ):
        for i in range(1200):
            logger.info("line %d", i)
    # One write of the run per 500 lines (the rest with the end), not one per line.
    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 2
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == [f"line {i}" for i in range(1200)]


def test_a_formatter_shapes_the_message(db: None, logger: logging.Logger) -> None:
    logger.handlers[0].setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    with track("logging.job", interval=3600) as job:
        logger.info("hello")
    assert JobLog.objects.for_run(job.run).get().message == "[INFO] hello"


def test_own_loggers_and_own_sql_are_never_recorded(
    db: None, logger: logging.Logger
) -> None:
    handler = logger.handlers[0]
    own = logging.getLogger("django_jobstatus.tracking")
    sql = logging.getLogger("django.db.backends")
    own.addHandler(handler)
    sql.addHandler(handler)
    sql.setLevel(logging.DEBUG)
    handler.setLevel(logging.DEBUG)
    connection.force_debug_cursor = True
    try:
        with track(
            "logging.job", interval=0
        ) as job:  # every line is written at once, logging its SQL
            logger.info("one")
            own.warning("from the app itself")
            logger.info("two")
    finally:
        connection.force_debug_cursor = False
        own.removeHandler(handler)
        sql.removeHandler(handler)
        sql.setLevel(logging.NOTSET)
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == ["one", "two"]


def test_a_database_error_while_writing_does_not_recurse_or_break_the_job(
    transactional_db: None, logger: logging.Logger
) -> None:
    handler = logger.handlers[0]
    own = logging.getLogger("django_jobstatus")
    own.addHandler(
        handler
    )  # the failed write logs a warning there: it must not come back here

    def refuse(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "django_jobstatus_joblog" in sql:
            raise OperationalError("simulated outage")
        return execute(sql, params, many, context)

    try:
        with track("logging.job", interval=0) as job:
            with connection.execute_wrapper(refuse):
                for i in range(5):
                    logger.info("line %d", i)
            logger.info("after the outage")
    finally:
        own.removeHandler(handler)
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.status == "succeeded"
    messages = list(
        JobLog.objects.for_run(run).order_by("id").values_list("message", flat=True)
    )
    assert messages == [
        *(f"line {i}" for i in range(5)),
        "after the outage",
    ]  # kept, written when it came back


def test_records_logged_while_the_handler_writes_are_left_out(
    db: None, logger: logging.Logger
) -> None:
    def talkative(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "django_jobstatus_joblog" in sql:
            logger.warning(
                "a query on the log table"
            )  # would write a line, which would log again…
        return execute(sql, params, many, context)

    with track("logging.job", interval=0) as job, connection.execute_wrapper(talkative):
        logger.info("one")
        logger.info("two")
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == ["one", "two"]


def test_nested_runs_each_get_their_own_lines(db: None, logger: logging.Logger) -> None:
    """A run started inside another takes the lines logged while it runs; the outer run
    gets its lines back when the inner one ends."""
    with track("logging.outer", interval=3600) as outer:
        logger.info("outer before")
        with track("logging.inner", interval=3600) as inner:
            logger.info("inner")
        logger.info("outer after")

    def messages(run: JobRun) -> list[str]:
        return list(
            JobLog.objects.for_run(run).order_by("id").values_list("message", flat=True)
        )

    assert messages(outer.run) == ["outer before", "outer after"]
    assert messages(inner.run) == ["inner"]


def test_a_line_logged_while_the_run_ends_is_not_lost(
    transactional_db: None, logger: logging.Logger
) -> None:
    """A receiver of job_status_changed that logs runs while the run's handle is still
    current: its line is written, never buffered on a handle nothing flushes again."""
    from django_jobstatus.signals import job_status_changed

    def receiver(sender: Any, **kwargs: Any) -> None:
        logger.info("status changed")

    job_status_changed.connect(receiver, dispatch_uid="test_logging_receiver")
    try:
        with track("logging.job", interval=3600) as job:
            logger.info("working")
    finally:
        job_status_changed.disconnect(dispatch_uid="test_logging_receiver")
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.status == "succeeded"
    messages = list(
        JobLog.objects.for_run(run).order_by("id").values_list("message", flat=True)
    )
    assert "working" in messages
    assert messages.count("status changed") >= 1
