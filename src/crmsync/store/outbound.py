"""What a push reads before it plans: local rows, sync state, the parents of lookups.

Every function here only reads. ``waiting`` lists the entries a push would claim next,
without claiming them, for a dry run; the capture log's unfolded changes are listed as
the entries the fold would make of them (``store.backlog``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, ObjectSpec
from crmsync.store import backlog
from crmsync.store.queue import Entry
from crmsync.store.schema import LOCAL_TABLES, sync_queue, sync_record


@dataclass(frozen=True)
class Parent:
    """What the plan needs to know about a record a lookup points at."""

    crm_id: str | None
    on_its_way: bool  # it has a pending queue entry that may give it a crm_id
    entity_set: str  # where it lives in Dynamics, from the registry


def load_rows(
    conn: Connection, specs: Mapping[str, ObjectSpec], entries: Sequence[Entry]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The local rows of the entries' records (deletes need none), by (object, id)."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        if e.record_id is not None and e.operation != "delete":
            wanted[e.object].append(e.record_id)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for obj, ids in wanted.items():
        table = LOCAL_TABLES[specs[obj].table]
        for r in conn.execute(sa.select(table).where(table.c.id.in_(ids))).mappings():
            rows[(obj, r["id"])] = dict(r)
    return rows


def load_sync_state(
    conn: Connection, entries: Sequence[Entry]
) -> tuple[dict[tuple[str, int], str], set[tuple[str, int]]]:
    """Each record's ETag at its last sync (for If-Match on updates), and which records
    the sync filter excludes."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        if e.record_id is not None:
            wanted[e.object].append(e.record_id)
    etags: dict[tuple[str, int], str] = {}
    excluded: set[tuple[str, int]] = set()
    r = sync_record.c
    for obj, ids in wanted.items():
        for rec in conn.execute(
            sa.select(r.record_id, r.etag, r.excluded).where(
                r.object == obj,
                r.record_id.in_(ids),
                sa.or_(r.etag.is_not(None), r.excluded.is_(True)),
            )
        ):
            if rec.etag is not None:
                etags[(obj, rec.record_id)] = rec.etag
            if rec.excluded:
                excluded.add((obj, rec.record_id))
    return etags, excluded


def load_parents(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    rows: Mapping[tuple[str, int], Mapping[str, Any]],
    *,
    unfolded: bool = False,
) -> dict[tuple[str, int], Parent]:
    """The records the rows' lookups point at: their Dynamics ids, and whether they are
    on their way there (a pending entry; with ``unfolded``, also a change still in the
    capture log: a push has folded the log before it claims, a dry run has not)."""
    wanted: dict[str, set[int]] = defaultdict(set)
    for (obj, _), row in rows.items():
        for lookup in specs[obj].lookups:
            if row.get(lookup.column) is not None:
                wanted[lookup.target].add(int(row[lookup.column]))
    parents: dict[tuple[str, int], Parent] = {}
    q = sync_queue.c
    for target, ids in wanted.items():
        table = LOCAL_TABLES[specs[target].table]
        found = dict(
            conn.execute(sa.select(table.c.id, table.c.crm_id).where(table.c.id.in_(ids))).all()
        )
        queued = {
            int(k)
            for (k,) in conn.execute(
                sa.select(q.record_key).where(
                    q.object == target,
                    q.direction == "to_crm",
                    q.state == "pending",
                    q.record_key.in_([str(i) for i in ids]),
                )
            )
        }
        if unfolded:
            queued |= backlog.pending_records(conn, target, ids)
        for i in ids:
            parents[(target, i)] = Parent(
                crm_id=found.get(i), on_its_way=i in queued, entity_set=specs[target].entity_set
            )
    return parents


def waiting(conn: Connection, objects: Sequence[str], limit: int, now: datetime) -> list[Entry]:
    """Up to ``limit`` entries per object that a push would send: pending ``to_crm``
    entries due by ``now``, oldest first, then the capture log's records as the fold
    would queue them (``id`` 0: not in the queue yet). Reads only."""
    q = sync_queue.c
    out: list[Entry] = []
    for obj in objects:
        rows = conn.execute(
            sa.select(sync_queue)
            .where(
                q.object == obj,
                q.direction == Direction.TO_CRM.value,
                q.state == EntryState.PENDING.value,
                q.next_attempt_at <= now,
            )
            .order_by(q.next_attempt_at, q.id)
            .limit(limit)
        ).all()
        queued = {r.record_id for r in rows}
        out += [
            Entry(
                id=r.id,
                object=r.object,
                direction=r.direction,
                record_key=r.record_key,
                record_id=r.record_id,
                crm_id=r.crm_id,
                operation=r.operation,
                label=r.label,
                payload=r.payload,
                version=r.version,
                attempts=r.attempts,
                first_queued_at=r.first_queued_at,
                last_error_code=r.last_error_code,
            )
            for r in rows
        ]
        for t in backlog.tail_entries(conn, obj, limit):
            if t.record_id not in queued:
                out.append(
                    Entry(
                        id=0,
                        object=obj,
                        direction=Direction.TO_CRM.value,
                        record_key=str(t.record_id),
                        record_id=t.record_id,
                        crm_id=t.crm_id,
                        operation=t.after,
                        label=t.label,
                        payload=None,
                        version=0,
                        attempts=0,
                        first_queued_at=t.first_at,
                    )
                )
    return out
