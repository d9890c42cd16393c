"""The statements a worker sends for every task — the run queued, started, moved — as SQL text made once.

Building and compiling an ORM query costs more Python than the statement costs the
database: 1–3 ms a statement, most of the overhead of recording a trivial task (issue 12).
These write the same rows with the same conditions, from SQL text made once per database
alias and shape, with each value converted by its field (``get_db_prep_save``) and each
returned column by the converters the ORM would use. PostgreSQL and SQLite only: on
another database ``usable()`` is False and the callers take the ORM's way.

A move is the same conditional UPDATE as the ORM's (``still()``: the status compared on
the row found by primary key, never through an index), so two processes still never
both win.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.core.exceptions import FieldDoesNotExist
from django.db import connections, transaction
from django.db.models.signals import post_save, pre_save

from django_jobstatus import clock

if TYPE_CHECKING:
    from django.db.models import Field

    from django_jobstatus.models import JobRun

VENDORS = frozenset({"postgresql", "sqlite"})


def usable(alias: str) -> bool:
    """Whether runs are written through these statements on database ``alias`` (not on SQLite before 3.35)."""
    connection = connections[alias]
    return (
        connection.vendor in VENDORS
        # UPDATE … RETURNING: SQLite 3.35+.
        and connection.features.can_return_columns_from_insert
    )


def observed() -> bool:
    """Whether a ``pre_save``/``post_save`` receiver listens to JobRun: a new run is then saved through the ORM, so that it sees it."""
    from django_jobstatus.models import JobRun

    return pre_save.has_listeners(JobRun) or post_save.has_listeners(JobRun)


Converter = Callable[[Any, Any, Any], Any]


class _Table:
    """The run table as one database spells it: its columns, and the converters of each."""

    def __init__(self, alias: str, vendor: str) -> None:
        from django_jobstatus.models import JobRun

        connection = connections[alias]
        quote = connection.ops.quote_name
        meta = JobRun._meta
        self.vendor = vendor
        self.name = quote(meta.db_table)
        self.fields: list[Field[Any, Any]] = [
            field for field in meta.concrete_fields if not field.generated
        ]
        self.by_name: dict[str, Field[Any, Any]] = {}
        for field in self.fields:
            self.by_name[field.name] = field
            self.by_name[field.attname] = field
        self.attnames = [field.attname for field in self.fields]
        self.column = {field.name: quote(str(field.column)) for field in self.fields}
        self.pk = self.column[meta.pk.name]
        self.columns = ", ".join(quote(str(field.column)) for field in self.fields)
        self.converters: list[tuple[Any, list[Converter]]] = []
        for field in self.fields:
            col = field.get_col(meta.db_table)
            self.converters.append(
                (
                    col,
                    [
                        *connection.ops.get_db_converters(col),
                        *col.get_db_converters(connection),
                    ],
                )
            )
        column = self.column
        self.others = (
            f"SELECT 1 FROM {self.name} WHERE {column['source']} = %s "  # noqa: S608 (quoted names; values are parameters)
            f"AND {column['backend_job_id']} = %s AND {self.pk} <> %s"
        )
        # Defaults that are constants (not callables), converted once.
        self.constants: dict[str, tuple[Any, Any]] = {
            field.attname: (
                field.get_default(),
                field.get_db_prep_save(field.get_default(), connection),
            )
            for field in self.fields
            if not callable(field.default)
        }
        # The status compared on the row, not through an index (JobRunQuerySet.still()).
        self.still = f"({quote('status')} || '') = %s"

    def run(self, alias: str, row: Iterable[Any]) -> JobRun:
        """The JobRun of a row of all the columns, as a query would load it."""
        from django_jobstatus.models import JobRun

        connection = connections[alias]
        values = []
        for value, (col, converters) in zip(row, self.converters, strict=True):
            for converter in converters:
                value = converter(value, col, connection)
            values.append(value)
        return JobRun.from_db(alias, self.attnames, values)


@functools.lru_cache(maxsize=32)
def _table(alias: str, vendor: str) -> _Table:
    return _Table(alias, vendor)


def table(alias: str) -> _Table:
    return _table(alias, connections[alias].vendor)


def _python(
    spec: _Table, alias: str, values: dict[str, Any]
) -> tuple[list[Any], list[tuple[Field[Any, Any], Any]]]:
    """The value of every column of the run ``values`` make (field name or attname → value; the others their defaults), and its related instances.

    A foreign key given by name takes a model instance (or None), as ``JobRun(...)`` does.
    """
    given: dict[str, Any] = {}
    related: list[tuple[Field[Any, Any], Any]] = []
    for name, value in values.items():
        field = spec.by_name.get(name)
        if field is None:
            raise TypeError(f"JobRun() got unexpected keyword arguments: {name!r}")
        if field.is_relation and name == field.name and value is not None:
            if value.pk is None:
                raise ValueError(
                    f"save() prohibited to prevent data loss due to unsaved related object '{name}'."
                )
            related.append((field, value))
            value = value.pk
        given[field.attname] = value
    python: list[Any] = []
    for field in spec.fields:
        attname = field.attname
        if attname in given:
            python.append(given[attname])
        elif attname in spec.constants:
            python.append(spec.constants[attname][0])
        else:
            python.append(field.get_default())
    return python, related


def _on_server_clock(value: Any, vendor: str) -> bool:
    """Whether ``value`` is written as the database's now, in SQL (``clock.DatabaseNow``)."""
    return isinstance(value, clock.DatabaseNow) and clock.sql(vendor) is not None


@functools.lru_cache(maxsize=32)
def _insert_sql(alias: str, vendor: str, stamped: frozenset[str]) -> str:
    """INSERT of one run, the columns in ``stamped`` set to the database's now."""
    spec = _table(alias, vendor)
    now = clock.sql(vendor) or "%s"
    values = ", ".join(
        now if field.attname in stamped else "%s" for field in spec.fields
    )
    return f"INSERT INTO {spec.name} ({spec.columns}) VALUES ({values})"  # noqa: S608 (quoted names; values are parameters)


def _row(
    spec: _Table, alias: str, values: dict[str, Any]
) -> tuple[JobRun, str, list[Any]]:
    """The run ``values`` make (see ``_python()``), its INSERT and the INSERT's parameters."""
    from django_jobstatus.models import JobRun

    connection = connections[alias]
    python, related = _python(spec, alias, values)
    params: list[Any] = []
    stamped = set()
    for field, value in zip(spec.fields, python, strict=True):
        constant = spec.constants.get(field.attname)
        if (
            constant is not None and constant[0] is value
        ):  # a constant default, converted once
            params.append(constant[1])
        elif _on_server_clock(value, spec.vendor):
            stamped.add(field.attname)
        else:
            params.append(field.get_db_prep_save(value, connection))
    run = JobRun.from_db(alias, spec.attnames, python)
    for field, value in related:
        field.set_cached_value(run, value)  # type: ignore[attr-defined]
    return run, _insert_sql(alias, spec.vendor, frozenset(stamped)), params


def insert(alias: str, values: dict[str, Any]) -> JobRun:
    """INSERT one run with ``values`` (see ``_row()``); the run."""
    spec = table(alias)
    run, sql, params = _row(spec, alias, values)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
    return run


def insert_alone(alias: str, values: dict[str, Any]) -> tuple[JobRun, bool]:
    """INSERT one run (see ``_row()``); the run, and whether no other run of its job was recorded before.

    One statement: ``INSERT … RETURNING EXISTS (…)`` for the runs with its ``source``
    and ``backend_job_id``.
    """
    spec = table(alias)
    run, sql, params = _row(spec, alias, values)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"{sql} RETURNING EXISTS ({spec.others})",
            [*params, run.source, run.backend_job_id, params[0]],
        )
        row = cursor.fetchone()
    return run, not row[0]


@functools.lru_cache(maxsize=256)
def _move_sql(
    alias: str,
    vendor: str,
    names: tuple[str, ...],
    first: tuple[str, ...],
    stamped: frozenset[str],
) -> str:
    spec = _table(alias, vendor)
    now = clock.sql(vendor) or "%s"
    value = {name: now if name in stamped else "%s" for name in (*names, *first)}
    sets = [f"{spec.column[name]} = {value[name]}" for name in names]
    sets += [
        f"{spec.column[name]} = COALESCE({spec.column[name]}, {value[name]})"
        for name in first
    ]
    return (
        f"UPDATE {spec.name} SET {', '.join(sets)} "  # noqa: S608 (quoted names; values are parameters)
        f"WHERE {spec.pk} = %s AND {spec.still} AND {spec.column['attempt']} = %s"
    )


def move(
    alias: str,
    pk: Any,
    status: str,
    attempt: int,
    values: dict[str, Any],
    first: dict[str, Any],
) -> int:
    """UPDATE run ``pk`` while it is ``status`` at ``attempt``: ``values`` set, ``first`` set where NULL; the rows changed."""
    spec = table(alias)
    connection = connections[alias]
    params = []
    stamped = set()
    for name, value in (*values.items(), *first.items()):
        field = spec.by_name.get(name)
        if field is None:
            raise FieldDoesNotExist(f"JobRun has no field named '{name}'")
        if _on_server_clock(value, spec.vendor):
            stamped.add(name)
        else:
            params.append(field.get_db_prep_save(value, connection))
    sql = _move_sql(alias, spec.vendor, tuple(values), tuple(first), frozenset(stamped))
    params += [spec.by_name["id"].get_db_prep_save(pk, connection), status, attempt]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


@functools.lru_cache(maxsize=32)
def _start_sql(alias: str, vendor: str) -> str:
    spec = _table(alias, vendor)
    column = spec.column
    greatest = "MAX" if vendor == "sqlite" else "GREATEST"
    newest = (
        f"SELECT {spec.pk} FROM {spec.name} "  # noqa: S608 (quoted names; values are parameters)
        f"WHERE {column['source']} = %s AND {column['backend_job_id']} = %s "
        f"ORDER BY {column['created_at']} DESC LIMIT 1"
    )
    return (
        f"UPDATE {spec.name} SET {column['status']} = %s, {column['worker']} = %s, "  # noqa: S608 (quoted names; values are parameters)
        f"{column['error']} = '', {column['traceback']} = '', "
        # Never before its enqueue (a web server's clock ahead of the worker's).
        f"{column['started_at']} = COALESCE({column['started_at']}, "
        f"{greatest}(%s, COALESCE({column['queued_at']}, %s))), "
        f"{column['heartbeat_at']} = {clock.sql(vendor) or '%s'}, "
        f"{column['updated_at']} = %s, "
        f"{column['attempt']} = {greatest}({column['attempt']}, %s) "
        f"WHERE {spec.pk} = ({newest}) AND {spec.still} "
        f"RETURNING {spec.columns}"
    )


def start_queued(
    alias: str,
    source: str,
    backend_job_id: str,
    *,
    worker: str,
    attempt: int,
    now: datetime.datetime,
) -> JobRun | None:
    """queued → running for the newest run of the job, in one UPDATE … RETURNING; the run, or None when it is not queued.

    As ``mark_running()``: the attempt starts with no error of an earlier one, and
    ``started_at`` is set once, no earlier than ``queued_at``.
    """
    from django_jobstatus.states import Status

    spec = table(alias)
    connection = connections[alias]
    stamp = spec.by_name["started_at"].get_db_prep_save(now, connection)
    # The heartbeat is the database's now where it has a clock of its own (clock.sql()).
    beat = [] if clock.sql(spec.vendor) else [stamp]
    params = [
        Status.RUNNING,
        spec.by_name["worker"].get_db_prep_save(worker, connection),
        stamp,
        stamp,
        *beat,
        stamp,
        attempt,
        source,
        backend_job_id,
        Status.QUEUED,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_start_sql(alias, spec.vendor), params)
        row = cursor.fetchone()
    return None if row is None else spec.run(alias, row)


# Queued runs written behind the enqueue (writebehind.py).

# The advisory locks of a task's run: (LOCK_CLASS, a 32-bit hash of its source and id).
LOCK_CLASS = 0x6A6F6273  # "jobs"


def _job_key(source: str, backend_job_id: str) -> int:
    value = zlib.crc32(f"{source}\x00{backend_job_id}".encode())
    return value - 2**32 if value >= 2**31 else value


def lock_jobs(alias: str, jobs: Iterable[tuple[str, str]]) -> None:
    """On PostgreSQL, hold the advisory lock of each task ``(source, backend_job_id)`` until the transaction ends.

    The writer of queued runs and a worker that found no queued run take it, so that
    they never both create a run of the task. Elsewhere nothing (SQLite has one writer).
    """
    connection = connections[alias]
    keys = sorted({_job_key(source, job) for source, job in jobs})
    if connection.vendor != "postgresql" or not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::integer[]) AS key",
            [LOCK_CLASS, keys],
        )


@contextlib.contextmanager
def write_transaction(db: str) -> Iterator[None]:
    """A transaction that holds the write lock from its first statement.

    SQLite's default (deferred) transaction reads first; once another connection has
    committed since, its first write fails at once with "database is locked", whatever
    the busy timeout. ``BEGIN IMMEDIATE`` waits for the lock (up to the busy timeout)
    before reading anything. Other databases lock rows as they go.
    """
    connection = connections[db]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic(using=db):
            yield
        return
    connection.ensure_connection()
    mode = connection.transaction_mode  # type: ignore[attr-defined]
    connection.transaction_mode = "IMMEDIATE"  # type: ignore[attr-defined]
    try:
        with transaction.atomic(using=db):
            connection.transaction_mode = mode  # type: ignore[attr-defined]
            yield
    finally:
        connection.transaction_mode = mode  # type: ignore[attr-defined]


# How far a worker's clock may be behind an enqueuer's: a run that a worker recorded
# without its queued run is taken as that enqueue's when created at most this long before
# it (``_own_run()``).
SKEW = datetime.timedelta(minutes=5)


def _own_run(spec: _Table, run: str) -> str:
    """The SQL condition that the run ``run`` (a table alias) is the one of the enqueue ``r`` (one parameter: SKEW).

    A task id may be sent again (a fixed ``task_id``, a task sent anew once its run
    ended), so "the task has a run" is not enough: the run may be an earlier enqueue's,
    finished or not, and so may this enqueue's own, which a worker may start and finish
    before the row is written. The enqueue's own run has the enqueue's queued time (the
    row itself, written by an earlier try; Django's tasks hand the worker that time), or
    it is one a worker recorded because it found no queued run: it has no queued time
    (until this statement adds it), and the worker made it after the enqueue, so it is
    created no earlier than the row, give or take the two machines' clocks (SKEW). An
    earlier run has a queued time of its own, or was created before this enqueue; one
    that has neither (its enqueue was never recorded) and was created within SKEW before
    it is taken for this enqueue's.
    """
    column = spec.column
    queued, created = column["queued_at"], column["created_at"]
    return (
        f"{run}.{column['source']} = r.{column['source']} "
        f"AND {run}.{column['backend_job_id']} = r.{column['backend_job_id']} "
        f"AND ({run}.{queued} = r.{queued} "
        f"OR ({run}.{queued} IS NULL AND {run}.{created} >= r.{created} - %s))"
    )


@functools.lru_cache(maxsize=32)
def _write_queued_sql(alias: str, vendor: str) -> str:
    """The two statements of ``write_queued()``, in one query string: the tasks' locks, then the rows written.

    The second reads the rows once (its parameters: the JSON document, the number of
    rows, and SKEW for each of its two uses) and, on one snapshot taken after the locks,
    inserts the runs whose enqueue no worker recorded first (``_own_run()``), and adds
    the enqueue's values to the runs that workers recorded first. The rows are read with
    ``LIMIT`` their number: PostgreSQL estimates any set-returning function at 100 rows,
    and with that estimate it joined a few runs to the whole run table by a sequential
    scan (milliseconds on 8,000 runs, growing with the table) instead of looking each one
    up in the ``backend_job_id`` index.
    """
    spec = _table(alias, vendor)
    column = spec.column
    picked = ", ".join(f"r.{column[field.name]}" for field in spec.fields)
    queued, parent, owner = column["queued_at"], column["parent"], column["owner"]
    return "; ".join(
        (
            # 1. The advisory lock of every task (a worker that found no queued run holds it).
            "SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::integer[]) AS key",
            # 2. Its snapshot comes after the locks: it sees a run a worker recorded meanwhile.
            f"WITH r AS (SELECT * FROM jsonb_populate_recordset(NULL::{spec.name}, %s::jsonb) LIMIT %s), "  # noqa: S608 (quoted names; values are parameters)
            # The runs of the enqueues that no worker recorded first (a task's earlier
            # runs, under an id sent again, are no reason to leave one out).
            f"inserted AS (INSERT INTO {spec.name} ({spec.columns}) SELECT {picked} FROM r "
            f"WHERE NOT EXISTS (SELECT 1 FROM {spec.name} AS o WHERE {_own_run(spec, 'o')})) "
            # A run a worker recorded first keeps its own values, with what only the enqueue
            # knew: the queued time, the batch parent and the owner it gave.
            f"UPDATE {spec.name} AS t SET {queued} = COALESCE(t.{queued}, r.{queued}), "
            f"{parent} = COALESCE(t.{parent}, r.{parent}), "
            f"{owner} = COALESCE(t.{owner}, r.{owner}) FROM r "
            f"WHERE {_own_run(spec, 't')} AND t.{spec.pk} <> r.{spec.pk} "
            f"AND ((t.{queued} IS NULL AND r.{queued} IS NOT NULL) "
            f"OR (t.{parent} IS NULL AND r.{parent} IS NOT NULL) "
            f"OR (t.{owner} IS NULL AND r.{owner} IS NOT NULL))",
        )
    )


def _json_scalar(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def write_queued(alias: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: write the queued runs of ``rows`` (see ``_python()``) in one round trip, as one transaction.

    Under the advisory lock of each task, the runs of the enqueues that no worker
    recorded first are inserted (also when the task has earlier runs: its id was sent
    again); the run a worker recorded first gets the queued time, the parent and the
    owner of its row (``_own_run()``). The rows go as one JSON document read into the table's row
    type by ``jsonb_populate_recordset``: converted by Python's JSON encoder, not column
    by column. The two statements go in one query string (PostgreSQL runs them as one
    transaction), through a client-side binding cursor.
    """
    spec = table(alias)
    names = [str(field.column) for field in spec.fields]
    document = json.dumps(
        [dict(zip(names, _python(spec, alias, row)[0], strict=True)) for row in rows],
        default=_json_scalar,
    )
    keys = sorted({_job_key(row["source"], row["backend_job_id"]) for row in rows})
    with _client_cursor(alias) as cursor:
        cursor.execute(
            _write_queued_sql(alias, spec.vendor),
            [LOCK_CLASS, keys, document, len(rows), SKEW, SKEW],
        )


def _client_cursor(alias: str) -> Any:
    """A cursor that binds parameters in the client, as several statements in one query need.

    Django's own, unless the database's OPTIONS ask psycopg 3 for server-side binding.
    """
    connection = connections[alias]
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        return connection.cursor()
    import psycopg

    connection.ensure_connection()
    cursor = psycopg.ClientCursor(connection.connection)
    wrapped: Any = cursor
    return (
        connection.make_debug_cursor(wrapped)
        if connection.queries_logged
        else connection.make_cursor(wrapped)
    )
