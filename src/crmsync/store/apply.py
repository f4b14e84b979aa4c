"""The apply's statements: what a batch of ``from_crm`` entries needs, and its writes.

Every function runs in the caller's transaction (the apply's ONE transaction per batch,
entries held ``FOR UPDATE``) and commits nothing.

- ``load_context`` reads the local rows (locked), pushes (still in the capture log or
  queued) and sync states, in that order, and the parents the plan reads, after the
  entries are held: a local change moving on meanwhile is seen where it moved to.
- ``write_all`` carries out the plan's local writes with capture suppressed (nothing goes
  back to Dynamics), with their conflict journal, the pushes they made moot and the
  records the filter includes again, in a savepoint; if the database refuses one (a
  local constraint), it replays them record by record, each in its own savepoint, and
  says which were refused with the driver's first line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from crmsync.domain import Direction, EntryState, EventKind, ObjectSpec, Operation
from crmsync.store import capture, history, parents, queue
from crmsync.store.db import capture_suppressed
from crmsync.store.local_tables import local_table, row_columns
from crmsync.store.schema import sync_conflict, sync_queue, sync_record
from crmsync.store.types import UTCDateTime
from crmsync.values import ApplyContext, Done, Entry, LocalWrite, PendingPush, WriteKind, as_text


def write_all(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    writes: Sequence[LocalWrite],
    now: datetime,
) -> tuple[list[Done], list[tuple[LocalWrite, str]]]:
    """Carry out ``writes``: their outcomes, and those the database refused with why."""
    refused: list[tuple[LocalWrite, str]] = []
    with capture_suppressed(conn):
        done = _bisected(conn, specs, writes, now, refused)
    return done, refused


def _bisected(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    writes: Sequence[LocalWrite],
    now: datetime,
    refused: list[tuple[LocalWrite, str]],
) -> list[Done]:
    """``writes`` in one savepoint; when someone's constraint refuses one, halves of them
    until it stands alone (and into ``refused``, so only that record parks): a few
    dozen savepoints for one bad write in a batch of a thousand, not a thousand (each
    ``execute`` reads the capture log). In order, so a write still follows the ones
    before it."""
    try:
        with conn.begin_nested():
            return execute(conn, specs, writes, now)
    except DBAPIError as exc:
        if len(writes) == 1:
            refused.append((writes[0], _driver_message(exc)))
            return []
    mid = len(writes) // 2
    first = _bisected(conn, specs, writes[:mid], now, refused)
    return first + _bisected(conn, specs, writes[mid:], now, refused)


def load_context(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    entries: Sequence[Entry],
    now: datetime,
) -> ApplyContext:
    by_object: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_object[e.object].append(e)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    record_ids: dict[str, set[int]] = defaultdict(set)
    wanted_parents: dict[str, set[str]] = defaultdict(set)
    for obj, group in by_object.items():
        spec = specs[obj]
        table = local_table(spec)
        keys = [e.record_key for e in group]
        picked = row_columns(table)  # keyed id and crm_id, whatever a table calls them
        found = _locked(sa.select(*picked).where(table.c.crm_id.in_(keys)), table)
        for m in conn.execute(found).mappings():
            rows[(obj, m["crm_id"].lower())] = dict(m)
            record_ids[obj].add(m["id"])
        # A push in flight: its local row has no crm_id yet, the entry knows its id.
        loose = {e.record_id: e.record_key for e in group if e.record_id is not None}
        loose = {i: k for i, k in loose.items() if (obj, k) not in rows}
        if loose:
            held = _locked(sa.select(*picked).where(table.c.id.in_(list(loose))), table)
            for m in conn.execute(held).mappings():
                rows[(obj, loose[m["id"]])] = dict(m)
        record_ids[obj].update(e.record_id for e in group if e.record_id is not None)
        targets = {lk.column: lk.target for lk in spec.lookups}
        for e in group:
            for column, crm_id in ((e.payload or {}).get("lookups") or {}).items():
                if crm_id and column in targets:
                    wanted_parents[targets[column]].add(str(crm_id).lower())
    synced: dict[tuple[str, int], Any] = {}
    pushes: dict[tuple[str, int], PendingPush] = {}
    r, q = sync_record.c, sync_queue.c
    # Read where a local change goes, in the order it goes there: the capture log, the
    # queue (a fold moves it there in one commit), the sync state (a push's outcome moves
    # it there in one commit). On PostgreSQL each statement sees what committed before
    # it, so a change moving on between two reads is seen in the place it moved to; read
    # the other way round, it would be seen in neither, and Dynamics' values would win
    # over a local change as if none were waiting (the rows are locked above, so no new
    # local change of them commits meanwhile).
    for obj, ids in record_ids.items():
        if not ids:
            continue
        # A local change committed since the fold that preceded this batch is still in
        # the capture log: a push all the same.
        logged = capture.logged_changes(conn, obj, ids)
        for p in conn.execute(
            sa.select(q.record_id, q.claimed_until, q.last_changed_at).where(
                q.object == obj,
                q.direction == Direction.TO_CRM,
                q.record_key.in_([str(i) for i in sorted(ids)]),
            )
        ):
            claimed = p.claimed_until is not None and p.claimed_until > now
            pushes[(obj, p.record_id)] = PendingPush(claimed, p.last_changed_at)
        for record_id, (changed_at, seq) in logged.items():
            known = pushes.get((obj, record_id))
            claimed = known is not None and known.claimed
            latest = max(changed_at, known.changed_at) if known is not None else changed_at
            pushes[(obj, record_id)] = PendingPush(claimed, latest, seq)
        for s in conn.execute(
            sa.select(sync_record).where(r.object == obj, r.record_id.in_(sorted(ids)))
        ):
            synced[(obj, s.record_id)] = s
    parents: dict[tuple[str, str], int] = {}
    on_way: set[tuple[str, str]] = set()
    for target, crm_ids in wanted_parents.items():
        table = local_table(specs[target])
        ids_sorted = sorted(crm_ids)
        for pr in conn.execute(
            sa.select(table.c.id, table.c.crm_id).where(table.c.crm_id.in_(ids_sorted))
        ):
            parents[(target, pr.crm_id.lower())] = pr.id
        for pq in conn.execute(
            sa.select(q.crm_id, q.record_id).where(
                q.object == target,
                q.direction == Direction.TO_CRM,
                q.crm_id.in_(ids_sorted),
                q.record_id.is_not(None),
            )
        ):
            parents.setdefault((target, pq.crm_id.lower()), pq.record_id)
        for pk in conn.execute(
            sa.select(q.record_key).where(
                q.object == target,
                q.direction == Direction.FROM_CRM,
                q.state == EntryState.PENDING,
                q.record_key.in_(ids_sorted),
            )
        ):
            on_way.add((target, pk.record_key))
    return ApplyContext(rows, synced, pushes, parents, frozenset(on_way))


def _locked(select: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
    """The local rows, locked for the rest of the apply on PostgreSQL (in the order of
    their ids, as every apply takes them), so that what the plan compares is what is
    there when it writes: a local change of one waits for the apply to commit, then goes
    out as a push. SQLite's write transaction already keeps other writers out."""
    return select.order_by(table.c.id).with_for_update()


def _done(w: LocalWrite, record_id: int | None) -> Done:
    res = w.resolution
    return Done(
        w.entry,
        crm_id=w.change.crm_id,
        etag=w.change.etag,
        record_id=record_id,
        synced_values=res.synced_values if res is not None else None,
        crm_version=w.change.version,
        crm_modified_at=w.change.modified_datetime,
    )


def execute(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    writes: Sequence[LocalWrite],
    now: datetime,
) -> list[Done]:
    """Carry out ``writes`` (capture must be suppressed); returns their outcomes."""
    done: list[Done] = []
    by_kind: dict[tuple[str, WriteKind], list[LocalWrite]] = defaultdict(list)
    writes_of = {w.entry.id: w for w in writes}
    for w in writes:
        by_kind[(w.entry.object, w.kind)].append(w)
    for (obj, kind), group in by_kind.items():
        spec = specs[obj]
        table = local_table(spec)
        if kind == WriteKind.INSERT:
            given = [{**w.values, "crm_id": w.change.crm_id} for w in group]
            names = sorted({c for row in given for c in row})
            rows = [{c: row.get(c) for c in names} for row in given]
            new_ids = _insert_rows(conn, table, rows)
            done += [_done(w, i) for w, i in zip(group, new_ids, strict=True)]
            parents.arrived(conn, specs, obj, [w.change.crm_id for w in group], now)
        elif kind == WriteKind.UPDATE:
            by_columns: dict[tuple[str, ...], list[LocalWrite]] = defaultdict(list)
            for w in group:
                by_columns[tuple(sorted(w.values))].append(w)
            for columns, same in by_columns.items():
                if not columns:
                    continue  # nothing of Dynamics' to write (equal, or local won)
                stmt = (
                    sa.update(table)
                    .where(table.c.id == sa.bindparam("_rid"))
                    .values(
                        {
                            **{c: sa.bindparam(f"_v_{c}") for c in columns},
                            "crm_id": sa.func.coalesce(table.c.crm_id, sa.bindparam("_crm")),
                            # An attached table has none of crmsync's timestamps.
                            **({"updated_at": now} if spec.timestamps else {}),
                        }
                    )
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "_rid": w.record_id,
                            "_crm": w.change.crm_id,
                            **{f"_v_{c}": w.values[c] for c in columns},
                        }
                        for w in same
                    ],
                )
            done += [_done(w, w.record_id) for w in group]
        else:
            ids = [w.record_id for w in group]
            if kind == WriteKind.DELETE:
                conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
            else:
                conn.execute(sa.update(table).where(table.c.id.in_(ids)).values(crm_deleted_at=now))
            done += [_done(w, w.record_id) for w in group]
        _journal(conn, group, now)
        _settle_pushes(conn, obj, group, now)
        _rejoin(conn, spec, group, now)
    if history.enabled():
        history.write(conn, (ev for d in done for ev in _applied(d, writes_of[d.entry.id], now)))
    return done


_APPLIED_AS = {
    WriteKind.INSERT: Operation.INSERT,
    WriteKind.UPDATE: Operation.UPDATE,
    WriteKind.DELETE: Operation.DELETE,
    WriteKind.MARK: Operation.DELETE,
}


def _applied(d: Done, w: LocalWrite, now: datetime) -> list[dict[str, Any]]:
    """A write's ``conflict`` events (field, both values, winner, rule), then its
    ``applied`` event (the columns written), unless it had nothing to write."""
    key = history.key_of(d.record_id, w.change.crm_id)
    common: dict[str, Any] = {"direction": Direction.FROM_CRM, "operation": w.entry.operation}
    events = [
        history.event(
            w.entry.object,
            key,
            EventKind.CONFLICT,
            now,
            fields=[c.field],
            detail={
                "field": c.field,
                "local": as_text(c.local_value),
                "dynamics": as_text(c.crm_value),
                "winner": c.winner,
                "rule": c.rule.value,
            },
            **common,
        )
        for c in (w.resolution.conflicts if w.resolution is not None else [])
    ]
    if w.kind == WriteKind.UPDATE and not w.values:
        return events
    mark = {"marked": True} if w.kind == WriteKind.MARK else None
    applied = history.event(
        w.entry.object,
        key,
        EventKind.APPLIED,
        now,
        direction=Direction.FROM_CRM,
        operation=_APPLIED_AS[w.kind],
        fields=sorted(w.values) or None,
        detail=mark,
    )
    return [*events, applied]


def _rejoin(conn: Connection, spec: ObjectSpec, group: Sequence[LocalWrite], now: datetime) -> None:
    """Records the sync filter includes again sync both ways from now on; those whose
    local row still differs from Dynamics after the rule table get a push queued (their
    local changes were dropped from the queue while they were excluded)."""
    ids = [w.record_id for w in group if w.rejoin]
    if not ids:
        return
    r = sync_record.c
    conn.execute(
        sa.update(sync_record)
        .where(r.object == spec.name, r.record_id.in_(ids))
        .values(excluded=False)
    )
    unsent = [
        w.record_id
        for w in group
        if w.rejoin and w.push is None and w.resolution is not None and w.resolution.push_needed
    ]
    if unsent:
        _queue_updates(conn, spec, unsent, now)


def _queue_updates(
    conn: Connection, spec: ObjectSpec, ids: Sequence[int | None], now: datetime
) -> None:
    """Queue ``to_crm`` updates of these local rows, as the capture trigger would have
    (an entry already waiting is left as it is)."""
    table = local_table(spec)
    rows = sa.select(
        sa.literal(spec.name),
        sa.literal(Direction.TO_CRM, sa.String),
        sa.cast(table.c.id, sa.String),
        table.c.id,
        table.c.crm_id,
        sa.literal(Operation.UPDATE, sa.String),
        table.c[spec.label_column],
        sa.literal(EntryState.PENDING, sa.String),
        sa.literal(now, UTCDateTime()),
        sa.literal(now, UTCDateTime()),
        sa.literal(1),
        sa.literal(0),
        sa.literal(now, UTCDateTime()),
    ).where(table.c.id.in_(ids))
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_queue)
    columns = [
        "object",
        "direction",
        "record_key",
        "record_id",
        "crm_id",
        "operation",
        "label",
        "state",
        "first_queued_at",
        "last_changed_at",
        "version",
        "attempts",
        "next_attempt_at",
    ]
    conn.execute(insert.from_select(columns, rows).on_conflict_do_nothing())


def _insert_rows(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows carrying distinct ``crm_id``s; their new ids, in order.

    One ``executemany`` and one lookup by ``crm_id``: ``RETURNING`` in parameter order
    makes SQLite insert row by row, several times slower for a page of thousands.
    """
    conn.execute(sa.insert(table), list(rows))
    keys = [r["crm_id"] for r in rows]
    found = conn.execute(sa.select(table.c.crm_id, table.c.id).where(table.c.crm_id.in_(keys)))
    ids = {crm_id: record_id for crm_id, record_id in found}
    return [ids[k] for k in keys]


def _journal(conn: Connection, group: Sequence[LocalWrite], now: datetime) -> None:
    rows = [
        {
            "object": w.entry.object,
            "record_id": w.record_id,
            "crm_id": w.change.crm_id,
            "field": c.field,
            "local_value": as_text(c.local_value),
            "crm_value": as_text(c.crm_value),
            "winner": c.winner,
            "rule": c.rule.value,
            "detected_at": now,
        }
        for w in group
        if w.resolution is not None
        for c in w.resolution.conflicts
    ]
    if rows:
        conn.execute(sa.insert(sync_conflict), rows)


def _settle_pushes(conn: Connection, obj: str, group: Sequence[LocalWrite], now: datetime) -> None:
    """Drop pending pushes that applying made moot: the record is gone in Dynamics, or
    Dynamics' values won every field the push would have sent. A push that had failed
    leaves nothing to retry, so its error is resolved with it."""
    moot = [
        str(w.record_id)
        for w in group
        if w.push is not None
        and (
            w.kind in (WriteKind.DELETE, WriteKind.MARK)
            or (w.resolution and not w.resolution.push_needed)
        )
    ]
    if not moot:
        return
    # Its changes still in the capture log are as moot as its entry.
    capture.forget_changes(
        conn,
        obj,
        {
            w.record_id: w.push.logged_up_to
            for w in group
            if str(w.record_id) in moot
            and w.record_id is not None
            and w.push is not None
            and w.push.logged_up_to is not None
        },
    )
    q = sync_queue.c
    dropped = conn.execute(
        sa.delete(sync_queue)
        .where(
            q.object == obj,
            q.direction == Direction.TO_CRM,
            q.record_key.in_(moot),
            sa.or_(q.claimed_until.is_(None), q.claimed_until < now),
        )
        .returning(q.record_key)
    ).scalars()
    queue.resolve(conn, {(obj, Direction.TO_CRM, key) for key in dropped}, now)


def _driver_message(exc: DBAPIError) -> str:
    # The driver's first line names the constraint; the rest may quote values.
    return str(exc.orig).strip().splitlines()[0][:500] if exc.orig else type(exc).__name__
