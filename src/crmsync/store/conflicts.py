"""The conflict journal: read ``sync_conflict``, newest first, paged by cursor.

The pull engine writes one row per field where both sides changed since the last sync,
with the value each side had, the side that won and the rule that decided it. This
module only reads them, with the same parameter checks and keyset paging as Sync Errors
(``store.params``): ``detected_at`` desc, ``id`` desc. With an object given, the query
walks the index ``(object, detected_at)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, RowMapping

from crmsync.store.params import (
    DEFAULT_LIMIT,
    before_cursor,
    check_choice,
    check_id,
    check_limit,
    check_text,
    check_window,
    decode_cursor,
    encode_cursor,
    iso,
    timestamp,
)
from crmsync.store.schema import sync_conflict

# The contract's conflict item, field by field and in this order.
CONFLICT_FIELDS: tuple[str, ...] = (
    "id",
    "object",
    "record_id",
    "crm_id",
    "field",
    "local_value",
    "crm_value",
    "winner",
    "rule",
    "detected_at",
)
FIELD_MAX = 64  # the width of sync_conflict.field
_CURSOR_PREFIX = "c1:"


@dataclass(frozen=True)
class ConflictFilters:
    object: str | None = None
    record_id: int | None = None
    field: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def make_filters(
    objects: Iterable[str],
    *,
    object: str | None = None,
    record_id: int | None = None,
    field: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> ConflictFilters:
    """Validated filters from user input; each bad value raises naming its parameter."""
    check_choice("object", object, objects)
    since_at, until_at = timestamp("since", since), timestamp("until", until)
    check_window(since_at, until_at)
    return ConflictFilters(
        object=object,
        record_id=check_id("record_id", record_id),
        field=check_text("field", field, FIELD_MAX) or None,
        since=since_at,
        until=until_at,
    )


def conditions(filters: ConflictFilters) -> list[ColumnElement[bool]]:
    c = sync_conflict.c
    where: list[ColumnElement[bool]] = []
    for column, value in (
        (c.object, filters.object),
        (c.record_id, filters.record_id),
        (c.field, filters.field),
    ):
        if value is not None:
            where.append(column == value)
    if filters.since is not None:
        where.append(c.detected_at >= filters.since)
    if filters.until is not None:
        where.append(c.detected_at < filters.until)
    return where


def to_item(row: RowMapping) -> dict[str, Any]:
    item = {name: row[name] for name in CONFLICT_FIELDS}
    item["detected_at"] = iso(row["detected_at"])
    return item


def list_conflicts(
    conn: Connection,
    filters: ConflictFilters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of conflicts, newest first, and the cursor of the next (null at the end)."""
    check_limit(limit)
    c = sync_conflict.c
    where = conditions(filters)
    if cursor is not None:
        at, last_id = decode_cursor(_CURSOR_PREFIX, cursor)
        where.append(before_cursor(c.detected_at, c.id, at, last_id))
    rows = (
        conn.execute(
            sa.select(*(c[name] for name in CONFLICT_FIELDS))
            .where(*where)
            .order_by(c.detected_at.desc(), c.id.desc())
            .limit(limit + 1)
        )
        .mappings()
        .all()
    )
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": [to_item(r) for r in rows[:limit]],
        "next_cursor": (
            encode_cursor(_CURSOR_PREFIX, last["detected_at"], last["id"]) if last else None
        ),
    }
