"""django_jobstatus.contrib.logging.JobLogHandler: log records as JobLog lines of the current run."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection, connections, transaction

from django_jobstatus import track
from django_jobstatus.contrib.logging import JobLogHandler
from django_jobstatus.models import JobLog, JobRun
from django_jobstatus.signals import job_status_changed
from django_jobstatus.tracking import JobHandle, tracking_database

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


def test_an_error_logged_once_the_run_ended_sets_has_errors(
    transactional_db: None, logger: logging.Logger
) -> None:
    """A line logged once the run's end is recorded (a job_status_changed receiver) is
    written at once; at ERROR it sets the run's has_errors, as any error line does."""

    def receiver(sender: Any, run: JobRun, status: str, **kwargs: Any) -> None:
        if status == "succeeded":
            logger.error("could not send the report of %s", run.job_name)

    job_status_changed.connect(receiver, dispatch_uid="test_logging_error_receiver")
    try:
        with track("logging.end_error", interval=3600) as job:
            logger.info("working")
    finally:
        job_status_changed.disconnect(dispatch_uid="test_logging_error_receiver")
    levels = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("level", flat=True)
    )
    assert levels == [logging.INFO, logging.ERROR]
    run = JobRun.objects.get(pk=job.run.pk)
    assert run.has_errors is True
    assert JobRun.objects.with_errors().filter(pk=run.pk).exists()


def test_a_line_a_thread_logs_while_the_end_is_written_is_kept(
    transactional_db: None, logger: logging.Logger
) -> None:
    """A thread of the job (in a copy of its context) logs while the end is written,
    after the end took the buffer and before the run is finished: the line is written
    with the end, not left on a handle that never writes again."""
    ending = threading.Event()
    go = threading.Event()
    logged = threading.Event()

    def worker() -> None:
        assert go.wait(10)
        logger.info("late line from the worker")
        logged.set()

    def at_the_end(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if (
            ending.is_set()
            and sql.startswith("UPDATE")
            and "django_jobstatus_jobrun" in sql
        ):
            ending.clear()
            go.set()
            assert logged.wait(10), "the worker did not log"
        return execute(sql, params, many, context)

    with (
        connections[tracking_database()].execute_wrapper(at_the_end),
        track("logging.thread_end", interval=3600) as job,
    ):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
        thread.start()
        logger.info("main line")
        ending.set()
    thread.join(10)
    assert go.is_set(), "the end's UPDATE was not seen"
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == ["main line", "late line from the worker"]


@pytest.fixture
def sql_logging() -> Iterator[logging.Handler]:
    """A handler on the root logger at DEBUG, with Django's SQL logging on (DEBUG=True
    and "django.db.backends" at DEBUG: a development LOGGING that shows the SQL)."""
    root = logging.getLogger()
    handler = JobLogHandler(level=logging.DEBUG)
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    sql = logging.getLogger("django.db.backends")
    sql.setLevel(logging.DEBUG)
    alias = connections[tracking_database()]
    alias.force_debug_cursor = True
    yield handler
    alias.force_debug_cursor = False
    root.removeHandler(handler)
    root.setLevel(before)
    sql.setLevel(logging.NOTSET)
    if not alias.get_autocommit():  # left in a transaction: let the database be flushed
        alias.connection.rollback()
        alias.set_autocommit(True)


def test_the_sql_of_the_handle_s_own_writes_is_left_out(
    transactional_db: None, sql_logging: logging.Handler
) -> None:
    """A write of the handle not started by a log record (a due progress call) adds
    none of its SQL, BEGIN and COMMIT included, as lines of the run."""
    target = logging.getLogger(NAME)
    with track("logging.own_sql", interval=3600) as job:
        target.info("one")
        job.advance()
        job.flush()  # the handle's own write, as a due progress call makes
        target.info("two")
        job.advance()
        job.flush()
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == ["one", "two"]


@pytest.mark.postgres
def test_sql_logging_of_the_end_s_commit_leaves_the_end_and_the_connection_sound(
    transactional_db: None, sql_logging: logging.Handler
) -> None:
    """Django logs the end's COMMIT once the run is finished, before it turns autocommit
    back on: the handler writes nothing then, so the end is recorded once (with its
    job_status_changed) and the job's connection is not left in a transaction."""
    sent: list[str] = []

    def receiver(sender: Any, run: JobRun, status: str, **kwargs: Any) -> None:
        sent.append(status)

    job_status_changed.connect(receiver, dispatch_uid="test_logging_commit_receiver")
    try:
        with track("logging.commit_line", interval=3600) as job:
            logging.getLogger(NAME).info("working")
    finally:
        job_status_changed.disconnect(dispatch_uid="test_logging_commit_receiver")
    own = connections[tracking_database()]
    assert own.get_autocommit() is True
    assert not own.in_atomic_block
    assert sent == ["succeeded"]
    assert JobRun.objects.get(pk=job.run.pk).status == "succeeded"


def test_a_transaction_logged_once_the_run_ended_leaves_the_connection_sound(
    transactional_db: None, sql_logging: logging.Handler
) -> None:
    """Code still running in the run's context once its end is recorded (a thread the
    job left behind) commits a transaction with SQL logging on: the handler writes no
    line while Django has committed and not yet turned autocommit back on (the
    COMMIT's record), which would leave the connection in a transaction."""
    with track("logging.after_the_end", interval=3600) as job:
        context = contextvars.copy_context()

    def lingering() -> None:
        with transaction.atomic(using=tracking_database()):
            pass
        logging.getLogger(NAME).info("still logging")

    context.run(lingering)
    own = connections[tracking_database()]
    assert own.get_autocommit() is True
    assert not own.in_atomic_block
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert "still logging" in messages
    assert not any("COMMIT" in message for message in messages), messages


def test_a_line_a_thread_emits_as_the_end_is_written_is_kept(
    transactional_db: None, logger: logging.Logger
) -> None:
    """The handler reads ``job.run.is_finished`` (False: the end is not written yet),
    then buffers the line with ``job.log()``. A thread held between the two (by a trace
    hook at the call of ``JobHandle.log``) while the end and its last lines were written
    put its line in a buffer no write took any more (found by a review)."""
    at_log = threading.Event()
    end_written = threading.Event()
    code = JobHandle.log.__code__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is code:
            at_log.set()
            assert end_written.wait(20), "the end was not written"
        return None

    def worker() -> None:
        sys.settrace(tracer)
        try:
            logger.info("line from the worker")
        finally:
            sys.settrace(None)

    with track("logging.thread_race", interval=3600) as job:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
        thread.start()
        assert at_log.wait(20), "the worker did not log"
    # The end is written (the block has been left).
    end_written.set()
    thread.join(20)
    assert not thread.is_alive()
    messages = list(
        JobLog.objects.for_run(job.run).order_by("id").values_list("message", flat=True)
    )
    assert messages == ["line from the worker"]
