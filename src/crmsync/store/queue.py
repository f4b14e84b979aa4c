"""The sync queue: claiming entries under a lease, and recording what became of them.

Workers claim due entries in batches; a claim is a lease (``claimed_by`` and
``claimed_until``) committed at once, so a worker that dies leaves entries that any
worker may claim again once the lease runs out. On PostgreSQL the claim takes rows
with ``FOR UPDATE SKIP LOCKED`` so that many workers on many machines never claim the
same entry; on SQLite a write transaction serialises claims.

Every outcome is recorded in one transaction per batch: ``complete`` removes the entry
(unless its ``version`` moved in flight: it stays queued as an update), adds to the
counters and the minute's rate (those in ``store.finish``), updates the record's sync
state and resolves its open error; ``reschedule`` waits with backoff (``defer`` without
counting an attempt); ``park`` takes the entry out of the backlog with an open sync
error until a new change or a retry queues it again (a change made in flight is not
parked: it goes now).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync import diagnosis
from crmsync.domain import Direction, EntryState, ErrorStatus, EventKind, Operation
from crmsync.store import capture, finish, history, outcome_events
from crmsync.store.db import write_transaction
from crmsync.store.finish import count_synced as count_synced
from crmsync.store.pauses import is_paused as is_paused
from crmsync.store.pauses import paused_scopes as paused_scopes
from crmsync.store.schema import bucket_start as bucket_start
from crmsync.store.schema import minute_start as minute_start
from crmsync.store.schema import (
    sync_error,
    sync_pause,
    sync_queue,
    sync_record,
    sync_tombstone,
)
from crmsync.store.types import UTCDateTime, utcnow
from crmsync.values import AWAITING_PULL
from crmsync.values import Done as Done
from crmsync.values import Entry as Entry
from crmsync.values import Failed as Failed
from crmsync.values import Outcome as Outcome

# The record_key of an error about a whole object (Dynamics refused to read its table),
# not about one record: its record fields are empty.
OBJECT_KEY = "*"


def entry_columns() -> list[sa.Column[Any]]:
    """The queue's columns in ``Entry``'s field order: ``Entry(*row)`` of a row of them."""
    return [sync_queue.c[f.name] for f in fields(Entry)]


def claim(
    engine: Engine,
    worker: str,
    direction: Direction,
    objects: Sequence[str],
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
    *,
    fresh_since: datetime | None = None,
) -> list[Entry]:
    """Claim up to ``limit`` due, unclaimed (or lease-expired) entries of ``objects``;
    with ``fresh_since``, only those due since then, newest first (the push's lane for
    fresh changes, which a bulk backlog must not hold back: docs/dynamics.md).

    One statement (the pause check, the pick and the lease), so one round trip: under
    a deep backlog a worker spends most of its time here and in ``record``. A ``to_crm``
    claim first folds what capture logged since (unless another process is folding).
    """
    if not objects or limit < 1:
        return []
    postgresql = engine.dialect.name == "postgresql"
    fold = direction == Direction.TO_CRM
    if fold and not postgresql:
        capture.fold_pending(engine, wait=False, max_seconds=capture.BATCH_FOLD_SECONDS)
        fold = False
    now = now or utcnow()
    params = {
        "c_worker": worker,
        "c_direction": direction,
        "c_objects": list(objects),
        "c_limit": limit,
        "c_now": now,
        "c_until": now + lease,
    }
    if fresh_since is not None:
        params["c_fresh"] = fresh_since
    statement = _claim_statement(postgresql, fresh_since is not None)
    while True:
        with write_transaction(engine) as conn:
            if not postgresql or not _begin_claim(conn, check_log=fold):
                rows = conn.execute(statement, params)
                return sorted((Entry(*r) for r in rows), key=lambda e: e.id)
        # Changes wait in the capture log: fold them first, then claim (once).
        capture.fold_pending(engine, wait=False, max_seconds=capture.BATCH_FOLD_SECONDS)
        fold = False


def _begin_claim(conn: Connection, *, check_log: bool) -> bool:
    """Start a claim's transaction on PostgreSQL; returns whether captured changes wait
    in the log (asked only when ``check_log``), in the same round trip.

    A claim lost in a server crash is as good as a lease run out (the entries are
    claimed again; a completion does not need the claim), so its commit need not wait
    for the disk: it becomes durable with the worker's next one.
    """
    relaxed = sa.func.set_config("synchronous_commit", "off", True)
    if not check_log:
        conn.execute(sa.select(relaxed))
        return False
    return bool(conn.execute(sa.select(relaxed, capture.changes_waiting())).one()[1])


@functools.cache
def _claim_statement(skip_locked: bool, fresh: bool = False) -> sa.Update:
    """Built once: building it costs about as much as running it."""
    due, p = sync_queue.alias("due"), sync_pause.c
    direction = sa.bindparam("c_direction", type_=sa.String)
    now = sa.bindparam("c_now", type_=UTCDateTime())
    paused = sa.exists().where(
        sa.or_(p.object == "*", p.object == due.c.object),
        sa.or_(p.direction == "*", p.direction == direction),
    )
    pick = (
        sa.select(due.c.id)
        .where(
            due.c.state == EntryState.PENDING,
            due.c.direction == direction,
            due.c.next_attempt_at <= now,
            due.c.object.in_(sa.bindparam("c_objects", expanding=True)),
            sa.or_(due.c.claimed_until.is_(None), due.c.claimed_until < now),
            ~paused,
        )
        .order_by(due.c.next_attempt_at.desc() if fresh else due.c.next_attempt_at)
        .limit(sa.bindparam("c_limit", type_=sa.Integer))
    )
    if fresh:
        pick = pick.where(due.c.next_attempt_at >= sa.bindparam("c_fresh", type_=UTCDateTime()))
    if skip_locked:
        # Rows another worker is claiming right now are passed by, not waited for.
        pick = pick.with_for_update(skip_locked=True)
    q = sync_queue.c
    return (
        sa.update(sync_queue)
        .where(q.id.in_(pick.scalar_subquery()))
        .values(
            claimed_by=sa.bindparam("c_worker", type_=sa.String),
            claimed_until=sa.bindparam("c_until", type_=UTCDateTime()),
        )
        .returning(*entry_columns())
    )


def hold(conn: Connection, worker: str, entries: Sequence[Entry]) -> list[Entry]:
    """The entries still claimed by ``worker``, locked for the caller's transaction.

    A lease can run out while its batch is still being worked on (a stalled process);
    another worker may then claim the entries. Recording outcomes only for entries
    held under this lock fences the late worker off. On PostgreSQL the lock also makes
    a concurrent claim (``SKIP LOCKED``) pass the entries by; on SQLite the write
    transaction already excludes every other writer.
    """
    if not entries:
        return []
    q = sync_queue.c
    mine = (
        sa.select(q.id)
        .where(q.id.in_([e.id for e in entries]), q.claimed_by == worker)
        .order_by(q.id)  # one lock order for every worker
    )
    if conn.dialect.name == "postgresql":
        mine = mine.with_for_update()
    held = {r[0] for r in conn.execute(mine)}
    return [e for e in entries if e.id in held]


def assign_crm_id(conn: Connection, entry: Entry, crm_id: str) -> str | None:
    """Remember the Dynamics id chosen for an insert before it is sent (idempotence).

    Returns the id the entry holds now, which is another worker's choice if it got
    there first (it claimed the entry after this worker's lease ran out), or None if
    the entry is gone (that worker finished it). The row stays locked until the
    caller's transaction ends, so the two never disagree.
    """
    q = sync_queue.c
    stored = conn.execute(
        sa.update(sync_queue)
        .where(q.id == entry.id)
        .values(crm_id=sa.func.coalesce(q.crm_id, crm_id))
        .returning(q.crm_id)
    ).scalar()
    return None if stored is None else str(stored)


def release(engine: Engine, worker: str, ids: Sequence[int] | None = None) -> int:
    """Give back every claim of ``worker`` (graceful shutdown), or only those of the
    entries ``ids`` (one batch, while the worker's other lanes go on)."""
    q = sync_queue.c
    where = [q.claimed_by == worker, *([q.id.in_(list(ids))] if ids is not None else [])]
    with write_transaction(engine) as conn:
        res = conn.execute(
            sa.update(sync_queue).where(*where).values(claimed_by=None, claimed_until=None)
        )
    return res.rowcount


def record(engine: Engine, outcome: Outcome, now: datetime | None = None) -> None:
    """Record a batch's outcomes in one transaction."""
    now = now or utcnow()
    with write_transaction(engine) as conn:
        record_in(conn, outcome, now)


def record_in(conn: Connection, outcome: Outcome, now: datetime) -> None:
    """``record`` in the caller's transaction, with the batch's events (``history``)."""
    on = history.enabled()
    events = outcome_events.sent(outcome, now) if on else []
    for failure in outcome.failed:
        if failure.retry_at is None and not _park(conn, failure, now):
            # A newer change came in while this one was in flight: it goes now.
            failure = replace(failure, retry_at=now)
        elif failure.retry_at is not None:
            _reschedule(conn, failure, now)
        if on:
            events += outcome_events.failure(failure, now)
    if on:
        events += outcome_events.stale(outcome.stale, now)
    for entry, until in outcome.deferred:
        conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.id == entry.id)
            .values(next_attempt_at=until, claimed_by=None, claimed_until=None)
        )
    # Last: it adds to the throughput counters, rows every worker writes, so their
    # locks are held for as short a time as the transaction allows.
    history.write(conn, _complete(conn, outcome.done, now, events))


def _complete(
    conn: Connection, done: Sequence[Done], now: datetime, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Finish a batch in a handful of statements, whatever its size (on PostgreSQL one,
    unless records' sync state is kept or a change came in while in flight).

    Every entry's record has its open error looked up, even an entry that never failed:
    its record may have an error left by an earlier entry that was dropped without
    syncing (a push made moot by a pull, a record excluded by the sync filter). Takes
    the batch's other ``events``; returns those left for the caller to write (on
    PostgreSQL none: the finishing statement writes them, ``synced`` and ``resolved``
    included, saving the batch a round trip).
    """
    if not done:
        return events
    _remember_syncs(conn, done, now)
    counts: dict[tuple[str, str, str], int] = {}
    for d in done:
        if d.counted:
            key = (d.entry.object, d.entry.direction, d.entry.operation)
            counts[key] = counts.get(key, 0) + 1
    if history.enabled():
        events = [*events, *(outcome_events.synced(d, now) for d in done)]
    if conn.dialect.name == "postgresql":
        gone = finish.finish_postgresql(conn, done, counts, now, events)
        events = []
    else:
        gone, resolved = finish.finish_portable(conn, done, counts, now)
        events += outcome_events.resolved(resolved, now)
    stayed = [d for d in done if d.entry.id not in gone]
    if not stayed:
        return events
    # A newer change came in while this one was in flight: it stays queued, now as an
    # update.
    q = sync_queue.c
    conn.execute(
        sa.update(sync_queue)
        .where(q.id == sa.bindparam("entry_id"))
        .values(
            claimed_by=None,
            claimed_until=None,
            attempts=0,
            next_attempt_at=now,
            crm_id=sa.func.coalesce(q.crm_id, sa.bindparam("new_crm_id")),
            operation=sa.case(
                (q.operation == Operation.INSERT, Operation.UPDATE), else_=q.operation
            ),
        ),
        [{"entry_id": d.entry.id, "new_crm_id": d.crm_id} for d in stayed],
    )
    return events


def resolve(conn: Connection, keys: set[tuple[str, str, str]], now: datetime) -> None:
    """Resolve the open errors of ``(object, direction, record_key)``s that synced, or
    whose waiting change was dropped as having nothing left to do, with their
    ``resolved`` events."""
    history.write(conn, outcome_events.resolved(finish.resolve_errors(conn, keys, now), now))


def _remember_syncs(conn: Connection, done: Sequence[Done], now: datetime) -> None:
    """Replace each synced record's sync state (removed for deletes)."""
    latest: dict[tuple[str, int], Done] = {}
    for d in done:
        record_id = d.record_id if d.record_id is not None else d.entry.record_id
        if record_id is not None and d.remember:
            latest[(d.entry.object, record_id)] = d
    if not latest:
        return
    r = sync_record.c
    gone = [key for key, d in latest.items() if d.entry.operation == Operation.DELETE]
    if gone:
        conn.execute(sa.delete(sync_record).where(sa.tuple_(r.object, r.record_id).in_(gone)))
        _bury(conn, [d for key, d in latest.items() if key in set(gone)], now)
    rows = [
        {
            "object": obj,
            "record_id": record_id,
            "crm_id": d.crm_id or d.entry.crm_id,
            "etag": d.etag,
            "crm_version": d.crm_version,
            "crm_modified_at": d.crm_modified_at,
            "last_synced_at": now,
            "synced_values": d.synced_values or {},
        }
        for (obj, record_id), d in latest.items()
        if d.entry.operation != Operation.DELETE
    ]
    if rows:
        # An upsert: a push and an apply of the same record may finish at the same time
        # in two workers; delete-then-insert would have the later one fail on the key.
        insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_record)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["object", "record_id"],
                set_={
                    c: insert.excluded[c]
                    for c in (
                        "crm_id",
                        "etag",
                        "crm_version",
                        "crm_modified_at",
                        "last_synced_at",
                        "synced_values",
                    )
                },
            ),
            rows,
        )


def _bury(conn: Connection, deleted: Sequence[Done], now: datetime) -> None:
    """Remember the Dynamics ids of deleted records (``sync_tombstone``), so that a change
    read from Dynamics before the delete never inserts the record again."""
    rows = {
        (d.entry.object, str(crm_id).lower()): {
            "object": d.entry.object,
            "crm_id": str(crm_id).lower(),
            "deleted_at": now,
        }
        for d in deleted
        # Only deletes carried out (counted): a skipped one (an excluded record's) left
        # the record in Dynamics, to come back if the filter includes it again.
        if d.counted and (crm_id := d.crm_id or d.entry.crm_id)
    }
    if not rows:
        return
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_tombstone)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["object", "crm_id"], set_={"deleted_at": insert.excluded.deleted_at}
        ),
        sorted(rows.values(), key=lambda row: (row["object"], row["crm_id"])),
    )


def _reschedule(conn: Connection, f: Failed, now: datetime) -> None:
    q = sync_queue.c
    conn.execute(
        sa.update(sync_queue)
        .where(q.id == f.entry.id)
        .values(
            attempts=q.attempts + 1,
            next_attempt_at=f.retry_at,
            claimed_by=None,
            claimed_until=None,
            last_error_code=f.code,
            last_error_message=f.message,
        )
    )


def _park(conn: Connection, f: Failed, now: datetime) -> bool:
    """Park the entry with an open error; returns whether it was parked. A newer change
    that came in while the failed one was in flight (its ``version`` moved) is not
    parked behind the older one's failure (it may be the fix): it stays due now, its
    attempts starting over, and the error stays open until it syncs or fails."""
    e, q = f.entry, sync_queue.c
    same = q.version == e.version
    state = conn.execute(
        sa.update(sync_queue)
        .where(q.id == e.id)
        .values(
            state=sa.case((same, EntryState.PARKED), else_=EntryState.PENDING),
            attempts=sa.case((same, q.attempts + 1), else_=0),
            next_attempt_at=sa.case((same, q.next_attempt_at), else_=now),
            claimed_by=None,
            claimed_until=None,
            last_error_code=f.code,
            last_error_message=f.message,
        )
        .returning(q.state)
    ).scalar()
    parked = state != EntryState.PENDING
    values = {
        "record_id": e.record_id,
        "crm_id": e.crm_id,
        "record_label": e.label,
        "operation": e.operation,
        "error_code": f.code,
        "error_message": f.message,
        "last_failed_at": now,
        "field": f.field,
        "category": diagnosis.category_of(f.code, f.message),
        "retry_at": f.auto_retry_at if parked else None,
    }
    _open_error(conn, (e.object, e.direction, e.record_key), values, e.attempts + 1, now)
    return parked


def _open_error(
    conn: Connection,
    key: tuple[str, str, str],
    values: dict[str, Any],
    attempts: int,
    now: datetime,
) -> None:
    """Add an open error for ``(object, direction, record_key)``, or update the open one."""
    err = sync_error.c
    obj, direction, record_key = key
    open_error = conn.execute(
        sa.select(err.id).where(
            err.object == obj,
            err.direction == direction,
            err.record_key == record_key,
            err.status == ErrorStatus.OPEN,
        )
    ).scalar()
    if open_error is None:
        conn.execute(
            sa.insert(sync_error).values(
                object=obj,
                direction=direction,
                record_key=record_key,
                first_failed_at=now,
                attempts=attempts,
                status=ErrorStatus.OPEN,
                **values,
            )
        )
    else:
        conn.execute(
            sa.update(sync_error)
            .where(err.id == open_error)
            .values(attempts=err.attempts + 1, **values)
        )


def fail_object(
    conn: Connection, obj: str, direction: Direction, code: str, message: str, now: datetime
) -> None:
    """Record that a whole object failed to sync in ``direction`` (one open error per
    object and direction, its attempts counting the failed tries)."""
    values = {
        "record_id": None,
        "crm_id": None,
        "record_label": None,
        # The contract's operations are per record; reading changes is an update of
        # what the store holds.
        "operation": Operation.UPDATE,
        "error_code": code,
        "error_message": message,
        "last_failed_at": now,
        "field": None,
        "category": diagnosis.category_of(code, message),
        "retry_at": None,  # the object's next read tries again
    }
    _open_error(conn, (obj, direction, OBJECT_KEY), values, 1, now)
    failed = history.event(
        obj,
        OBJECT_KEY,
        EventKind.FAILED,
        now,
        direction=direction,
        error_code=code,
        error_message=message,
    )
    history.write(conn, [failed])


def resolve_object(conn: Connection, obj: str, direction: Direction, now: datetime) -> None:
    """The object synced again: its whole-object error, if any, is resolved."""
    err = sync_error.c
    resolved = conn.execute(
        sa.update(sync_error)
        .where(
            err.status == ErrorStatus.OPEN,
            err.object == obj,
            err.direction == direction,
            err.record_key == OBJECT_KEY,
        )
        .values(status=ErrorStatus.RESOLVED, resolved_at=now, retry_at=None)
    ).rowcount
    if resolved:
        history.write(conn, outcome_events.resolved([(obj, direction, OBJECT_KEY, None)], now))


def next_due(
    engine: Engine, direction: Direction, objects: list[str], worker: str
) -> datetime | None:
    """When the earliest waiting entry that this worker could send falls due.

    Entries this worker has in flight count as due now: their batch is about to finish
    (or fail and be rescheduled), so the caller should look again shortly.
    """
    with engine.connect() as conn:
        scopes = paused_scopes(conn)
        wanted = [o for o in objects if not is_paused(scopes, o, direction)]
        if not wanted:
            return None
        if direction == Direction.TO_CRM and capture.has_changes(conn):
            return utcnow()  # local changes logged, to be folded by the next claim
        q = sync_queue.c
        # Pushes held for a paused pull wait for the resume, not for a time.
        held = [o for o in wanted if is_paused(scopes, o, Direction.FROM_CRM)]
        waiting = (
            q.object.in_(held)
            & (q.operation == Operation.UPDATE)
            & (sa.func.coalesce(q.last_error_code, "") == AWAITING_PULL)
        )
        return conn.execute(
            sa.select(
                sa.func.min(
                    sa.case(
                        (q.claimed_by == worker, q.next_attempt_at),
                        else_=sa.func.coalesce(q.claimed_until, q.next_attempt_at),
                    )
                )
            ).where(
                q.state == EntryState.PENDING,
                q.direction == direction,
                q.object.in_(wanted),
                *([~waiting] if held and direction == Direction.TO_CRM else []),
            )
        ).scalar()
