"""Sync Errors: search, paging, summary, export, retry and dismiss over ``sync_error``.

A failed record has one error per direction; the engine resolves it when the record
later syncs (``queue._resolve_errors``). Retrying an error puts its parked queue entry
back in the backlog; the error stays ``open`` until that sync succeeds. Dismissing hides
an error from the default (``open``) list without deleting it.

Lists are newest first (``last_failed_at`` desc, ``id`` desc) and paged by keyset on
that pair, matching the index ``(status, last_failed_at, id)``: rows added while a
client pages land before its cursor, so pages never skip or repeat a row.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, Engine, RowMapping

from crmsync.errors import ValidationFailed
from crmsync.store.records import NotFound
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.status import DIRECTIONS, OPERATIONS, check_choice, iso, parse_timestamp
from crmsync.store.types import utcnow

# The contract's ERROR, field by field and in this order (also the CSV header).
ERROR_FIELDS: tuple[str, ...] = (
    "id",
    "object",
    "record_id",
    "crm_id",
    "record_label",
    "operation",
    "direction",
    "error_code",
    "error_message",
    "first_failed_at",
    "last_failed_at",
    "attempts",
    "status",
)
STATUSES = ("open", "resolved", "dismissed", "all")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_TEXT = 1000
MAX_ID = 2**63 - 1
EXPORT_BATCH = 1000
# Spreadsheets run a cell starting with these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")
_CURSOR_PREFIX = "e1:"


@dataclass(frozen=True)
class ErrorFilters:
    q: str | None = None
    object: str | None = None
    direction: str | None = None
    operation: str | None = None
    code: str | None = None
    status: str = "open"
    since: datetime | None = None
    until: datetime | None = None

    @property
    def given(self) -> bool:
        """Whether anything narrows the selection beyond the default status."""
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name != "status")


def check_text(field: str, value: str | None, max_length: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if "\0" in value:  # PostgreSQL text cannot hold NUL: refuse it rather than fail later
        raise ValidationFailed(field, "must not contain NUL characters")
    if len(value) > max_length:
        raise ValidationFailed(field, f"is longer than {max_length} characters")
    return value


def make_filters(
    objects: Iterable[str],
    *,
    q: str | None = None,
    object: str | None = None,
    direction: str | None = None,
    operation: str | None = None,
    code: str | None = None,
    status: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> ErrorFilters:
    """Validated filters from user input; each bad value raises naming its parameter."""
    check_choice("object", object, objects)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("operation", operation, OPERATIONS)
    check_choice("status", status, STATUSES)
    return ErrorFilters(
        q=check_text("q", q) or None,
        object=object,
        direction=direction,
        operation=operation,
        code=check_text("code", code, 64),
        status=status or "open",
        since=since if isinstance(since, datetime) or since is None else _ts("since", since),
        until=until if isinstance(until, datetime) or until is None else _ts("until", until),
    )


def _ts(field: str, value: str) -> datetime | None:
    return parse_timestamp(field, value)


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def conditions(filters: ErrorFilters, dialect: str) -> list[ColumnElement[bool]]:
    e = sync_error.c
    where: list[ColumnElement[bool]] = []
    if filters.status != "all":
        where.append(e.status == filters.status)
    for column, value in (
        (e.object, filters.object),
        (e.direction, filters.direction),
        (e.operation, filters.operation),
        (e.error_code, filters.code),
    ):
        if value is not None:
            where.append(column == value)
    if filters.since is not None:
        where.append(e.last_failed_at >= filters.since)
    if filters.until is not None:
        where.append(e.last_failed_at < filters.until)
    if filters.q:
        searched: list[Any] = [
            e.error_message,
            e.error_code,
            e.record_label,
            e.record_key,
            e.crm_id,
            sa.cast(e.record_id, sa.String),
        ]
        pattern = _like_pattern(filters.q)
        if dialect == "postgresql":
            where.append(sa.or_(*(c.ilike(pattern, escape="\\") for c in searched)))
        else:
            # SQLite's lower() folds ASCII letters only; folding both sides in SQL keeps
            # other letters matching in their own case rather than never.
            folded = sa.func.lower(sa.literal(pattern))
            where.append(sa.or_(*(sa.func.lower(c).like(folded, escape="\\") for c in searched)))
    return where


def to_item(row: RowMapping) -> dict[str, Any]:
    item = {name: row[name] for name in ERROR_FIELDS}
    item["first_failed_at"] = iso(row["first_failed_at"])
    item["last_failed_at"] = iso(row["last_failed_at"])
    return item


def _select() -> sa.Select[Any]:
    return sa.select(*(sync_error.c[name] for name in ERROR_FIELDS))


_NEWEST_FIRST = (sync_error.c.last_failed_at.desc(), sync_error.c.id.desc())


# -- listing ----------------------------------------------------------------------------


def encode_cursor(last_failed_at: datetime, error_id: int) -> str:
    raw = f"{_CURSOR_PREFIX}{last_failed_at.isoformat()}|{error_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    bad = ValidationFailed("cursor", "is not a cursor this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        stamp, _, digits = raw.removeprefix(_CURSOR_PREFIX).partition("|")
        at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeError, ValueError):
        raise bad from None
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit() or int(digits) > MAX_ID:
        raise bad
    if at.tzinfo is None:
        raise bad
    return at, int(digits)


def list_errors(
    conn: Connection,
    filters: ErrorFilters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed("limit", f"must be between 1 and {MAX_LIMIT}")
    where = conditions(filters, conn.dialect.name)
    total = conn.execute(sa.select(sa.func.count()).select_from(sync_error).where(*where))
    page_where = list(where)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        e = sync_error.c
        page_where.append(
            sa.or_(e.last_failed_at < at, sa.and_(e.last_failed_at == at, e.id < last_id))
        )
    rows = (
        conn.execute(_select().where(*page_where).order_by(*_NEWEST_FIRST).limit(limit + 1))
        .mappings()
        .all()
    )
    items = [to_item(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": items,
        "total": int(total.scalar_one()),
        "next_cursor": encode_cursor(last["last_failed_at"], last["id"]) if last else None,
    }


def summary(conn: Connection, filters: ErrorFilters) -> dict[str, Any]:
    """Counts by object, direction and error code, and by the three together."""
    e = sync_error.c
    rows = conn.execute(
        sa.select(e.object, e.direction, e.error_code, sa.func.count())
        .where(*conditions(filters, conn.dialect.name))
        .group_by(e.object, e.direction, e.error_code)
        .order_by(sa.func.count().desc(), e.object, e.direction, e.error_code)
    ).all()
    body: dict[str, Any] = {"total": 0, "by_object": {}, "by_direction": {}, "by_code": {}}
    groups = []
    for obj, direction, code, n in rows:
        body["total"] += n
        for key, value in (("by_object", obj), ("by_direction", direction), ("by_code", code)):
            body[key][value] = body[key].get(value, 0) + n
        groups.append({"object": obj, "direction": direction, "error_code": code, "count": n})
    body["groups"] = groups
    return body


# -- export -----------------------------------------------------------------------------


def escape_cell(value: object) -> str:
    """The CSV text of ``value``, with a ``'`` before anything a spreadsheet would run."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(items: Iterable[dict[str, Any]], *, header: bool = True) -> Iterator[str]:
    """RFC 4180 CSV (CRLF, quotes doubled) of ERROR items, formula cells escaped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(ERROR_FIELDS)
    for item in items:
        writer.writerow([escape_cell(item[name]) for name in ERROR_FIELDS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def json_lines(items: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON array of ERROR items, written one item at a time."""
    yield "["
    sep = "\n"
    for item in items:
        yield sep + json.dumps(item, ensure_ascii=False)
        sep = ",\n"
    yield "\n]\n"


def stream_errors(engine: Engine, filters: ErrorFilters) -> Iterator[dict[str, Any]]:
    """Every matching error, newest first, read through a server-side cursor.

    On PostgreSQL psycopg fetches ``EXPORT_BATCH`` rows at a time from a named cursor,
    so memory stays flat however many rows match; SQLite steps its cursor lazily.
    """
    with engine.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=EXPORT_BATCH)
        query = _select().where(*conditions(filters, conn.dialect.name)).order_by(*_NEWEST_FIRST)
        for row in streaming.execute(query).mappings():
            yield to_item(row)


def export(engine: Engine, filters: ErrorFilters, fmt: str) -> Iterator[str]:
    rows = stream_errors(engine, filters)
    return csv_lines(rows) if fmt == "csv" else json_lines(rows)


# -- retry and dismiss -------------------------------------------------------------------


def _requeue(conn: Connection, matching: Sequence[ColumnElement[bool]], now: datetime) -> int:
    """Put the parked entries of the errors matching ``matching`` back in the backlog."""
    q, e = sync_queue.c, sync_error.c
    has_error = (
        sa.select(sa.literal(1))
        .where(
            e.object == q.object,
            e.direction == q.direction,
            e.record_key == q.record_key,
            *matching,
        )
        .exists()
    )
    result = conn.execute(
        sa.update(sync_queue)
        .where(q.state == "parked", has_error)
        .values(
            state="pending",
            attempts=0,
            next_attempt_at=now,
            claimed_by=None,
            claimed_until=None,
        )
    )
    return result.rowcount


def retry_ids(conn: Connection, ids: Sequence[int], now: datetime | None = None) -> dict[str, Any]:
    """Retry the errors ``ids`` (every one must exist)."""
    wanted = sorted(set(ids))
    for error_id in wanted:
        if not 1 <= error_id <= MAX_ID:
            raise ValidationFailed("ids", f"{error_id} is not an error id")
    found = set(
        conn.execute(sa.select(sync_error.c.id).where(sync_error.c.id.in_(wanted))).scalars()
    )
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(f"no sync error with id {', '.join(map(str, missing))}")
    requeued = _requeue(conn, [sync_error.c.id.in_(wanted)], now or utcnow())
    return {"errors": len(wanted), "requeued": requeued}


def retry_matching(
    conn: Connection, filters: ErrorFilters, now: datetime | None = None
) -> dict[str, Any]:
    """Retry every error matching ``filters`` (by default: every open error)."""
    where = conditions(filters, conn.dialect.name)
    count = conn.execute(sa.select(sa.func.count()).select_from(sync_error).where(*where))
    errors = int(count.scalar_one())
    return {"errors": errors, "requeued": _requeue(conn, where, now or utcnow())}


def dismiss(conn: Connection, error_id: int) -> dict[str, Any]:
    """Hide an error from the open list; it stays listed under ``dismissed`` and ``all``."""
    if not 1 <= error_id <= MAX_ID:
        raise NotFound(f"no sync error with id {error_id}")
    conn.execute(
        sa.update(sync_error).where(sync_error.c.id == error_id).values(status="dismissed")
    )
    row = conn.execute(_select().where(sync_error.c.id == error_id)).mappings().first()
    if row is None:
        raise NotFound(f"no sync error with id {error_id}")
    return to_item(row)


def dismiss_ids(conn: Connection, ids: Sequence[int]) -> dict[str, Any]:
    """Dismiss the errors ``ids`` (every one must exist), as ``dismiss`` does one."""
    wanted = sorted(set(ids))
    for error_id in wanted:
        if not 1 <= error_id <= MAX_ID:
            raise ValidationFailed("ids", f"{error_id} is not an error id")
    e = sync_error.c
    found = set(conn.execute(sa.select(e.id).where(e.id.in_(wanted))).scalars())
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(f"no sync error with id {', '.join(map(str, missing))}")
    conn.execute(sa.update(sync_error).where(e.id.in_(wanted)).values(status="dismissed"))
    return {"errors": len(wanted), "dismissed": len(wanted)}


def dismiss_matching(conn: Connection, filters: ErrorFilters) -> dict[str, Any]:
    """Dismiss every *open* error matching ``filters`` (resolved ones stay resolved)."""
    where = [*conditions(filters, conn.dialect.name), sync_error.c.status == "open"]
    result = conn.execute(sa.update(sync_error).where(*where).values(status="dismissed"))
    return {"errors": result.rowcount, "dismissed": result.rowcount}
