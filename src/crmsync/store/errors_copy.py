"""The Sync Errors CSV export on PostgreSQL, written by the server's ``COPY ... TO STDOUT``.

Formatting a million rows in Python runs at a fraction of the speed PostgreSQL copies
them at, so on PostgreSQL the export asks the server for the finished CSV: the SELECT
renders every cell exactly as ``sync_errors._csv`` does on SQLite and the COPY quotes
it, byte-identical to the Python path. Each rule sits beside the code that keeps it:
times as ``datetime.isoformat()`` of a UTC value (``_time_cell``); formula escaping and
NULL as an empty unquoted field (``_escaped_cell``); COPY's CSV quoting, the same as
Python's ``QUOTE_MINIMAL`` (``copy_statement``); CRLF line ends (``_crlf_chunks``).

User input (the filters) reaches the SQL only as parameters, bound by psycopg on the
client for COPY, which the server cannot parameterise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import ColumnElement, Engine
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect

from crmsync.store.schema import sync_error

# Rows gathered before a chunk is handed on: large enough that the per-chunk cost
# (decode, one write) vanishes, small enough that memory stays flat.
CHUNK_BYTES = 256 * 1024
# ``datetime.isoformat()`` of an aware UTC value, ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``;
# ``.000000`` is dropped afterwards as Python omits a zero fraction.
_ISO_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'
_ZERO_FRACTION = ".000000+"
CR, LF = ord("\r"), ord("\n")


def _time_cell(column: ColumnElement[Any]) -> ColumnElement[str]:
    # The session's time zone is UTC during the copy (``copy_csv``): to_char() on the
    # timestamptz itself is measurably cheaper than on ``AT TIME ZONE 'UTC'``.
    text = sa.func.to_char(column, sa.literal(_ISO_FORMAT), type_=sa.Text)
    return sa.func.replace(text, sa.literal(_ZERO_FRACTION), sa.literal("+"), type_=sa.Text)


def _escaped_cell(column: ColumnElement[Any], formula_starts: Sequence[str]) -> ColumnElement[str]:
    # A ``'`` before a cell that starts with a character in ``formula_starts``, numbers
    # included (a negative id becomes ``'-5``). NUL is left out: PostgreSQL text cannot
    # hold it, so no stored cell starts with one.
    quote = sa.literal("'", sa.Text)
    if not isinstance(column.type, sa.String):  # a number: only a minus sign to escape
        text = sa.cast(column, sa.Text)
        return sa.case((column < 0, quote + text), else_=text)
    # Most cells start with a letter or another character above the highest formula
    # character ('@', 64): that test first, as ascii() and one integer comparison cost a
    # fraction of comparing with each formula character (measured: 5x on 400k cells).
    # ascii('') is 0: NULL, written as an empty field like Python's csv does, where COPY
    # would write "".
    first = sa.func.ascii(column, type_=sa.Integer)
    codes = sorted(ord(c) for c in formula_starts if c != "\0")
    return sa.case(
        (first > codes[-1], column),
        (first == sa.any_(sa.literal(codes, ARRAY(sa.Integer))), quote + column),
        (first == 0, sa.null()),
        else_=column,
    )


def copy_select(
    field_names: Sequence[str],
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[ColumnElement[Any]],
    formula_starts: Sequence[str],
    time_columns: frozenset[str],
    computed: Mapping[str, ColumnElement[Any]] | None = None,
) -> sa.Select[Any]:
    """The SELECT whose COPY is the CSV: one text cell per field, labelled for the header
    (``computed``: fields that are expressions rather than columns, e.g. ``fix``)."""
    columns = {**{c.name: c for c in sync_error.c}, **(computed or {})}
    cells: list[ColumnElement[Any]] = [
        (
            _time_cell(columns[name])
            if name in time_columns
            else _escaped_cell(columns[name], formula_starts)
        ).label(name)
        for name in field_names
    ]
    return sa.select(*cells).where(*where).order_by(*order_by)


def copy_statement(query: sa.Select[Any], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """``COPY (query) TO STDOUT`` in psycopg's placeholder style, and its parameters
    (after each type's bind processing, as SQLAlchemy would do on execute)."""
    # COPY's CSV quotes a field holding the delimiter, a quote, CR or LF and doubles
    # quotes, as Python's ``QUOTE_MINIMAL`` does. The server cannot parameterise COPY, so
    # psycopg binds the parameters on the client.
    compiled = query.compile(dialect=dialect)
    params: dict[str, Any] = {}
    for name, value in compiled.params.items():
        process = compiled.binds[name].type.bind_processor(dialect)
        params[name] = process(value) if process is not None else value
    return f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, HEADER)", params


def copy_csv(engine: Engine, query: sa.Select[Any]) -> Iterator[str]:
    """The CSV of ``query`` (CRLF line ends), streamed from the server in chunks."""
    statement, params = copy_statement(query, engine.dialect)
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        encoding = raw.info.encoding
        try:
            with raw.transaction(), raw.cursor() as cursor:
                cursor.execute("SET LOCAL TIME ZONE 'UTC'")
                yield from _crlf_chunks(cursor, statement, params, encoding)
        except psycopg.Error as exc:
            # The same exception family as a query run through SQLAlchemy (the API
            # answers a lost store with 503, not 500).
            raise sa.exc.DBAPIError.instance(statement, params, exc, psycopg.Error) from exc


def _crlf_chunks(
    cursor: Any, statement: str, params: dict[str, Any], encoding: str
) -> Iterator[str]:
    """The rows of the COPY, each ending CRLF, in chunks of about ``CHUNK_BYTES``."""
    with cursor.copy(statement, params) as copy:
        buffer = bytearray()
        # COPY ends rows with LF; RFC 4180 (and the Python path) wants CRLF. The server
        # sends one CopyData message per row (a protocol guarantee), so each message's
        # final LF is the row's end and is replaced; LFs inside quoted fields stay.
        for row in copy:  # one CopyData message, i.e. one row, at a time
            buffer += row
            # LF -> CRLF in place: twice as fast as a slice assignment, which counts
            # at a million rows.
            buffer[-1] = CR
            buffer.append(LF)
            if len(buffer) >= CHUNK_BYTES:
                yield buffer.decode(encoding)
                buffer.clear()
        yield buffer.decode(encoding)
