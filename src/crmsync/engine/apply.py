"""Apply: claimed ``from_crm`` entries in, local inserts, updates and deletes out.

``plan_apply`` decides, per entry and without I/O, what to do: write the local row
(with conflicts resolved by ``conflicts.resolve``), delete or mark it, defer (a parent
record is staged but not applied yet, or a local change of the record is being sent
right now), park it (its parent is nowhere to be found, or a value does not fit the
local column), or finish it with nothing to do (an older change than the one already
synced).

``Applier.apply_batch`` claims a batch, loads what the plan needs, and carries the plan
out in ONE transaction with capture suppressed (so nothing is sent back to Dynamics):
local writes, the conflict journal, pending pushes made moot, the sync state, and the
queue outcomes. If the database refuses a write (a local constraint), the batch is
replayed record by record in savepoints, and only the refused records are parked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from crmsync.config import Settings
from crmsync.domain import ObjectSpec
from crmsync.engine import changes as ch
from crmsync.engine.conflicts import Resolution, as_text, resolve
from crmsync.mapping.convert import (
    DoesNotFit,
    from_dataverse,
    json_row,
    local_values,
    to_dataverse,
)
from crmsync.store import capture, queue
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.local_tables import local_table, row_columns
from crmsync.store.schema import sync_conflict, sync_queue, sync_record
from crmsync.store.types import UTCDateTime, utcnow

log = logging.getLogger(__name__)

MISSING_PARENT = "crmsync.missing_parent"
UNMAPPABLE = "crmsync.unmappable_value"
LOCAL_CONSTRAINT = "crmsync.local_constraint"
DEFER_SECONDS = 0.5


@dataclass(frozen=True)
class Push:
    """A record's own ``to_crm`` entry, as far as applying needs to know it."""

    claimed: bool  # being sent right now
    changed_at: datetime  # its last captured local change
    logged_up_to: int | None = None  # its latest change still in the capture log


@dataclass(frozen=True)
class Context:
    """What the store holds for one batch; everything ``plan_apply`` reads."""

    rows: Mapping[tuple[str, str], Mapping[str, Any]]  # (object, crm id) -> local row
    synced: Mapping[tuple[str, int], Any]  # (object, record id) -> sync_record row
    pushes: Mapping[tuple[str, int], Push]
    parents: Mapping[tuple[str, str], int]  # (object, crm id) -> local id
    parents_on_their_way: frozenset[tuple[str, str]]  # staged from_crm, not applied yet


@dataclass(frozen=True)
class Write:
    entry: queue.Entry
    change: ch.Change
    kind: str  # insert | update | delete | mark
    record_id: int | None
    values: dict[str, Any]
    resolution: Resolution | None = None
    push: Push | None = None
    rejoin: bool = False  # the sync filter includes the record again


@dataclass(frozen=True)
class Defer:
    entry: queue.Entry
    reason: str


@dataclass(frozen=True)
class Park:
    entry: queue.Entry
    code: str
    message: str


@dataclass(frozen=True)
class Skip:
    entry: queue.Entry


Step = Write | Defer | Park | Skip


def _fits(table: sa.Table, column: str, value: Any) -> str | None:
    """Why ``value`` cannot be stored in ``column``, or None."""
    if value is None:
        return None
    col_type = table.c[column].type
    if isinstance(col_type, sa.String):
        if not isinstance(value, str):
            return f"{column}: expected text, Dynamics sent {type(value).__name__}"
        if col_type.length is not None and len(value) > col_type.length:
            return f"{column}: {len(value)} characters, the local column holds {col_type.length}"
    return None


def plan_apply(
    entry: queue.Entry,
    spec: ObjectSpec,
    ctx: Context,
    *,
    delete_behaviour: str,
) -> Step:
    """Decide what to do with one claimed ``from_crm`` entry."""
    change = ch.Change.from_payload(entry.record_key, entry.payload)
    row = ctx.rows.get((spec.name, change.crm_id))
    record_id = row["id"] if row is not None else entry.record_id
    push = ctx.pushes.get((spec.name, record_id)) if record_id is not None else None
    state = ctx.synced.get((spec.name, record_id)) if record_id is not None else None
    excluded = state is not None and bool(state.excluded)
    if excluded and not change.rejoin:
        # Staged before the sync filter excluded the record: it no longer follows Dynamics.
        return Skip(entry)
    if change.deleted or entry.operation == "delete":
        if row is None:
            return Skip(entry)
        if delete_behaviour == "mark":
            if row.get("crm_deleted_at") is not None:
                return Skip(entry)
            return Write(entry, change, "mark", row["id"], {}, push=push)
        return Write(entry, change, "delete", row["id"], {}, push=push)
    if push is not None and push.claimed:
        return Defer(entry, "a local change of this record is being sent")
    if state is not None and change.version is not None and not excluded:
        synced_version = state.crm_version or ch.version_of(state.etag)
        if synced_version is not None and change.version <= synced_version:
            return Skip(entry)  # older than what both sides already agreed on
    table = local_table(spec)
    remote: dict[str, Any] = {}
    types = spec.field_specs
    for column, value in change.values.items():
        field = types.get(column)
        local = value
        if field is not None:
            try:
                local = from_dataverse(field, value)
                value = to_dataverse(field, local)  # one JSON form to compare and keep
            except DoesNotFit as exc:
                return Park(entry, UNMAPPABLE, str(exc))
        problem = _fits(table, column, local)
        if problem is not None:
            return Park(entry, UNMAPPABLE, problem)
        remote[column] = value
    targets = {lk.column: lk.target for lk in spec.lookups}
    for column, parent_crm_id in change.lookups.items():
        if parent_crm_id is None:
            remote[column] = None
            continue
        target = targets[column]
        if not ch.is_guid(parent_crm_id):
            return Park(entry, UNMAPPABLE, f"{column}: {parent_crm_id!r} is not a Dynamics id")
        parent = ctx.parents.get((target, parent_crm_id))
        if parent is None:
            if (target, parent_crm_id) in ctx.parents_on_their_way:
                return Defer(entry, f"waiting for {target} {parent_crm_id}")
            return Park(
                entry,
                MISSING_PARENT,
                f"{column} refers to {target} {parent_crm_id}, which is not in the local"
                f" {target} table and is not queued to arrive",
            )
        remote[column] = parent
    if row is None and record_id is None:
        res = resolve(spec, None, None, remote, local_pending=False)
        return Write(entry, change, "insert", None, local_values(spec, res.values), res)
    if row is None:
        # Known only as a push in flight whose local row is gone: nothing to update.
        return Skip(entry)
    if excluded:
        # Included again: both sides may have moved while it was out (its local changes
        # were held back, not sent), so the rule table settles it against the values
        # both sides last agreed on; what changed only locally is pushed afterwards.
        res = resolve(
            spec,
            state.synced_values if state is not None else None,
            json_row(spec, row),
            remote,
            local_pending=True,
            local_modified_at=_local_change_time(row, state, push),
            crm_modified_at=change.modified_datetime,
        )
        values = local_values(spec, res.values)
        return Write(entry, change, "update", row["id"], values, res, push, rejoin=True)
    res = resolve(
        spec,
        state.synced_values if state is not None else None,
        json_row(spec, row),
        remote,
        local_pending=push is not None,
        local_modified_at=push.changed_at if push is not None else None,
        crm_modified_at=change.modified_datetime,
    )
    return Write(entry, change, "update", row["id"], local_values(spec, res.values), res, push)


def _local_change_time(row: Mapping[str, Any], state: Any, push: Push | None) -> datetime | None:
    """When the record last changed locally, for ``newest_wins`` on a rejoin: its waiting
    push's last change, else the row's ``updated_at`` if it is later than the last sync
    (writers that do not maintain it leave it older: unknown, which counts as oldest)."""
    if push is not None:
        return push.changed_at
    updated = row.get("updated_at")
    synced = getattr(state, "last_synced_at", None)
    if isinstance(updated, datetime) and synced is not None and updated > synced:
        return updated
    return None


# --- loading what the plan needs -----------------------------------------------------


def load_context(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    entries: Sequence[queue.Entry],
    now: datetime,
) -> Context:
    by_object: dict[str, list[queue.Entry]] = defaultdict(list)
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
        for m in conn.execute(sa.select(*picked).where(table.c.crm_id.in_(keys))).mappings():
            rows[(obj, m["crm_id"].lower())] = dict(m)
            record_ids[obj].add(m["id"])
        # A push in flight: its local row has no crm_id yet, the entry knows its id.
        loose = {e.record_id: e.record_key for e in group if e.record_id is not None}
        loose = {i: k for i, k in loose.items() if (obj, k) not in rows}
        if loose:
            for m in conn.execute(sa.select(*picked).where(table.c.id.in_(list(loose)))).mappings():
                rows[(obj, loose[m["id"]])] = dict(m)
        record_ids[obj].update(e.record_id for e in group if e.record_id is not None)
        targets = {lk.column: lk.target for lk in spec.lookups}
        for e in group:
            for column, crm_id in ((e.payload or {}).get("lookups") or {}).items():
                if crm_id and column in targets:
                    wanted_parents[targets[column]].add(str(crm_id).lower())
    synced: dict[tuple[str, int], Any] = {}
    pushes: dict[tuple[str, int], Push] = {}
    r, q = sync_record.c, sync_queue.c
    for obj, ids in record_ids.items():
        if not ids:
            continue
        for s in conn.execute(
            sa.select(sync_record).where(r.object == obj, r.record_id.in_(sorted(ids)))
        ):
            synced[(obj, s.record_id)] = s
        for p in conn.execute(
            sa.select(q.record_id, q.claimed_until, q.last_changed_at).where(
                q.object == obj,
                q.direction == "to_crm",
                q.record_key.in_([str(i) for i in sorted(ids)]),
            )
        ):
            claimed = p.claimed_until is not None and p.claimed_until > now
            pushes[(obj, p.record_id)] = Push(claimed, p.last_changed_at)
        # A local change committed since the fold that preceded this batch is still in
        # the capture log: a push all the same.
        for record_id, (changed_at, seq) in capture.logged_changes(conn, obj, ids).items():
            known = pushes.get((obj, record_id))
            claimed = known is not None and known.claimed
            latest = max(changed_at, known.changed_at) if known is not None else changed_at
            pushes[(obj, record_id)] = Push(claimed, latest, seq)
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
                q.direction == "to_crm",
                q.crm_id.in_(ids_sorted),
                q.record_id.is_not(None),
            )
        ):
            parents.setdefault((target, pq.crm_id.lower()), pq.record_id)
        for pk in conn.execute(
            sa.select(q.record_key).where(
                q.object == target,
                q.direction == "from_crm",
                q.state == "pending",
                q.record_key.in_(ids_sorted),
            )
        ):
            on_way.add((target, pk.record_key))
    return Context(rows, synced, pushes, parents, frozenset(on_way))


# --- carrying the plan out -------------------------------------------------------------


@dataclass
class ApplyStats:
    applied: int = 0
    skipped: int = 0
    deferred: int = 0
    parked: int = 0
    conflicts: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


def _done(w: Write, record_id: int | None) -> queue.Done:
    res = w.resolution
    return queue.Done(
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
    writes: Sequence[Write],
    now: datetime,
) -> list[queue.Done]:
    """Carry out ``writes`` (capture must be suppressed); returns their outcomes."""
    done: list[queue.Done] = []
    by_kind: dict[tuple[str, str], list[Write]] = defaultdict(list)
    for w in writes:
        by_kind[(w.entry.object, w.kind)].append(w)
    for (obj, kind), group in by_kind.items():
        spec = specs[obj]
        table = local_table(spec)
        if kind == "insert":
            given = [{**w.values, "crm_id": w.change.crm_id} for w in group]
            names = sorted({c for row in given for c in row})
            rows = [{c: row.get(c) for c in names} for row in given]
            new_ids = _insert_rows(conn, table, rows)
            done += [_done(w, i) for w, i in zip(group, new_ids, strict=True)]
        elif kind == "update":
            by_columns: dict[tuple[str, ...], list[Write]] = defaultdict(list)
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
            if kind == "delete":
                conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
            else:
                conn.execute(sa.update(table).where(table.c.id.in_(ids)).values(crm_deleted_at=now))
            done += [_done(w, w.record_id) for w in group]
        _journal(conn, group, now)
        _settle_pushes(conn, obj, group, now)
        _rejoin(conn, spec, group, now)
    return done


def _rejoin(conn: Connection, spec: ObjectSpec, group: Sequence[Write], now: datetime) -> None:
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
        sa.literal("to_crm"),
        sa.cast(table.c.id, sa.String),
        table.c.id,
        table.c.crm_id,
        sa.literal("update"),
        table.c[spec.label_column],
        sa.literal("pending"),
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


def _journal(conn: Connection, group: Sequence[Write], now: datetime) -> None:
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


def _settle_pushes(conn: Connection, obj: str, group: Sequence[Write], now: datetime) -> None:
    """Drop pending pushes that applying made moot: the record is gone in Dynamics, or
    Dynamics' values won every field the push would have sent. A push that had failed
    leaves nothing to retry, so its error is resolved with it."""
    moot = [
        str(w.record_id)
        for w in group
        if w.push is not None
        and (w.kind in ("delete", "mark") or (w.resolution and not w.resolution.push_needed))
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
            q.direction == "to_crm",
            q.record_key.in_(moot),
            sa.or_(q.claimed_until.is_(None), q.claimed_until < now),
        )
        .returning(q.record_key)
    ).scalars()
    queue.resolve(conn, {(obj, "to_crm", key) for key in dropped}, now)


def _driver_message(exc: DBAPIError) -> str:
    # The driver's first line names the constraint; the rest may quote values.
    return str(exc.orig).strip().splitlines()[0][:500] if exc.orig else type(exc).__name__


class Applier:
    """Applies batches of ``from_crm`` entries for one worker."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id
        self.specs = settings.object_specs()
        self.objects = [s.name for s in ch.pull_order(self.specs)]
        self.stats = ApplyStats()

    async def apply_batch(self) -> int:
        return await asyncio.to_thread(self.apply_batch_sync)

    def apply_batch_sync(self) -> int:
        """Claim, apply and record one batch; returns how many entries it handled."""
        entries = queue.claim(
            self.engine,
            self.worker_id,
            "from_crm",
            self.objects,
            self.settings.batch_size,
            timedelta(seconds=self.settings.lease_seconds),
        )
        if not entries:
            return 0
        self.apply_claimed(entries)
        return len(entries)

    def apply_claimed(self, entries: Sequence[queue.Entry]) -> None:
        """Apply and record entries this worker claimed, in one transaction."""
        # Local changes are queued first, so that conflict checks see them as pushes
        # (those logged after this are read from the log by ``load_context``).
        capture.fold_pending(self.engine, max_seconds=capture.BATCH_FOLD_SECONDS)
        now = utcnow()
        with write_transaction(self.engine) as conn:
            # Only entries still ours, locked until the end: if our lease ran out and
            # another worker claimed them, it applies them; applying them twice would
            # insert a record twice (refused, and parked as a bogus error).
            entries = queue.hold(conn, self.worker_id, entries)
            if not entries:
                return
            ctx = load_context(conn, self.specs, entries, now)
            steps = [
                plan_apply(
                    e,
                    self.specs[e.object],
                    ctx,
                    delete_behaviour=self.settings.delete_behaviour,
                )
                for e in entries
            ]
            outcome = self._run(conn, steps, now)
            queue.record_in(conn, outcome, now)

    def _run(self, conn: Connection, steps: Sequence[Step], now: datetime) -> queue.Outcome:
        outcome = queue.Outcome()
        writes = [s for s in steps if isinstance(s, Write)]
        for step in steps:
            if isinstance(step, Skip):
                outcome.done.append(queue.Done(step.entry, counted=False, remember=False))
                self.stats.skipped += 1
            elif isinstance(step, Defer):
                outcome.deferred.append((step.entry, now + timedelta(seconds=DEFER_SECONDS)))
                self.stats.deferred += 1
            elif isinstance(step, Park):
                self._park(outcome, step.entry, step.code, step.message)
        with capture_suppressed(conn):
            try:
                with conn.begin_nested():
                    done = execute(conn, self.specs, writes, now)
            except DBAPIError:
                # Someone's constraint refused a write: find it, park only that record.
                done = []
                for w in writes:
                    try:
                        with conn.begin_nested():
                            done += execute(conn, self.specs, [w], now)
                    except DBAPIError as exc:
                        self._park(outcome, w.entry, LOCAL_CONSTRAINT, _driver_message(exc))
        outcome.done.extend(done)
        self.stats.applied += len(done)
        self.stats.conflicts += sum(
            len(w.resolution.conflicts) for w in writes if w.resolution is not None
        )
        return outcome

    def _park(self, outcome: queue.Outcome, entry: queue.Entry, code: str, message: str) -> None:
        outcome.failed.append(queue.Failed(entry, code, message))
        self.stats.parked += 1
        self.stats.by_code[code] = self.stats.by_code.get(code, 0) + 1
