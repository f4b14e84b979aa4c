"""The exact backlog: the queue's counts plus the capture log's unfolded tail.

For each record in the log this module works out, without writing, what ``capture.fold``
will make of it: its pending ``to_crm`` entry *before* the fold (parked ones are not
backlog) and *after* it. After: for a record last logged as deleted, a ``delete`` if a
Dynamics id is known (the row's, the entry's or its last sync's), else none; for one
whose row exists, an ``insert`` while neither the row nor its last sync has a Dynamics
id, else an ``update``; for one whose row is gone with no logged delete (applied from
Dynamics with capture suppressed), its entry unchanged. The after entry keeps the
entry's first-queued time, else takes its first change's (its delete's, if deleted).
The backlog is the folded counts less every *before* plus every *after*, so several
changes to one record count once, as once folded. Every statement is a ``SELECT``
(``db.read_transaction``); the cost is a scan of the tail, which writers keep short
(a long one, ``LARGE_TAIL``: on PostgreSQL off ``ix_sync_change_record``, on SQLite,
which has no index on the log, in the log's order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, Operation
from crmsync.mapping import active, spec_of
from crmsync.store import backlog_counts
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_change, sync_queue, sync_record
from crmsync.store.types import UTCDateTime

_TO_CRM = Direction.TO_CRM.value


@dataclass(frozen=True)
class Group:
    """Pending entries of one (object, direction, operation), folded or not."""

    object: str
    direction: str
    operation: str
    count: int
    oldest_queued_at: datetime | None


def _object_tail(
    obj: str, only: sa.Select[Any] | sa.CompoundSelect[Any] | None = None, by_id: bool = False
) -> sa.Select[Any]:
    """The tail of one object: one row per record with logged changes, ``object,
    record_id, before, after, first_at, crm_id, label`` (with ``only``, of the records
    whose ids it selects).

    One aggregate over the object's log rows gives each record's first change, whether
    its last one is a delete, and that delete's Dynamics id, label and time (no join
    back to the log: on PostgreSQL those were two hash joins over the whole log). Ids
    are not reused (SQLite's AUTOINCREMENT, sequences), so a record has one delete at
    most; where a writer reused an id, the counts are still the fold's.
    """
    c = sync_change.c
    deleted = c.deleted.is_(True)
    last_delete = sa.func.max(c.seq).filter(deleted)
    per = (
        sa.select(
            c.record_id,
            sa.type_coerce(sa.func.min(c.changed_at), UTCDateTime()).label("first_at"),
            (sa.func.max(c.seq) == sa.func.coalesce(last_delete, -1)).label("last_deleted"),
            sa.func.max(c.crm_id).filter(deleted).label("deleted_crm_id"),
            sa.func.max(c.label).filter(deleted).label("deleted_label"),
            sa.type_coerce(sa.func.max(c.changed_at).filter(deleted), UTCDateTime()).label(
                "deleted_at"
            ),
        )
        .where(c.object == obj, *([c.record_id.in_(only)] if only is not None else []))
        .group_by(c.record_id)
        .subquery(f"per_{obj}")
    )
    q, r = sync_queue.alias(f"q_{obj}"), sync_record.alias(f"r_{obj}")
    spec = spec_of(obj)
    row = local_table(spec).alias(f"t_{obj}")
    pending = q.c.state == EntryState.PENDING.value
    before = sa.case((pending, q.c.operation), else_=None)
    gone = per.c.last_deleted
    known_id = sa.func.coalesce(per.c.deleted_crm_id, r.c.crm_id, q.c.crm_id)
    after = sa.case(
        (gone, sa.case((known_id.is_not(None), Operation.DELETE.value), else_=None)),
        (
            row.c.id.is_not(None),
            sa.case(
                (sa.func.coalesce(row.c.crm_id, r.c.crm_id).is_(None), Operation.INSERT.value),
                else_=Operation.UPDATE.value,
            ),
        ),
        else_=before,
    )
    source = (
        per.outerjoin(
            q,
            (q.c.object == obj)
            & (q.c.direction == _TO_CRM)
            & (
                # Every ``to_crm`` entry holds its record's id beside its key (the id as
                # text): PostgreSQL merges on the number in the log's record order;
                # SQLite seeks the queue's key.
                q.c.record_id == per.c.record_id
                if by_id
                else q.c.record_key == sa.cast(per.c.record_id, sa.String(40))
            ),
        )
        .outerjoin(r, (r.c.object == obj) & (r.c.record_id == per.c.record_id))
        .outerjoin(row, row.c.id == per.c.record_id)
    )
    return sa.select(
        sa.literal(obj).label("object"),
        per.c.record_id,
        before.label("before"),
        after.label("after"),
        # A new entry's first change: for a deleted record, its delete (the changes
        # before it found no row to queue by the time they were folded).
        sa.type_coerce(
            sa.func.coalesce(
                q.c.first_queued_at, sa.case((gone, per.c.deleted_at), else_=per.c.first_at)
            ),
            UTCDateTime(),
        ).label("first_at"),
        sa.case(
            (gone, known_id), else_=sa.func.coalesce(row.c.crm_id, r.c.crm_id, q.c.crm_id)
        ).label("crm_id"),
        sa.case((gone, per.c.deleted_label), else_=row.c[spec.label_column]).label("label"),
        # The entry as it is before the fold (a dry run shows what is due).
        q.c.id.label("entry_id"),
        q.c.state.label("entry_state"),
        q.c.next_attempt_at.label("entry_due_at"),
        q.c.claimed_until.label("entry_claimed_until"),
        q.c.attempts.label("entry_attempts"),
        q.c.version.label("entry_version"),
    ).select_from(source)


_OPS = tuple(o.value for o in Operation)


def _tail_sums(obj: str | None, by_id: bool = False) -> sa.CompoundSelect[Any] | sa.Select[Any]:
    """The tail summed: per object and (before, after) pair, how many records, and the
    oldest first-queued time among them. Each object's rows are summed on their own
    (grouping one object's integer record ids sorts several times faster on SQLite
    than grouping by object and id)."""
    parts = [_summed(name, _object_tail(name, by_id=by_id)) for name in _names(obj)]
    return parts[0] if len(parts) == 1 else sa.union_all(*parts)


def _names(obj: str | None) -> list[str]:
    return [obj] if obj is not None else list(active())


def _summed(obj: str, tail: sa.Select[Any]) -> sa.Select[Any]:
    t = tail.subquery(f"tail_{obj}")
    return sa.select(
        sa.literal(obj).label("object"),
        t.c.before,
        t.c.after,
        sa.func.count().label("n"),
        sa.type_coerce(sa.func.min(t.c.first_at), UTCDateTime()).label("first_at"),
    ).group_by(t.c.before, t.c.after)


@dataclass(frozen=True)
class _Sum:
    """One row of a tail's sums, as ``_tail_sums`` gives them."""

    object: str
    before: str | None
    after: str | None
    n: int
    first_at: datetime | None


def _large_tail_sums(conn: Connection, obj: str | None) -> list[Any]:
    """``_tail_sums`` of a long tail (``LARGE_TAIL``), as the rows it gives.

    PostgreSQL reads the log in record order off ``ix_sync_change_record`` and merges
    it with the queue (on the record's id) and the rows. SQLite, where an aggregate
    costs several times a lookup, aggregates only the records that need it: the
    *plain* ones (logged once, no delete, no ``to_crm`` entry: what a bulk load logs)
    are summed row by row (``_plain_sums``), the others, found in a scan of the log
    (``_special_records``), through ``_object_tail`` as a short tail is."""
    out: list[Any] = []
    for name in _names(obj):
        if not _logged_any(conn, name):
            continue
        if conn.dialect.name == "postgresql":
            out += conn.execute(_summed(name, _object_tail(name, by_id=True)))
            continue
        special = _special_records(name)
        out.append(_Sum(name, None, None, 0, None))  # the object has changes in the log
        out += conn.execute(_summed(name, _object_tail(name, only=special)))
        out += _plain_sums(conn, name, special)
    return out


def _special_records(obj: str) -> sa.CompoundSelect[Any]:
    """SQLite: the ids of ``obj``'s records in the log that are not plain (see
    ``_large_tail_sums``), as a statement: the records with a ``to_crm`` entry, those
    with a delete logged, and those logged more than once. The log has no index on
    SQLite (migration 0017): each part reads it once (the queue's part as one list of
    the log's ids, not a probe of the log per entry)."""
    c, q = sync_change.c, sync_queue.c
    logged = sa.select(c.record_id).where(c.object == obj)
    queued = sa.select(q.record_id).where(
        q.object == obj,
        q.direction == _TO_CRM,
        q.record_id.is_not(None),
        q.record_id.in_(logged),
    )
    deletes = sa.select(c.record_id).where(c.object == obj, c.deleted.is_(True))
    repeated = (
        sa.select(c.record_id)
        .where(c.object == obj)
        .group_by(c.record_id)
        .having(sa.func.count() > 1)
    )
    return sa.union_all(queued, deletes, repeated)


def _plain_sums(conn: Connection, obj: str, special: sa.CompoundSelect[Any]) -> list[_Sum]:
    """SQLite: the plain records of ``obj``'s tail summed, one log row each. With no
    entry, the fold queues each as its row is (an ``insert`` while neither the row nor
    its last sync has a Dynamics id, else an ``update``; nothing once the row is gone),
    first queued at its change."""
    c, r = sync_change.c, sync_record.alias("r_plain")
    row = local_table(spec_of(obj)).alias("t_plain")
    known = sa.func.coalesce(row.c.crm_id, r.c.crm_id)
    in_object = c.object == obj
    source = sync_change.outerjoin(row, row.c.id == c.record_id).outerjoin(
        r, (r.c.object == obj) & (r.c.record_id == c.record_id)
    )
    found, updates, first_insert, first_update = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.count(known),
            sa.type_coerce(
                sa.func.min(sa.case((known.is_(None), c.changed_at), else_=None)), UTCDateTime()
            ),
            sa.type_coerce(
                sa.func.min(sa.case((known.is_not(None), c.changed_at), else_=None)),
                UTCDateTime(),
            ),
        )
        .select_from(source)
        .where(in_object, row.c.id.is_not(None), c.record_id.not_in(special))
    ).one()
    sums = [
        _Sum(obj, None, Operation.INSERT.value, found - updates, first_insert),
        _Sum(obj, None, Operation.UPDATE.value, updates, first_update),
    ]
    return [s for s in sums if s.n]


# A log longer than this is merged in record order on PostgreSQL (see ``_plans_for_tail``).
LARGE_TAIL = 1_000
_PLANS = {
    # small tail: look each record up by index; large: merge the tail and the tables
    # once in the record's order, the log read off its index in that order, whatever
    # the statistics say (a log or an application table no ANALYZE has seen since a
    # bulk load looks a few hundred rows long: the planner hashed a million records
    # through temporary files, 2.3 s where the merge takes 1.2, medians at 1,000,000),
    # and run the plan as it is (compiling it took longer than it saved). Sorts stay
    # allowed: without them the only plan left for a queue of no index in the record's
    # order is a loop over it per record.
    False: ("enable_hashjoin", "enable_mergejoin"),
    True: ("enable_nestloop", "enable_hashjoin", "enable_bitmapscan", "jit"),
}


@contextmanager
def _plans_for_tail(conn: Connection) -> Iterator[int]:
    """The log's size, counted up to ``LARGE_TAIL + 1``; on PostgreSQL, the join plans
    for it.

    The log churns every second (appended by every write, emptied by every fold), so
    its statistics are always stale: right after a bulk load the planner believes it
    holds a row or two and probes it once per queued entry (minutes at 20,000 records);
    right after a fold it believes it still holds the million it was last analysed with
    and hashes the whole queue for an empty tail (half a second a read). So the size is
    counted here, up to ``LARGE_TAIL``, and the plan chosen by it."""
    probe = sa.select(sa.func.count()).select_from(
        sa.select(sync_change.c.seq).limit(LARGE_TAIL + 1).subquery()
    )
    size = int(conn.execute(probe).scalar_one())
    if conn.dialect.name != "postgresql" or size == 0:
        yield size
        return
    off = _PLANS[size > LARGE_TAIL]
    for name in off:
        conn.exec_driver_sql(f"SET LOCAL {name} = off")
    try:
        yield size
    finally:
        for name in off:
            conn.exec_driver_sql(f"RESET {name}")


def _logged(conn: Connection, obj: str, record_ids: Iterable[int | None]) -> set[int]:
    """Which of ``obj``'s records have changes in the log."""
    ids = sorted({i for i in record_ids if i is not None})
    if not ids:
        return set()
    c = sync_change.c
    query = sa.select(c.record_id).where(c.object == obj, c.record_id.in_(ids)).distinct()
    return {int(r) for (r,) in conn.execute(query)}


def _oldest_entries(
    conn: Connection, obj: str, direction: str, operation: str, skip_logged: bool
) -> Any | None:
    """The oldest pending entry of one group (a seek on ``ix_sync_queue_backlog``);
    with ``skip_logged``, the oldest whose record has no change in the log (those are
    the tail's to count: the fold may move them to another group or drop them). One
    statement either way: the test is an anti-join against the object's logged ids,
    read once (a probe of the log per entry is quadratic where the log has no index
    on the record, as on SQLite). Ordered by the
    index's own column alone: entries queued by one bulk load share their time, and a
    tie-break on ``id`` had PostgreSQL sort them all (0.5 s at a million)."""
    q, c = sync_queue.c, sync_change.c
    source: Any = sync_queue
    where = [
        q.state == EntryState.PENDING.value,
        q.object == obj,
        q.direction == direction,
        q.operation == operation,
    ]
    if skip_logged:
        logged = sa.select(c.record_id).where(c.object == obj).distinct().subquery("logged")
        source = sync_queue.outerjoin(logged, logged.c.record_id == q.record_id)
        where.append(logged.c.record_id.is_(None))
    query = (
        sa.select(q.id, q.record_id, q.crm_id, q.label, q.first_queued_at)
        .select_from(source)
        .where(*where)
        .order_by(q.first_queued_at)
        .limit(1)
    )
    return conn.execute(query).first()


def groups(conn: Connection, direction: str | None = None, obj: str | None = None) -> list[Group]:
    """Pending entries per (object, direction, operation) with the oldest of each,
    counting the log's tail as folded. Several statements: ``conn`` must hold one
    snapshot (``read_transaction``, or a write transaction on SQLite)."""
    with _plans_for_tail(conn) as logged:
        return _groups(conn, direction, obj, logged)


def _groups(conn: Connection, direction: str | None, obj: str | None, logged: int) -> list[Group]:
    """``groups`` under the chosen plans."""
    counts: dict[tuple[str, str, str], int] = {}
    oldest: dict[tuple[str, str, str], datetime] = {}

    def add(key: tuple[str, str, str], n: int, first: datetime | None) -> None:
        counts[key] = counts.get(key, 0) + n
        if first is not None and (key not in oldest or first < oldest[key]):
            oldest[key] = first

    in_tail: set[str] = set()
    if logged and direction in (None, _TO_CRM):
        tail: list[Any]
        if logged > LARGE_TAIL:
            tail = _large_tail_sums(conn, obj)
        else:
            tail = list(conn.execute(_tail_sums(obj)))
        for row in tail:
            in_tail.add(row.object)
            # A record the fold leaves in its group changes no count; its entry's
            # first-queued time still counts for the group's oldest (the queue's own
            # seeks below skip entries with changes in the log).
            moved = row.before != row.after
            if row.before is not None and moved:
                add((row.object, _TO_CRM, row.before), -int(row.n), None)
            if row.after is not None:
                add((row.object, _TO_CRM, row.after), int(row.n) if moved else 0, row.first_at)
    sums, q = backlog_counts.sums(direction, obj), sync_queue.c
    in_group = (
        q.state == EntryState.PENDING.value,
        q.object == sums.c.object,
        q.direction == sums.c.direction,
        q.operation == sums.c.operation,
    )

    def seek(column: Any) -> Any:
        return (
            sa.select(column)
            .where(*in_group)
            .order_by(q.first_queued_at)
            .limit(1)
            .scalar_subquery()
        )

    query = sa.select(
        sums.c.object,
        sums.c.direction,
        sums.c.operation,
        sums.c.n,
        seek(q.first_queued_at),
        seek(q.record_id),
    )
    for o, d, op, n, first, record_id in conn.execute(query):
        if d == _TO_CRM and o in in_tail and _logged(conn, o, [record_id]):
            entry = _oldest_entries(conn, o, d, op, skip_logged=True)
            first = None if entry is None else entry.first_queued_at
        add((o, d, op), int(n), first)
    return [
        Group(o, d, op, n, oldest.get((o, d, op)))
        for (o, d, op), n in sorted(counts.items())
        if n != 0
    ]


@dataclass(frozen=True)
class Oldest:
    """The oldest waiting record of one (direction, operation) of an object."""

    direction: str
    operation: str
    record_id: int | None
    crm_id: str | None
    label: str | None
    first_queued_at: datetime


def oldest_records(conn: Connection, obj: str) -> list[Oldest]:
    """Per (direction, operation) of ``obj`` with a backlog: its oldest waiting record,
    from the queue or from the log's tail, whichever was queued first. ``conn`` holds
    one snapshot."""
    with _plans_for_tail(conn) as logged:
        return _oldest_records(conn, obj, logged)


def _oldest_records(conn: Connection, obj: str, size: int) -> list[Oldest]:
    """``oldest_records`` under the chosen plans."""
    best: dict[tuple[str, str], Oldest] = {}
    logged = False
    if size:
        _oldest_in_tail(conn, obj, best)
        logged = bool(best) or _logged_any(conn, obj)
    for d in Direction:
        for op in _OPS:
            entry = _oldest_entries(conn, obj, d.value, op, logged and d == Direction.TO_CRM)
            key = (d.value, op)
            if entry is not None and (
                key not in best or entry.first_queued_at < best[key].first_queued_at
            ):
                best[key] = Oldest(
                    d.value, op, entry.record_id, entry.crm_id, entry.label, entry.first_queued_at
                )
    return list(best.values())


def _oldest_in_tail(conn: Connection, obj: str, best: dict[tuple[str, str], Oldest]) -> None:
    """Per operation, the record of ``obj`` in the log the fold would leave oldest."""
    t = _object_tail(obj).subquery("tail")
    rank = sa.func.row_number().over(partition_by=t.c.after, order_by=(t.c.first_at, t.c.record_id))
    ranked = sa.select(t, rank.label("rank")).where(t.c.after.is_not(None)).subquery("ranked")
    for row in conn.execute(sa.select(ranked).where(ranked.c.rank == 1)):
        best[(_TO_CRM, row.after)] = Oldest(
            _TO_CRM, row.after, row.record_id, row.crm_id, row.label, row.first_at
        )


def _logged_any(conn: Connection, obj: str) -> bool:
    c = sync_change.c
    return conn.execute(sa.select(c.seq).where(c.object == obj).limit(1)).first() is not None


def tail_entries(conn: Connection, obj: str, limit: int) -> list[Any]:
    """The oldest ``limit`` records of ``obj`` in the log that the fold would queue:
    ``record_id, after`` (the operation), ``crm_id``, ``label``, ``first_at`` and their
    entry as it stands (``entry_*``, null without one)."""
    t = _object_tail(obj).subquery("tail")
    query = sa.select(t).where(t.c.after.is_not(None)).order_by(t.c.first_at, t.c.record_id)
    return list(conn.execute(query.limit(limit)))


def pending_records(conn: Connection, obj: str, record_ids: Iterable[int]) -> set[int]:
    """Which of ``obj``'s records have a change waiting to go to Dynamics (folded or
    not): a pending ``to_crm`` entry, or a change still in the log."""
    ids = sorted(set(record_ids))
    if not ids:
        return set()
    q, c = sync_queue.c, sync_change.c
    queued = sa.select(q.record_id).where(
        q.object == obj,
        q.direction == _TO_CRM,
        q.state == EntryState.PENDING.value,
        q.record_key.in_([str(i) for i in ids]),
    )
    logged = sa.select(c.record_id).where(c.object == obj, c.record_id.in_(ids))
    return {int(r) for (r,) in conn.execute(sa.union(queued, logged)) if r is not None}
