"""Local records: validation, create, read, list, update and delete over SQLAlchemy Core.

The records API and ``crmsync import`` both go through here, so a value is accepted or
refused the same way whichever door it comes in by. Writes need no sync bookkeeping:
the capture triggers queue every change in the writer's transaction (``capture.py``).

Functions take a ``Connection``; callers own the transaction (``db.write_transaction``
for writes), so several calls can share one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, String, Table, and_, or_, select
from sqlalchemy.engine import RowMapping

from crmsync.domain import Direction, EntryState, FieldType, ObjectSpec
from crmsync.errors import CrmsyncError, ValidationFailed
from crmsync.mapping import convert, options, spec_of
from crmsync.store.choices import stored_options
from crmsync.store.local_tables import local_table
from crmsync.store.params import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT
from crmsync.store.schema import sync_change, sync_queue, sync_record
from crmsync.store.types import utcnow

READ_ONLY = ("id", "crm_id", "created_at", "updated_at", "crm_deleted_at")
"""Columns a client may read but never write (``crm_id`` belongs to the sync engine)."""

_CURSOR_PREFIX = "v1:"
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
# An address as Dataverse's Email format takes it: one @, no spaces, a dot in the domain.
# Deliverability is not ours to judge; a typo such as a missing @ is.
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


class NotFound(CrmsyncError):
    """No such object, or no record with that id."""


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class SyncState:
    state: str  # "pending" | "synced" | "error"
    last_synced_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "last_synced_at": iso(self.last_synced_at)}


# Fields written as text or as a local id; every other type goes through mapping.convert.
_AS_TEXT_OR_ID = (FieldType.STRING, FieldType.MEMO, FieldType.LOOKUP)


# -- the registry ---------------------------------------------------------------------


def resolve_object(specs: Mapping[str, ObjectSpec], name: str) -> ObjectSpec:
    """The spec of object ``name``, or ``NotFound`` listing the known objects."""
    spec = specs.get(name)
    if spec is None:
        raise NotFound(f"unknown object {name!r}; one of {', '.join(specs)}")
    return spec


def table_of(spec: ObjectSpec) -> Table:
    return local_table(spec)


TIMESTAMPS = ("created_at", "updated_at", "crm_deleted_at")


def readable_columns(spec: ObjectSpec) -> tuple[str, ...]:
    """What a record shows: its ids, its writable columns, then its timestamps (an
    attached table has none: they show as null)."""
    return ("id", "crm_id", *spec.columns, *(TIMESTAMPS if spec.timestamps else ()))


def _stamped(spec: ObjectSpec, **stamps: datetime) -> dict[str, datetime]:
    """The timestamps crmsync keeps, for a table that has them."""
    return stamps if spec.timestamps else {}


# -- validation (pure) ----------------------------------------------------------------


def check_text(field: str, value: str, max_length: int | None = None) -> None:
    """Refuse text that the store cannot hold: NUL, lone surrogates, too long."""
    if "\x00" in value:
        raise ValidationFailed(field, "must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(field, "must be valid Unicode (no lone surrogates)") from None
    if max_length is not None and len(value) > max_length:
        raise ValidationFailed(
            field, f"is {len(value)} characters long; at most {max_length} allowed"
        )


def is_email_column(column: str) -> bool:
    return column == "email" or column.endswith("_email")


def check_email(field: str, value: str) -> None:
    if not EMAIL.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValidationFailed(field, f"{shown!r} is not an email address (name@example.com)")


def check_id(field: str, value: object) -> int:
    # bool is an int in Python, but true is not an id.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed(field, "must be an integer")
    if not 1 <= value <= MAX_ID:
        raise ValidationFailed(field, f"must be between 1 and {MAX_ID}")
    return value


def validate(spec: ObjectSpec, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Check a payload of field values; return the values to write.

    Every key must be a writable column of the object; text columns take a string or
    null no longer than the column (an email column, an address); id columns (lookups)
    take a positive integer or null; other typed fields take their JSON value (a decimal
    also as text, a datetime or date in ISO 8601) that Dynamics would accept. Whether a
    lookup points at an existing record is ``check_references``'s job.
    """
    table = table_of(spec)
    writable = spec.columns
    values: dict[str, Any] = {}
    for field, value in payload.items():
        if field in READ_ONLY:
            raise ValidationFailed(field, "is read-only")
        if field not in writable:
            raise ValidationFailed(
                field, f"unknown field of {spec.name}; one of {', '.join(writable)}"
            )
        if value is None:
            values[field] = None
            continue
        typed = spec.field_specs.get(field)
        if typed is not None and typed.type not in _AS_TEXT_OR_ID:
            try:
                values[field] = convert.from_input(typed, value)
            except convert.DoesNotFit as exc:
                raise ValidationFailed(field, str(exc).removeprefix(f"{field}: ")) from None
            continue
        column_type = table.c[field].type
        if isinstance(column_type, String):
            if not isinstance(value, str):
                raise ValidationFailed(field, "must be a string or null")
            check_text(field, value, column_type.length)
            if is_email_column(field):
                check_email(field, value)
            values[field] = value
        elif isinstance(column_type, Integer):
            values[field] = check_id(field, value)
        else:  # pragma: no cover - the registry only maps text and lookup columns
            raise ValidationFailed(field, "cannot be written")
    return values


def parse_text(spec: ObjectSpec, row: Mapping[str, str]) -> dict[str, Any]:
    """Turn a row of text (a CSV line) into typed values for ``validate``.

    An empty cell is null; an id column's cell must be a whole number.
    """
    table = table_of(spec)
    values: dict[str, Any] = {}
    for field, text in row.items():
        if text == "":
            values[field] = None
        elif field in spec.field_specs and spec.field_specs[field].type not in _AS_TEXT_OR_ID:
            values[field] = text  # validate() reads the text as the field's type
        elif field in table.c and isinstance(table.c[field].type, Integer):
            values[field] = _parse_int(field, text)
        else:
            values[field] = text
    return values


def _parse_int(field: str, text: str) -> int:
    stripped = text.strip()
    if not _INTEGER.fullmatch(stripped):
        raise ValidationFailed(field, f"must be an integer, not {text[:40]!r}")
    return int(stripped)


def check_references(conn: Connection, spec: ObjectSpec, rows: Iterable[Mapping[str, Any]]) -> None:
    """Raise ``ValidationFailed`` for the first lookup value naming no local record."""
    missing = missing_references(conn, spec, rows)
    if missing:
        field, value = missing[0]
        raise ValidationFailed(field, f"no {_target(spec, field)} with id {value}")


def missing_references(
    conn: Connection, spec: ObjectSpec, rows: Iterable[Mapping[str, Any]]
) -> list[tuple[str, int]]:
    """Every (lookup column, id) among ``rows`` that names no local record, in one query
    per lookup column."""
    rows = list(rows)
    missing: list[tuple[str, int]] = []
    for lookup in spec.lookups:
        wanted = {r[lookup.column] for r in rows if r.get(lookup.column) is not None}
        if not wanted:
            continue
        target = local_table(spec_of(lookup.target))
        found: set[int] = set()
        ordered = sorted(wanted)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            found.update(conn.scalars(select(target.c.id).where(target.c.id.in_(chunk))))
        missing.extend((lookup.column, v) for v in ordered if v not in found)
    return missing


def _target(spec: ObjectSpec, column: str) -> str:
    return next(lk.target for lk in spec.lookups if lk.column == column)


# -- reads and writes -----------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def to_json(spec: ObjectSpec, row: RowMapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in readable_columns(spec):
        value = row[name]
        out[name] = iso(value) if isinstance(value, datetime) else value
    for name in TIMESTAMPS:
        out.setdefault(name, None)
    return out


def with_stored_options(conn: Connection, spec: ObjectSpec) -> ObjectSpec:
    """``spec`` with the options the workers stored for its choices whose labels Dynamics
    gives (``store/choices.py``): a label none of them has is refused. A field with none
    stored takes any label (the workers refuse one that is no option)."""
    stored = stored_options(conn, spec)
    return options.laid_in(spec, stored) if stored else spec


def create_record(conn: Connection, spec: ObjectSpec, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and insert one record; return it as stored."""
    values = validate(with_stored_options(conn, spec), payload)
    check_references(conn, spec, [values])
    table = table_of(spec)
    now = utcnow()
    row = (
        conn.execute(
            table.insert()
            .values(**values, **_stamped(spec, created_at=now, updated_at=now))
            .returning(*_columns(spec))
        )
        .mappings()
        .one()
    )
    return to_json(spec, row)


def insert_many(conn: Connection, spec: ObjectSpec, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert already validated rows in one executemany; return how many."""
    if not rows:
        return 0
    table = table_of(spec)
    now = utcnow()
    # executemany needs every row to name the same columns.
    params = [
        {c: r.get(c) for c in spec.columns} | _stamped(spec, created_at=now, updated_at=now)
        for r in rows
    ]
    conn.execute(table.insert(), params)
    return len(params)


def get_record(conn: Connection, spec: ObjectSpec, record_id: int) -> dict[str, Any]:
    table = table_of(spec)
    _known_id(spec, record_id)
    row = conn.execute(select(*_columns(spec)).where(table.c.id == record_id)).mappings().first()
    if row is None:
        raise NotFound(f"no {spec.name} with id {record_id}")
    return to_json(spec, row)


def update_record(
    conn: Connection, spec: ObjectSpec, record_id: int, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """Change the given fields only; the others keep their values."""
    values = validate(with_stored_options(conn, spec), payload)
    _known_id(spec, record_id)
    if not values:
        return get_record(conn, spec, record_id)
    check_references(conn, spec, [values])
    table = table_of(spec)
    row = (
        conn.execute(
            table.update()
            .where(table.c.id == record_id)
            .values(**values, **_stamped(spec, updated_at=utcnow()))
            .returning(*_columns(spec))
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"no {spec.name} with id {record_id}")
    return to_json(spec, row)


def delete_record(conn: Connection, spec: ObjectSpec, record_id: int) -> None:
    table = table_of(spec)
    _known_id(spec, record_id)
    result = conn.execute(table.delete().where(table.c.id == record_id))
    if result.rowcount == 0:
        raise NotFound(f"no {spec.name} with id {record_id}")


def filterable_columns(spec: ObjectSpec) -> tuple[str, ...]:
    return ("id", "crm_id", *spec.columns)


def list_records(
    conn: Connection,
    spec: ObjectSpec,
    filters: Mapping[str, str],
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """Records matching every ``field == value`` filter, in id order, one page at a time.

    Paging is by keyset (ids after the cursor's), so records added or removed between
    pages never make a page skip or repeat one.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed("limit", f"must be between 1 and {MAX_LIMIT}")
    table = table_of(spec)
    allowed = filterable_columns(spec)
    conditions = []
    for field, text in filters.items():
        if field not in allowed:
            raise ValidationFailed(
                field, f"cannot filter {spec.name} on it; one of {', '.join(allowed)}"
            )
        column = table.c[field]
        if isinstance(column.type, Integer):
            value: Any = check_id(field, _parse_int(field, text))
        else:
            check_text(field, text)
            value = text
        conditions.append(column == value)
    if cursor is not None:
        conditions.append(table.c.id > decode_cursor(cursor))
    query = select(*_columns(spec)).where(*conditions).order_by(table.c.id)
    rows = conn.execute(query.limit(limit + 1)).mappings().all()
    items = [to_json(spec, r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(items[-1]["id"]) if more else None)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise ValidationFailed("cursor", "is not a cursor this API returned") from None
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if raw == digits or not digits.isdecimal() or int(digits) > MAX_ID:
        raise ValidationFailed("cursor", "is not a cursor this API returned")
    return int(digits)


def sync_state(conn: Connection, spec: ObjectSpec, record_id: int) -> SyncState:
    """Where a record stands with Dynamics.

    ``error`` when a queue entry for it is parked (either direction); ``pending`` when
    a change waits in either direction, or when it never synced at all (a record of an
    object that is not pushed stays local); else ``synced``. A change still in the
    capture log counts as folded: its record's ``to_crm`` entry is pending then, parked
    or not before (a parked entry that changes again is due again).
    """
    q = sync_queue.c
    rows = conn.execute(
        select(q.direction, q.state).where(
            q.object == spec.name,
            or_(
                and_(q.direction == Direction.TO_CRM.value, q.record_key == str(record_id)),
                and_(q.direction == Direction.FROM_CRM.value, q.record_id == record_id),
            ),
        )
    ).all()
    states = {(direction, entry_state) for direction, entry_state in rows}
    logged = conn.scalar(
        select(sync_change.c.seq)
        .where(sync_change.c.object == spec.name, sync_change.c.record_id == record_id)
        .limit(1)
    )
    if logged is not None:
        states = {(d, st) for d, st in states if d != Direction.TO_CRM.value}
        states.add((Direction.TO_CRM.value, EntryState.PENDING.value))
    last_synced_at = conn.scalar(
        select(sync_record.c.last_synced_at).where(
            sync_record.c.object == spec.name, sync_record.c.record_id == record_id
        )
    )
    if any(st == EntryState.PARKED.value for _d, st in states):
        state = "error"
    elif states or last_synced_at is None:
        state = "pending"
    else:
        state = "synced"
    return SyncState(state=state, last_synced_at=last_synced_at)


def _columns(spec: ObjectSpec) -> list[Any]:
    table = table_of(spec)
    return [table.c[name] for name in readable_columns(spec)]


def _known_id(spec: ObjectSpec, record_id: int) -> None:
    # Larger ids cannot exist and would overflow the drivers' 64-bit integers.
    if not 1 <= record_id <= MAX_ID:
        raise NotFound(f"no {spec.name} with id {record_id}")
