"""The clock heartbeats are stamped and judged by: the database server's, on PostgreSQL.

A worker stamps ``heartbeat_at``; ``reap_jobstatus`` marks a run lost when that stamp is
older than now minus HEARTBEAT_TIMEOUT. With each machine's own clock, a worker whose
clock runs behind (or a reaper whose clock runs ahead) would make a live run look silent,
and a dead worker whose clock ran ahead would keep its run ``running`` too long. So on
PostgreSQL both sides read the server's clock: a heartbeat is written as
``STATEMENT_TIMESTAMP()`` (``database_now()``), and the cutoff is computed there
(``Ago``). SQLite is a file on one machine, whose processes share its clock: there, and
on any other database, both stay this machine's time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import DateTimeField, Expression, Value
from django.utils import timezone


class DatabaseNow(datetime):
    """This machine's time now, written as the database's time of the write.

    As a value it is a plain ``datetime`` (the instance, signals, JSON, a filter). Saved
    through the ORM (``update()``, ``save()``, ``update_returning()``) or through
    ``statements``, it becomes ``STATEMENT_TIMESTAMP()`` on PostgreSQL; elsewhere it is
    written as it is. The row may then differ from the instance by the two clocks.
    """

    def resolve_expression(self, *args: Any, **kwargs: Any) -> Any:
        """As an expression (Django's signature): the database's now in a write, a ``Value`` elsewhere."""
        # Only a write reads the server's clock: in a filter this is the time it holds.
        # Django's arguments: query, allow_joins, reuse, summarize, for_save.
        for_save = kwargs.get("for_save", len(args) > 4 and args[4])
        plain = datetime.combine(self.date(), self.timetz())
        value = Ago(at=plain) if for_save else Value(plain, DateTimeField())
        return value.resolve_expression(*args, **kwargs)


def database_now(now: datetime | None = None) -> DatabaseNow:
    """``now`` (default: this machine's now) to be written as the database's now."""
    now = now or timezone.now()
    return DatabaseNow.combine(now.date(), now.timetz())


def sql(vendor: str) -> str | None:
    """The SQL of the database's now on ``vendor``, or None where this machine's time is written."""
    return "STATEMENT_TIMESTAMP()" if vendor == "postgresql" else None


class Ago(Expression):
    """The time ``delta`` ago, by the clock heartbeats are written with: the database's on
    PostgreSQL; elsewhere this machine's, or the time ``at`` (a ``DatabaseNow`` written)."""

    output_field = DateTimeField()

    def __init__(
        self, delta: timedelta = timedelta(0), *, at: datetime | None = None
    ) -> None:
        super().__init__()
        self.delta = delta
        self.at = at

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        now = sql(connection.vendor)
        if now is None:
            here = self.at or timezone.now()
            return compiler.compile(Value(here - self.delta, DateTimeField()))
        if not self.delta:
            return now, ()
        return f"({now} - %s)", (self.delta,)
