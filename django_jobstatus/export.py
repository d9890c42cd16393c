"""Runs as CSV or JSON Lines, streamed in constant memory and redacted like the API.

One module for the admin's export and the API's ``runs/export/``: the rows are read with
``values()`` through a cursor in chunks (``iterator(chunk_size=...)``), each row is turned
into one line and handed to a ``StreamingHttpResponse``, so memory does not grow with the
number of runs. ``params``, ``data`` and ``result`` go through ``redaction.redact``, the
function the API's serializer uses.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import CharField, DateTimeField, TextField
from django.http import StreamingHttpResponse
from django.utils import timezone

from django_jobstatus.models import JobRun
from django_jobstatus.redaction import redact

if TYPE_CHECKING:
    from django.db.models import QuerySet

# Columns: the model's fields in order, without the long ones (see a run's page or the API).
LEFT_OUT = frozenset({"traceback", "attempts"})
FIELDS = tuple(
    field.attname
    for field in JobRun._meta.concrete_fields
    if field.name not in LEFT_OUT
)
JSON_FIELDS = frozenset({"params", "data", "result"})
FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/jsonl; charset=utf-8", "jsonl"),
}
# Rows fetched per round trip (a server-side cursor on PostgreSQL).
CHUNK_SIZE = 2000
# Lines joined into one piece of the response (fewer, bigger writes to the socket).
LINES_PER_PIECE = 500
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def records(runs: QuerySet[JobRun]) -> Iterator[dict[str, Any]]:
    """Each run as a dict of FIELDS, JSON fields redacted, read in chunks."""
    for row in runs.values(*FIELDS).iterator(chunk_size=CHUNK_SIZE):
        for name in JSON_FIELDS:
            row[name] = redact(row[name])
        yield row


class _Encoder(DjangoJSONEncoder):
    """DjangoJSONEncoder, but a moment keeps its microseconds (it cuts them to milliseconds)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            moment = o.isoformat()
            return (
                moment.removesuffix("+00:00") + "Z"
                if moment.endswith("+00:00")
                else moment
            )
        return super().default(o)


class _Line:
    """A file-like object whose ``write`` returns what it was given (Django's CSV streaming recipe)."""

    def write(self, value: str) -> str:
        return value


def _json_cell(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)


def _moment_cell(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _same(value: Any) -> Any:
    return value


def _cell_writers() -> list[Any]:
    """One function per column turning its value into a CSV cell (chosen once, not per value)."""
    writers = []
    columns = {field.attname: field for field in JobRun._meta.concrete_fields}
    for name in FIELDS:
        field = columns[name]
        if name in JSON_FIELDS:
            writers.append(_json_cell)
        elif isinstance(field, DateTimeField):
            writers.append(_moment_cell)
        elif isinstance(field, CharField | TextField):
            writers.append(_text_cell)
        else:
            writers.append(_same)
    return writers


def csv_lines(runs: QuerySet[JobRun]) -> Iterator[str]:
    writer = csv.writer(_Line())
    cells = list(zip(_cell_writers(), FIELDS, strict=True))
    yield writer.writerow(FIELDS)
    for row in records(runs):
        yield writer.writerow([cell(row[name]) for cell, name in cells])


def jsonl_lines(runs: QuerySet[JobRun]) -> Iterator[str]:
    for row in records(runs):
        yield json.dumps(row, ensure_ascii=False, cls=_Encoder) + "\n"


def _pieces(lines: Iterator[str]) -> Iterator[str]:
    piece: list[str] = []
    for line in lines:
        piece.append(line)
        if len(piece) >= LINES_PER_PIECE:
            yield "".join(piece)
            piece = []
    if piece:
        yield "".join(piece)


def response(runs: QuerySet[JobRun], file_format: str) -> StreamingHttpResponse:
    """A streamed download of ``runs`` as ``csv`` or ``jsonl`` (ValueError for another format)."""
    if file_format not in FORMATS:
        raise ValueError(
            f"{file_format!r} is not an export format; use {' or '.join(FORMATS)}"
        )
    content_type, extension = FORMATS[file_format]
    lines = csv_lines(runs) if file_format == "csv" else jsonl_lines(runs)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return StreamingHttpResponse(
        _pieces(lines),
        content_type=content_type,
        headers={
            "Content-Disposition": f'attachment; filename="jobruns-{stamp}.{extension}"'
        },
    )
