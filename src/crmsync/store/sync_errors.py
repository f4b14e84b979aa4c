"""Sync Errors: search, paging, summary, export, retry and dismiss over ``sync_error``.

A failed record has one error per direction; the engine resolves it when the record
later syncs (``finish.resolve_errors``). Retrying an error puts its parked queue entry
back in the backlog; the error stays ``open`` until that sync succeeds. Dismissing hides
an error from the default (``open``) list without deleting it.

Lists are newest first (``last_failed_at`` desc, ``id`` desc) and paged by keyset on
that pair, matching the index ``(status, last_failed_at, id)``: rows added while a
client pages land before its cursor, so pages never skip or repeat a row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, Engine, RowMapping

from crmsync import diagnosis
from crmsync.domain import Direction, EntryState, ErrorCategory, ErrorStatus, EventKind
from crmsync.errors import ValidationFailed
from crmsync.store import error_counts, error_search, errors_copy, history
from crmsync.store.params import (
    DEFAULT_LIMIT,
    MAX_ID,
    before_cursor,
    check_choice,
    check_limit,
    check_text,
    check_window,
    decode_cursor,
    encode_cursor,
    iso,
    timestamp,
)
from crmsync.store.records import NotFound
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.status import DIRECTIONS, OPERATIONS
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
    # v2, after the v1 fields: what the failure concerns and what to do.
    "field",
    "category",
    "fix",
    # When the error is retried automatically (a passing kind), or null.
    "retry_at",
)
CATEGORIES = tuple(c.value for c in ErrorCategory)
STATUSES = (*(s.value for s in ErrorStatus), "all")
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
    status: str = ErrorStatus.OPEN
    since: datetime | None = None
    until: datetime | None = None
    category: str | None = None
    field: str | None = None

    @property
    def given(self) -> bool:
        """Whether anything narrows the selection beyond the default status."""
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name != "status")

    @property
    def counted(self) -> bool:
        """Whether the open errors' counts answer the summary (``error_counts``): open
        errors, narrowed only by what the counts are grouped by."""
        return self.status == ErrorStatus.OPEN and not any(
            (self.q, self.operation, self.since, self.until)
        )


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
    category: str | None = None,
    field: str | None = None,
) -> ErrorFilters:
    """Validated filters from user input; each bad value raises naming its parameter."""
    check_choice("object", object, objects)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("operation", operation, OPERATIONS)
    check_choice("status", status, STATUSES)
    check_choice("category", category, CATEGORIES)
    since_at, until_at = timestamp("since", since), timestamp("until", until)
    check_window(since_at, until_at)
    return ErrorFilters(
        q=check_text("q", q) or None,
        object=object,
        direction=direction,
        operation=operation,
        code=check_text("code", code, 64),
        status=status or ErrorStatus.OPEN,
        since=since_at,
        until=until_at,
        category=category,
        field=check_text("field", field, 64) or None,
    )


def retry(
    conn: Connection,
    objects: Iterable[str],
    *,
    ids: Sequence[int] | None = None,
    given: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Retry the errors ``ids``, or those matching the raw filters ``given`` (not both).

    The one entry point for the API's ``POST .../retry`` and ``crmsync errors retry``;
    ``actor`` (who asked: ``console:<user>``, ``api:<token>``, ``cli``) goes in the
    records' ``retried`` events.
    """
    raw = {name: value for name, value in (given or {}).items() if value is not None}
    if ids is not None:
        if raw:
            raise ValidationFailed("ids", "give ids or filters, not both")
        return retry_ids(conn, ids, now, actor=actor)
    return retry_matching(conn, make_filters(objects, **raw), now, actor=actor)


def dismiss_selected(
    conn: Connection,
    objects: Iterable[str],
    *,
    ids: Sequence[int] | None = None,
    given: Mapping[str, Any] | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Dismiss the errors ``ids``, or the open errors matching the raw filters ``given``
    (not both): the one entry point for ``POST .../dismiss``, the console's bulk
    dismissal and ``crmsync errors dismiss``, as ``retry`` is for retries."""
    raw = {name: value for name, value in (given or {}).items() if value is not None}
    if ids is not None:
        if raw:
            raise ValidationFailed("ids", "give ids or filters, not both")
        return dismiss_ids(conn, ids, actor=actor)
    return dismiss_matching(conn, make_filters(objects, **raw), actor=actor)


def conditions(
    filters: ErrorFilters, dialect: str, indexed: bool | None = None
) -> list[ColumnElement[bool]]:
    # ``indexed``: whether the search narrows by SQLite's trigram index (``where_for``
    # decides from the store; by default whenever it can). A search through the index is
    # the way in: its candidates are read by id and the other filters checked on them.
    # Left to itself, SQLite's planner may walk an index of another filter instead (every
    # open error, say) and probe the candidates row by row, which grows with the table
    # rather than with the matches.
    if filters.q is None:
        indexed = False
    elif indexed is None:
        indexed = error_search.uses_index(filters.q, dialect)
    else:
        indexed = indexed and error_search.uses_index(filters.q, dialect)

    def column(name: str) -> ColumnElement[Any]:
        c = sync_error.c[name]
        return error_search.not_indexed(c) if indexed else c

    where: list[ColumnElement[bool]] = []
    if filters.status != "all":
        where.append(column("status") == filters.status)
    for name, value in (
        ("object", filters.object),
        ("direction", filters.direction),
        ("operation", filters.operation),
        ("error_code", filters.code),
        ("category", filters.category),
        ("field", filters.field),
    ):
        if value is not None:
            where.append(column(name) == value)
    if filters.since is not None:
        where.append(column("last_failed_at") >= filters.since)
    if filters.until is not None:
        where.append(column("last_failed_at") < filters.until)
    if filters.q:
        where.append(error_search.matches(filters.q, dialect, indexed))
    return where


def where_for(conn: Connection, filters: ErrorFilters) -> list[ColumnElement[bool]]:
    """``conditions`` with the search's plan chosen from this store's index statistics."""
    return conditions(filters, conn.dialect.name, error_search.plan(conn, filters.q))


def to_item(row: RowMapping) -> dict[str, Any]:
    item = {name: row[name] for name in ERROR_FIELDS}
    item["first_failed_at"] = iso(row["first_failed_at"])
    item["last_failed_at"] = iso(row["last_failed_at"])
    item["retry_at"] = iso(row["retry_at"])
    return item


def fix_expression() -> ColumnElement[str]:
    """The ERROR ``fix`` in SQL, from ``diagnosis.FIXES`` (the code's row, else the
    category's): so the lists, the exports and PostgreSQL's COPY agree."""
    e = sync_error.c
    by_code = [
        ((e.error_code == code) & (e.category == category), fix)
        for (code, category), fix in diagnosis.code_fixes().items()
    ]
    by_category = [(e.category == cat, fix) for cat, fix in diagnosis.category_fixes().items()]
    return sa.case(
        *by_code, *by_category, else_=diagnosis.category_fixes()[ErrorCategory.OTHER]
    ).label("fix")


def _column(name: str) -> ColumnElement[Any]:
    return fix_expression() if name == "fix" else sync_error.c[name]


def error_columns() -> sa.Select[Any]:
    """A select of the ERROR fields (``fix`` worked out), for ``to_item``."""
    return sa.select(*(_column(name) for name in ERROR_FIELDS))


_NEWEST_FIRST = (sync_error.c.last_failed_at.desc(), sync_error.c.id.desc())


# -- listing ----------------------------------------------------------------------------


def list_errors(
    conn: Connection,
    filters: ErrorFilters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    check_limit(limit)
    where = where_for(conn, filters)
    total = conn.execute(sa.select(sa.func.count()).select_from(sync_error).where(*where))
    page_where = list(where)
    if cursor is not None:
        at, last_id = decode_cursor(_CURSOR_PREFIX, cursor)
        page_where.append(before_cursor(sync_error.c.last_failed_at, sync_error.c.id, at, last_id))
    rows = (
        conn.execute(error_columns().where(*page_where).order_by(*_NEWEST_FIRST).limit(limit + 1))
        .mappings()
        .all()
    )
    items = [to_item(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": items,
        "total": int(total.scalar_one()),
        "next_cursor": encode_cursor(_CURSOR_PREFIX, last["last_failed_at"], last["id"])
        if last
        else None,
    }


def position(conn: Connection, filters: ErrorFilters, cursor: str | None) -> int:
    """How many matching errors come before the page that ``cursor`` starts (0 for the
    first page): the page's place is read from the cursor, never taken on trust."""
    if cursor is None:
        return 0
    at, last_id = decode_cursor(_CURSOR_PREFIX, cursor)
    e = sync_error.c
    after = sa.not_(before_cursor(e.last_failed_at, e.id, at, last_id))
    query = sa.select(sa.func.count()).select_from(sync_error).where(*where_for(conn, filters))
    return int(conn.execute(query.where(after)).scalar_one())


def previous_cursor(conn: Connection, filters: ErrorFilters, cursor: str, limit: int) -> str | None:
    """The cursor of the page before the one ``cursor`` starts (None: that is the first).

    The page before holds the ``limit`` rows at or above the cursor's row; its own
    cursor is the row just above those, found by one seek upwards in key order.
    """
    check_limit(limit)
    at, last_id = decode_cursor(_CURSOR_PREFIX, cursor)
    e = sync_error.c
    upwards = sa.not_(before_cursor(e.last_failed_at, e.id, at, last_id))
    rows = conn.execute(
        sa.select(e.last_failed_at, e.id)
        .where(*where_for(conn, filters), upwards)
        .order_by(e.last_failed_at.asc(), e.id.asc())
        .offset(limit)
        .limit(1)
    ).first()
    return encode_cursor(_CURSOR_PREFIX, rows[0], rows[1]) if rows else None


def summary(conn: Connection, filters: ErrorFilters) -> dict[str, Any]:
    """Counts by object, direction, error code, category and field (errors without a
    field are not in ``by_field``), and by object, direction and code together.

    The default view (open errors, narrowed at most by object, direction, code, category
    or field) reads the counts the triggers keep (``error_counts``): a few rows whatever
    the number of errors. Any other filter counts the matching errors.
    """
    if filters.counted:
        s = error_counts.sums()
        where = [
            s.c[name] == value
            for name, value in (
                ("object", filters.object),
                ("direction", filters.direction),
                ("error_code", filters.code),
                ("category", filters.category),
                ("field", filters.field),
            )
            if value is not None
        ]
        query = sa.select(
            s.c.object, s.c.direction, s.c.error_code, s.c.category, s.c.field, s.c.n
        ).where(*where)
    else:
        e = sync_error.c
        group = (e.object, e.direction, e.error_code, e.category, e.field)
        query = sa.select(*group, sa.func.count()).where(*where_for(conn, filters)).group_by(*group)
    body: dict[str, Any] = {
        "total": 0,
        "by_object": {},
        "by_direction": {},
        "by_code": {},
        "by_category": {},
        "by_field": {},
    }
    groups: dict[tuple[str, str, str], int] = {}
    for obj, direction, code, category, field, n in conn.execute(query).all():
        n = int(n)
        body["total"] += n
        for key, value in (
            ("by_object", obj),
            ("by_direction", direction),
            ("by_code", code),
            ("by_category", category),
            ("by_field", field),
        ):
            if value is not None:
                body[key][value] = body[key].get(value, 0) + n
        groups[(obj, direction, code)] = groups.get((obj, direction, code), 0) + n
    for key in ("by_object", "by_direction", "by_code", "by_category", "by_field"):
        body[key] = dict(sorted(body[key].items(), key=lambda kv: (-kv[1], kv[0])))
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    body["groups"] = [
        {"object": o, "direction": d, "error_code": c, "count": n} for (o, d, c), n in ordered
    ]
    return body


# -- export -----------------------------------------------------------------------------

_FORMULA_FIRST = frozenset(FORMULA_STARTS)
_TIME_COLUMNS = frozenset({"first_failed_at", "last_failed_at", "retry_at"})


def escape_cell(value: object) -> str:
    """The CSV text of ``value``, with a ``'`` before anything a spreadsheet would run."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _cell(value: object) -> object:
    """``escape_cell``, with the common cases (ids, counts, plain text) kept cheap: the
    export runs this for every cell of up to millions of rows."""
    if value is None:
        return ""
    if type(value) is int and value >= 0:
        return value  # digits only: nothing to escape, and csv writes it as is
    text = value if type(value) is str else str(value)
    return "'" + text if text[:1] in _FORMULA_FIRST else text


def _csv(rows: Iterable[Sequence[object]], *, header: bool) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(ERROR_FIELDS)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def csv_lines(items: Iterable[dict[str, Any]], *, header: bool = True) -> Iterator[str]:
    """RFC 4180 CSV (CRLF, quotes doubled) of ERROR items, formula cells escaped."""
    return _csv(([item[name] for name in ERROR_FIELDS] for item in items), header=header)


def json_lines(items: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON array of ERROR items, written one item at a time."""
    yield "["
    sep = "\n"
    for item in items:
        yield sep + json.dumps(item, ensure_ascii=False)
        sep = ",\n"
    yield "\n]\n"


def _stream_rows(engine: Engine, filters: ErrorFilters) -> Iterator[tuple[object, ...]]:
    """Every matching error as a tuple of ERROR_FIELDS (times as ISO text), newest first,
    read through a server-side cursor.

    On PostgreSQL psycopg fetches ``EXPORT_BATCH`` rows at a time from a named cursor,
    so memory stays flat however many rows match; SQLite steps its cursor lazily.
    """
    times = [i for i, name in enumerate(ERROR_FIELDS) if name in _TIME_COLUMNS]
    with engine.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=EXPORT_BATCH)
        query = error_columns().where(*where_for(conn, filters)).order_by(*_NEWEST_FIRST)
        for row in streaming.execute(query):
            values = list(row)
            for i in times:
                values[i] = iso(values[i])
            yield tuple(values)


def portable_csv(engine: Engine, filters: ErrorFilters) -> Iterator[str]:
    """The CSV export formatted in Python: the path on SQLite, and on PostgreSQL the
    reference the ``COPY`` path is tested byte for byte against."""
    return _csv(_stream_rows(engine, filters), header=True)


def copy_query(filters: ErrorFilters) -> sa.Select[Any]:
    """The PostgreSQL SELECT the ``COPY`` export runs: same filters, order and columns."""
    where = conditions(filters, "postgresql")
    return errors_copy.copy_select(
        ERROR_FIELDS,
        where,
        _NEWEST_FIRST,
        FORMULA_STARTS,
        _TIME_COLUMNS,
        {"fix": fix_expression()},
    )


def stream_errors(engine: Engine, filters: ErrorFilters) -> Iterator[dict[str, Any]]:
    """Every matching error as an ERROR item, newest first (see ``_stream_rows``)."""
    for row in _stream_rows(engine, filters):
        yield dict(zip(ERROR_FIELDS, row, strict=True))


def export(engine: Engine, filters: ErrorFilters, fmt: str) -> Iterator[str]:
    """Every matching error as CSV or JSON text, streamed. The CSV comes from the
    server's ``COPY`` on PostgreSQL (see ``errors_copy``), from ``_csv`` elsewhere."""
    if fmt == "csv" and engine.dialect.name == "postgresql":
        return errors_copy.copy_csv(engine, copy_query(filters))
    if fmt == "csv":
        return portable_csv(engine, filters)
    return json_lines(stream_errors(engine, filters))


# -- retry and dismiss -------------------------------------------------------------------


AUTO_RETRY_ACTOR = "auto_retry"
# Who queued again a record that waited for its parent, once the parent arrived.
PARENT_ACTOR = "parent_arrived"


def _by(actor: str | None) -> dict[str, Any]:
    return {"by": actor or "unknown"}


def of_entry(*, probed: bool = False) -> list[ColumnElement[bool]]:
    """The conditions that an error is the queue entry's (correlated with ``sync_queue``).

    ``probed``: for a few entries, each error found by its own probe of
    ``ix_sync_error_record``; the key is then a range of one, as PostgreSQL answers an
    equality on record_key from the search's trigram index (3 ms a probe among 10,000
    errors: 0.3 s to queue 100 records again). Not for many entries: a range cannot be
    a hash join's key, and an automatic retry of 1,000 among 10,000 parked took 2.4 s
    instead of 0.2 s with one."""
    q, e = sync_queue.c, sync_error.c
    same = [e.object == q.object, e.direction == q.direction]
    if not probed:
        return [*same, e.record_key == q.record_key]
    return [*same, e.record_key >= q.record_key, e.record_key <= q.record_key]


def _requeue(
    conn: Connection,
    matching: Sequence[ColumnElement[bool]],
    now: datetime,
    actor: str | None = None,
    *,
    keep_attempts: bool = False,
    entries: Sequence[ColumnElement[bool]] = (),
    cleared: Sequence[ColumnElement[bool]] | None = None,
) -> int:
    """Put the parked entries of the errors matching ``matching`` back in the backlog,
    each with a ``retried`` event saying by whom; their attempts start over and the
    ``retry_at`` of the errors matching ``cleared`` (by default ``matching``) is
    cleared, unless ``keep_attempts`` (an automatic retry: the next park waits longer).
    ``entries`` narrows the queue's side (known records: their entries are found by
    key, not among every parked one)."""
    q, e = sync_queue.c, sync_error.c
    correlated = of_entry(probed=bool(entries))
    has_error = sa.select(sa.literal(1)).where(*correlated, *matching).exists()
    result = conn.execute(
        sa.update(sync_queue)
        .where(q.state == EntryState.PARKED, *entries, has_error)
        .values(
            state=EntryState.PENDING,
            attempts=q.attempts if keep_attempts else 0,
            next_attempt_at=now,
            claimed_by=None,
            claimed_until=None,
        )
        .returning(q.object, q.direction, q.record_key, q.record_id, q.operation)
    ).all()
    if not keep_attempts:
        # Queued now by a person (or a parent's arrival): no automatic retry is planned
        # any more (a failure parks them again with a new one).
        conn.execute(
            sa.update(sync_error)
            .where(
                *(matching if cleared is None else cleared),
                e.status == ErrorStatus.OPEN,
                e.retry_at.is_not(None),
            )
            .values(retry_at=None)
        )
    history.write(
        conn,
        (
            history.event(
                obj,
                history.key_of(rid, key if direction == Direction.FROM_CRM else None),
                EventKind.RETRIED,
                now,
                direction=direction,
                operation=operation,
                detail=_by(actor),
            )
            for obj, direction, key, rid, operation in result
        ),
    )
    return len(result)


def _dismissed(conn: Connection, where: Sequence[ColumnElement[bool]], actor: str | None) -> int:
    """Dismiss the errors matching ``where`` that are not dismissed yet, each with a
    ``dismissed`` event; returns how many changed."""
    e = sync_error.c
    now = utcnow()
    rows = conn.execute(
        sa.update(sync_error)
        .where(*where, e.status != ErrorStatus.DISMISSED)
        .values(status=ErrorStatus.DISMISSED, retry_at=None)
        .returning(e.object, e.direction, e.record_key, e.record_id, e.operation, e.error_code)
    ).all()
    history.write(
        conn,
        (
            history.event(
                obj,
                history.key_of(rid, key if direction == Direction.FROM_CRM else None)
                if key != history.OBJECT_KEY
                else key,
                EventKind.DISMISSED,
                now,
                direction=direction,
                operation=operation,
                error_code=code,
                detail=_by(actor),
            )
            for obj, direction, key, rid, operation, code in rows
        ),
    )
    return len(rows)


def retry_ids(
    conn: Connection, ids: Sequence[int], now: datetime | None = None, *, actor: str | None = None
) -> dict[str, Any]:
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
    requeued = _requeue(conn, [sync_error.c.id.in_(wanted)], now or utcnow(), actor)
    return {"errors": len(wanted), "requeued": requeued}


def retry_matching(
    conn: Connection,
    filters: ErrorFilters,
    now: datetime | None = None,
    *,
    actor: str | None = None,
) -> dict[str, Any]:
    """Retry every error matching ``filters`` (by default: every open error)."""
    where = where_for(conn, filters)
    count = conn.execute(sa.select(sa.func.count()).select_from(sync_error).where(*where))
    errors = int(count.scalar_one())
    return {"errors": errors, "requeued": _requeue(conn, where, now or utcnow(), actor)}


def dismiss(conn: Connection, error_id: int, *, actor: str | None = None) -> dict[str, Any]:
    """Hide an error from the open list; it stays listed under ``dismissed`` and ``all``."""
    if not 1 <= error_id <= MAX_ID:
        raise NotFound(f"no sync error with id {error_id}")
    _dismissed(conn, [sync_error.c.id == error_id], actor)
    row = conn.execute(error_columns().where(sync_error.c.id == error_id)).mappings().first()
    if row is None:
        raise NotFound(f"no sync error with id {error_id}")
    return to_item(row)


def dismiss_ids(
    conn: Connection, ids: Sequence[int], *, actor: str | None = None
) -> dict[str, Any]:
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
    _dismissed(conn, [e.id.in_(wanted)], actor)
    return {"errors": len(wanted), "dismissed": len(wanted)}


def dismiss_matching(
    conn: Connection, filters: ErrorFilters, *, actor: str | None = None
) -> dict[str, Any]:
    """Dismiss every *open* error matching ``filters`` (resolved ones stay resolved)."""
    where = [*where_for(conn, filters), sync_error.c.status == ErrorStatus.OPEN]
    n = _dismissed(conn, where, actor)
    return {"errors": n, "dismissed": n}


# -- automatic retries --------------------------------------------------------------------

AUTO_RETRY_BATCH = 1000


def retry_due(conn: Connection, now: datetime, limit: int = AUTO_RETRY_BATCH) -> int:
    """Put back in the backlog the parked entries whose open error's automatic retry is
    due (``retry_at``, planned by ``engine.auto_retry`` when it was parked), at most
    ``limit`` errors, oldest due first; returns how many entries were queued.

    The entry keeps its attempts, so that its next failure, parked again, waits longer
    (a person's retry starts them over). The error stays open, its ``retry_at`` cleared,
    until the record syncs or fails again.
    """
    e = sync_error.c
    due = (
        conn.execute(
            sa.select(e.id)
            .where(e.retry_at <= now, e.status == ErrorStatus.OPEN)
            .order_by(e.retry_at, e.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not due:
        return 0
    # Taken again under the row locks: of two workers at once, the second finds them
    # taken (retry_at gone, or planned anew by a later park) and leaves them be.
    due = (
        conn.execute(
            sa.update(sync_error)
            .where(e.id.in_(due), e.retry_at <= now, e.status == ErrorStatus.OPEN)
            .values(retry_at=None)
            .returning(e.id)
        )
        .scalars()
        .all()
    )
    if not due:
        return 0
    return _requeue(conn, [e.id.in_(due)], now, AUTO_RETRY_ACTOR, keep_attempts=True)


def requeue_records(
    conn: Connection,
    obj: str,
    direction: str,
    record_keys: Sequence[str],
    now: datetime,
    actor: str,
) -> int:
    """Queue again, now, the parked entries of these records whose error is open (the
    cause is gone: a parent arrived), each with a ``retried`` event by ``actor``; their
    attempts start over. Returns how many were queued."""
    if not record_keys:
        return 0
    e, q, keys = sync_error.c, sync_queue.c, sorted(set(record_keys))
    # The keys on the queue's side only: PostgreSQL answers "sync_error.record_key IN
    # (...)" from the search's trigram index (0.5 s for 100 keys among 10,000 errors);
    # each entry's error is then one probe of ix_sync_error_record (``of_entry``).
    matching = [e.object == obj, e.direction == direction, e.status == ErrorStatus.OPEN]
    entries = [q.object == obj, q.direction == direction, q.record_key.in_(keys)]
    cleared = [*matching, e.record_key.in_(keys)]
    return _requeue(conn, matching, now, actor, entries=entries, cleared=cleared)
