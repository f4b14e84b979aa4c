"""Every record's sync history: ``sync_event`` rows, written with the change they describe.

The store functions that change a record's sync state (the fold, the queue's outcomes,
the errors' retry and dismissal, staging, applying, resync) build events with ``event``
and hand them to ``write`` in the transaction that makes the change: a rolled-back
change leaves no event, and no change is committed without one. One multi-row insert
per batch keeps the hot paths fast; ``configure(enabled=False)`` turns history off
(``CRMSYNC_HISTORY``), for a benchmark or a store that wants none.

A record's events are keyed by its local id as text, or by its Dynamics id while no
local row holds it (a pulled insert not applied yet); ``timeline`` reads both keys.
Newest first is id order: the order the changes were committed in. ``prune`` deletes
events older than the retention in bounded chunks, keeping each record's newest
``KEEP_PER_RECORD`` so that its current state is always explained.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import Direction, EventKind, Operation
from crmsync.errors import ValidationFailed
from crmsync.store.db import write_transaction
from crmsync.store.params import DEFAULT_LIMIT, MAX_LIMIT, check_limit, iso
from crmsync.store.schema import sync_event
from crmsync.store.types import utcnow

# The events every record keeps, however old: its current state is always explained.
KEEP_PER_RECORD = 10
# Old events looked at per pruning transaction (on SQLite the write lock is held meanwhile).
PRUNE_CHUNK = 5_000
# Pruning transactions per upkeep round at most; the rest waits for the next round.
PRUNE_ROUNDS = 20
MESSAGE_MAX = 2_000
_CURSOR_PREFIX = "h1:"
# The record key of events about a whole object (queue.OBJECT_KEY).
OBJECT_KEY = "*"


@dataclass
class _Config:
    enabled: bool = True
    retention_days: int = 30


_config = _Config()


def configure(*, enabled: bool = True, retention_days: int = 30) -> None:
    """Set from ``Settings`` (``history``, ``history_retention_days``) by each process."""
    _config.enabled = enabled
    _config.retention_days = retention_days


def enabled() -> bool:
    return _config.enabled


def key_of(record_id: int | None, crm_id: str | None) -> str:
    """The key of a record's events: its local id, else its Dynamics id."""
    if record_id is not None:
        return str(record_id)
    return str(crm_id).lower() if crm_id else OBJECT_KEY


def event(
    obj: str,
    record_key: str,
    kind: EventKind,
    at: datetime,
    *,
    direction: Direction | str | None = None,
    operation: Operation | str | None = None,
    fields: Sequence[str] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One event row for ``write``."""
    return {
        "object": obj,
        "record_key": record_key,
        "at": at,
        "event": str(kind),
        "direction": None if direction is None else str(direction),
        "operation": None if operation is None else str(operation),
        "fields": list(fields) if fields is not None else None,
        "error_code": error_code,
        "error_message": None if error_message is None else error_message[:MESSAGE_MAX],
        "detail": detail or None,
    }


def write(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Insert the events ``rows`` in the caller's transaction (nothing when history is
    off); returns how many."""
    if not _config.enabled:
        return 0
    rows = list(rows)
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        # One statement and one parameter whatever the batch: the rows as one JSON
        # array (psycopg's text arrays cost ~0.1 ms a value to escape in Python).
        conn.execute(_pg_insert(), {"rows": as_json(rows)})
    else:
        conn.execute(_insert(), rows)
    return len(rows)


def as_json(rows: Sequence[dict[str, Any]]) -> str:
    """Event rows as the one JSON parameter of ``insert_json`` (PostgreSQL)."""
    return json.dumps([{**r, "at": r["at"].isoformat()} for r in rows], separators=(",", ":"))


_COLUMNS = (
    "object",
    "record_key",
    "at",
    "event",
    "direction",
    "operation",
    "fields",
    "error_code",
    "error_message",
    "detail",
)


def insert_json(param: sa.BindParameter[str]) -> sa.Insert:
    """PostgreSQL: insert the events of ``param`` (``as_json``'s text), unpacked by
    ``json_populate_recordset`` into ``sync_event``'s own column types."""
    rows = (
        sa.func.json_populate_recordset(
            sa.literal_column("NULL::sync_event"), sa.cast(param, sa.JSON)
        )
        .table_valued(*(sa.column(c, sync_event.c[c].type) for c in _COLUMNS))
        .alias("ev")
    )
    return sa.insert(sync_event).from_select(list(_COLUMNS), sa.select(*rows.c))


@functools.cache
def _pg_insert() -> sa.Insert:
    return insert_json(sa.bindparam("rows", type_=sa.String))


@functools.cache
def _insert() -> sa.Insert:
    return sa.insert(sync_event)


# -- reading ------------------------------------------------------------------------------

EVENT_FIELDS = (
    "at",
    "event",
    "direction",
    "operation",
    "fields",
    "error_code",
    "error_message",
    "detail",
)


def _encode(row_id: int) -> str:
    return f"{_CURSOR_PREFIX}{row_id}"


def _decode(cursor: str) -> int:
    if not cursor.startswith(_CURSOR_PREFIX) or not cursor[len(_CURSOR_PREFIX) :].isdecimal():
        raise ValidationFailed("cursor", "is not a cursor of this list")
    value = int(cursor[len(_CURSOR_PREFIX) :])
    if value > 2**63 - 1:
        raise ValidationFailed("cursor", "is not a cursor of this list")
    return value


def timeline(
    conn: Connection,
    obj: str,
    record_id: int,
    crm_id: str | None,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of a record's events, newest first, and the next page's cursor."""
    check_limit(limit)
    e = sync_event.c
    keys = [str(record_id), *([crm_id.lower()] if crm_id else [])]
    before = [e.id < _decode(cursor)] if cursor is not None else []
    size = min(limit, MAX_LIMIT) + 1
    # One index range per key, newest first, merged: with ``record_key IN (...)`` the
    # planner may walk the whole table backwards by id instead.
    parts = [
        sa.select(e.id, *(e[name] for name in EVENT_FIELDS))
        .where(e.object == obj, e.record_key == key, *before)
        .order_by(e.id.desc())
        .limit(size)
        .subquery()
        for key in keys
    ]
    merged = sa.union_all(*(sa.select(p) for p in parts)).subquery() if len(parts) > 1 else parts[0]
    rows = conn.execute(sa.select(merged).order_by(merged.c.id.desc()).limit(size)).mappings()
    found = list(rows)
    items = [to_item(r) for r in found[:limit]]
    more = len(found) > limit
    return {"items": items, "next_cursor": _encode(found[limit - 1]["id"]) if more else None}


def to_item(row: Any) -> dict[str, Any]:
    item = {name: row[name] for name in EVENT_FIELDS}
    item["at"] = iso(row["at"])
    return item


# -- pruning ------------------------------------------------------------------------------


def prune(engine: Engine, now: datetime | None = None) -> int:
    """Delete events older than the retention, in chunks of ``PRUNE_CHUNK`` (each its own
    transaction, at most ``PRUNE_ROUNDS``), keeping every record's newest
    ``KEEP_PER_RECORD``; returns how many went."""
    now = now or utcnow()
    cutoff = now - timedelta(days=_config.retention_days)
    e = sync_event.c
    newer = sync_event.alias("newer")
    # An event goes only if its record has KEEP_PER_RECORD newer ones.
    superseded = (
        sa.select(newer.c.id)
        .where(
            newer.c.object == e.object,
            newer.c.record_key == e.record_key,
            newer.c.id > e.id,
        )
        .order_by(newer.c.id)
        .offset(KEEP_PER_RECORD - 1)
        .limit(1)
        .exists()
    )
    total = 0
    after = 0
    for _ in range(PRUNE_ROUNDS):
        with write_transaction(engine) as conn:
            chunk = list(
                conn.execute(
                    sa.select(e.id)
                    .where(e.at < cutoff, e.id > after)
                    .order_by(e.id)
                    .limit(PRUNE_CHUNK)
                ).scalars()
            )
            if not chunk:
                break
            after = chunk[-1]
            gone = conn.execute(sa.delete(sync_event).where(e.id.in_(chunk), superseded)).rowcount
        total += int(gone)
        if len(chunk) < PRUNE_CHUNK:
            break
    return total
