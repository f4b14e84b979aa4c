"""The push's side of the store: what it reads before it plans (local rows, sync
state, the parents of lookups), the ids it gives new records, and the pushes it holds
for a paused pull. ``waiting`` lists, without claiming them, the entries a push would
send next, the capture log's unfolded changes as the entries the fold would make of
them (``store.backlog``), for a dry run. Only ``hold_for_pull`` and ``set_crm_ids``
write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, ObjectSpec, Operation
from crmsync.store import backlog
from crmsync.store.local_tables import local_table, row_columns
from crmsync.store.queue import entry_columns
from crmsync.store.schema import sync_queue, sync_record
from crmsync.store.status import AWAITING_PULL
from crmsync.values import Entry, Parent

# A push refused with 412 while its object's pull is paused waits this long before its
# pause is looked at again (without sending); resuming the pull wakes it at once.
HOLD_SECONDS = 60.0
HOLD_MESSAGE = (
    "changed in Dynamics since the last sync; waiting for pulling (from_crm) to resume,"
    " so that the conflict is resolved before the push goes again"
)


def load_rows(
    conn: Connection, specs: Mapping[str, ObjectSpec], entries: Sequence[Entry]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The local rows of the entries' records (deletes need none), by (object, id)."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        if e.record_id is not None and e.operation != Operation.DELETE:
            wanted[e.object].append(e.record_id)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for obj, ids in wanted.items():
        table = local_table(specs[obj])
        rows_of = sa.select(*row_columns(table)).where(table.c.id.in_(ids))
        for r in conn.execute(rows_of).mappings():
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
        table = local_table(specs[target])
        found = dict(
            conn.execute(sa.select(table.c.id, table.c.crm_id).where(table.c.id.in_(ids))).all()
        )
        queued = {
            int(k)
            for (k,) in conn.execute(
                sa.select(q.record_key).where(
                    q.object == target,
                    q.direction == Direction.TO_CRM,
                    q.state == EntryState.PENDING,
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
    entries due by ``now`` and not claimed, oldest first, as the fold would refresh
    them, then the capture log's records the fold would make due: new entries (``id``
    0), parked entries changed again, and entries that become deletes. Reads only."""
    q = sync_queue.c
    out: list[Entry] = []
    for obj in objects:
        rows = conn.execute(
            sa.select(*entry_columns())
            .where(
                q.object == obj,
                q.direction == Direction.TO_CRM.value,
                q.state == EntryState.PENDING.value,
                q.next_attempt_at <= now,
                sa.or_(q.claimed_until.is_(None), q.claimed_until <= now),
            )
            .order_by(q.next_attempt_at, q.id)
            .limit(limit)
        ).all()
        listed = {r.record_id: len(out) + k for k, r in enumerate(rows)}
        out += [Entry(*r) for r in rows]
        for t in backlog.tail_entries(conn, obj, limit):
            if t.record_id in listed:
                # Due already; the fold only refreshes what it sends.
                k = listed[t.record_id]
                out[k] = replace(out[k], operation=t.after, crm_id=t.crm_id or out[k].crm_id)
                continue
            again = t.entry_state != EntryState.PENDING.value or t.after == Operation.DELETE
            if t.entry_id is not None and not again:
                continue  # the fold keeps its entry's schedule: not due yet
            out.append(
                Entry(
                    id=t.entry_id or 0,
                    object=obj,
                    direction=Direction.TO_CRM,
                    record_key=str(t.record_id),
                    record_id=t.record_id,
                    crm_id=t.crm_id,
                    operation=t.after,
                    label=t.label,
                    payload=None,
                    version=(t.entry_version or 0) + 1 if t.entry_id is not None else 0,
                    attempts=0,
                    first_queued_at=t.first_at,
                )
            )
    return out


def hold_for_pull(conn: Connection, entry_ids: Sequence[int], now: datetime) -> None:
    """Hold pushes for a paused pull: pending (so in the backlog) and marked with why,
    not sent again until the pull resumes (``status.resume`` wakes them)."""
    if not entry_ids:
        return
    q = sync_queue.c
    conn.execute(
        sa.update(sync_queue)
        .where(q.id.in_(entry_ids))
        .values(
            next_attempt_at=now + timedelta(seconds=HOLD_SECONDS),
            claimed_by=None,
            claimed_until=None,
            last_error_code=AWAITING_PULL,
            last_error_message=HOLD_MESSAGE,
        )
    )


def set_crm_ids(
    conn: Connection, specs: Mapping[str, ObjectSpec], created: Sequence[tuple[str, int, str]]
) -> None:
    """Give new records the Dynamics ids they were created under, ``(object, id, crm
    id)``, where the row has none yet: one statement per object, for all its records at
    once. The caller suppresses capture (the id is not a change to send back)."""
    by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj, record_id, crm_id in created:
        by_object[obj].append({"record": record_id, "new_crm_id": crm_id})
    for obj, rows in by_object.items():
        table = local_table(specs[obj])
        conn.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("record"), table.c.crm_id.is_(None))
            .values(crm_id=sa.bindparam("new_crm_id")),
            rows,
        )
