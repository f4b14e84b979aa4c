"""Finishing a batch of done entries: the finished entries leave the queue, their records'
open errors are resolved and the throughput counters and the minute's rate add them up.

On PostgreSQL one statement does it all (``finish_postgresql``: writing CTEs over the
batch's arrays, the batch's history events included), one round trip per batch; on
SQLite, which allows no writes in a ``WITH``, ``finish_portable`` takes three. An entry
whose ``version`` moved in flight is not removed: the caller keeps it queued. Counters
are upserts that add up, taken in key order: many workers finish batches into the same
bucket and minute at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.domain import Direction, ErrorStatus, EventKind
from crmsync.store import history
from crmsync.store.history import OBJECT_KEY
from crmsync.store.pgarrays import unnest as _unnest
from crmsync.store.schema import (
    bucket_start,
    minute_start,
    sync_error,
    sync_event,
    sync_queue,
    sync_rate,
    sync_throughput,
)
from crmsync.store.types import UTCDateTime
from crmsync.values import Done


def finish_postgresql(
    conn: Connection,
    done: Sequence[Done],
    counts: dict[tuple[str, str, str], int],
    now: datetime,
    events: Sequence[dict[str, Any]],
) -> set[int]:
    """Remove the finished entries, resolve their records' errors, add to the counters
    and write the batch's ``events`` and the resolutions' (with history on), in one
    statement (one round trip); returns the removed ids."""
    keys = sorted(counts)  # one lock order on the counters for every worker
    rates = _rates(counts)
    params = {
        "finished_id": [d.entry.id for d in done],
        "finished_version": [d.entry.version for d in done],
        "finished_object": [d.entry.object for d in done],
        "finished_direction": [d.entry.direction for d in done],
        "finished_record_key": [d.entry.record_key for d in done],
        "resolved_at": now,
        "added_bucket_start": bucket_start(now),
        "added_object": [k[0] for k in keys],
        "added_direction": [k[1] for k in keys],
        "added_operation": [k[2] for k in keys],
        "added_synced": [counts[k] for k in keys],
        "rate_minute_start": minute_start(now),
        "rate_object": [k[0] for k in rates],
        "rate_direction": [k[1] for k in rates],
        "rate_synced": list(rates.values()),
    }
    on = history.enabled()
    if on:
        params["history_events"] = history.as_json(events)
    return {r[0] for r in conn.execute(_finish_statement(on), params)}


@functools.cache
def _finish_statement(with_history: bool) -> sa.Select[Any]:
    q, err = sync_queue.c, sync_error.c
    finished = _unnest(
        "finished",
        id=sa.BigInteger,
        version=sa.Integer,
        object=sa.String,
        direction=sa.String,
        record_key=sa.String,
    )
    # Removed only if no newer change came in while this one was in flight.
    gone = (
        sa.delete(sync_queue)
        .where(q.id == finished.c.id, q.version == finished.c.version)
        .returning(q.id)
        .cte("gone")
    )
    synced = sa.select(finished.c.object, finished.c.direction, finished.c.record_key)
    resolving = (
        sa.update(sync_error)
        .where(
            err.status == ErrorStatus.OPEN,
            sa.tuple_(err.object, err.direction, err.record_key).in_(synced),
        )
        .values(
            status=ErrorStatus.RESOLVED,
            resolved_at=sa.bindparam("resolved_at", type_=UTCDateTime()),
            retry_at=None,
        )
    )
    if with_history:  # the resolutions are read back for their events
        resolving = resolving.returning(err.object, err.direction, err.record_key, err.record_id)
    resolved = resolving.cte("resolved")
    added = _unnest(
        "added", object=sa.String, direction=sa.String, operation=sa.String, synced=sa.BigInteger
    )
    counted = _add_to_counters(
        pg_insert(sync_throughput).from_select(
            ["bucket_start", "object", "direction", "operation", "synced"],
            sa.select(sa.bindparam("added_bucket_start", type_=UTCDateTime()), *added.c),
        )
    ).cte("counted")
    rate = _unnest("rate", object=sa.String, direction=sa.String, synced=sa.BigInteger)
    paced = _add_to_rate(
        pg_insert(sync_rate).from_select(
            [
                "minute_start",
                "object",
                "direction",
                "synced",
                "first_synced_at",
                "last_synced_at",
                "first_batch",
            ],
            sa.select(
                sa.bindparam("rate_minute_start", type_=UTCDateTime()),
                rate.c.object,
                rate.c.direction,
                rate.c.synced,
                sa.bindparam("resolved_at", type_=UTCDateTime()),
                sa.bindparam("resolved_at", type_=UTCDateTime()),
                rate.c.synced,
            ),
        )
    ).cte("paced")
    if not with_history:
        return sa.select(gone.c.id).add_cte(resolved, counted, paced)
    logged = (
        history.insert_json(sa.bindparam("history_events", type_=sa.String))
        .returning(sync_event.c.id)
        .cte("logged")
    )
    # Read by ``settled``, so that the batch's events get their ids first: the data-
    # changing parts of one statement otherwise run in no set order.
    after_logged = sa.select(sa.func.count()).select_from(logged).scalar_subquery() >= 0
    # The resolutions' events, keyed as ``outcome_events.resolved`` keys them.
    key = sa.case(
        (resolved.c.record_id.is_not(None), sa.cast(resolved.c.record_id, sa.String)),
        (resolved.c.direction == Direction.FROM_CRM, sa.func.lower(resolved.c.record_key)),
        else_=sa.literal(OBJECT_KEY),
    )
    settled = (
        sa.insert(sync_event)
        .from_select(
            ["object", "record_key", "at", "event", "direction"],
            sa.select(
                resolved.c.object,
                key,
                sa.bindparam("resolved_at", type_=UTCDateTime()),
                sa.literal(str(EventKind.RESOLVED)),
                resolved.c.direction,
            ).where(after_logged),
        )
        .cte("settled")
    )
    return sa.select(gone.c.id).add_cte(resolved, counted, paced, logged, settled)


def finish_portable(
    conn: Connection, done: Sequence[Done], counts: dict[tuple[str, str, str], int], now: datetime
) -> tuple[set[int], list[tuple[str, str, str, int | None]]]:
    """``finish_postgresql`` in three statements, for SQLite (no writes in a ``WITH``)."""
    q = sync_queue.c
    gone = set(
        conn.execute(
            sa.delete(sync_queue)
            .where(sa.tuple_(q.id, q.version).in_([(d.entry.id, d.entry.version) for d in done]))
            .returning(q.id)
        ).scalars()
    )
    resolved = resolve_errors(
        conn, {(d.entry.object, d.entry.direction, d.entry.record_key) for d in done}, now
    )
    count_synced(conn, counts, now)
    return gone, resolved


def resolve_errors(
    conn: Connection, keys: set[tuple[str, str, str]], now: datetime
) -> list[tuple[str, str, str, int | None]]:
    if not keys:
        return []
    err = sync_error.c
    rows = conn.execute(
        sa.update(sync_error)
        .where(
            err.status == ErrorStatus.OPEN,
            sa.tuple_(err.object, err.direction, err.record_key).in_(sorted(keys)),
        )
        .values(status=ErrorStatus.RESOLVED, resolved_at=now, retry_at=None)
        .returning(err.object, err.direction, err.record_key, err.record_id)
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def count_synced(conn: Connection, counts: dict[tuple[str, str, str], int], now: datetime) -> None:
    """Add to the throughput counters: ``(object, direction, operation) -> records``."""
    if not counts:
        return
    start = bucket_start(now)
    rows = [
        {"bucket_start": start, "object": o, "direction": d, "operation": op, "synced": n}
        for (o, d, op), n in sorted(counts.items())
    ]
    conn.execute(_counter_upsert(conn.dialect.name), rows)
    minute = minute_start(now)
    rate_rows = [
        {
            "minute_start": minute,
            "object": o,
            "direction": d,
            "synced": n,
            "first_synced_at": now,
            "last_synced_at": now,
            "first_batch": n,
        }
        for (o, d), n in _rates(counts).items()
    ]
    if rate_rows:
        conn.execute(_rate_upsert(conn.dialect.name), rate_rows)


# Built once per dialect: these run for every finished batch.
@functools.cache
def _counter_upsert(dialect: str) -> Any:
    return _add_to_counters(
        (pg_insert if dialect == "postgresql" else sqlite_insert)(sync_throughput)
    )


@functools.cache
def _rate_upsert(dialect: str) -> Any:
    return _add_to_rate((pg_insert if dialect == "postgresql" else sqlite_insert)(sync_rate))


def _rates(counts: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], int]:
    """The throughput counts summed per (object, direction), in key order (the lock order
    on ``sync_rate`` of every worker), zeros left out."""
    rates: dict[tuple[str, str], int] = {}
    for (o, d, _), n in sorted(counts.items()):
        if n > 0:
            rates[(o, d)] = rates.get((o, d), 0) + n
    return rates


def _add_to_rate(insert: Any) -> Any:
    # Several workers finish batches in the same minute: the counts add up, the first and
    # last sync widen, and the first batch is the one that finished first (its records
    # were sent before the minute's first sync, so the rate leaves them out).
    r = sync_rate.c
    postgresql = isinstance(insert, PgInsert)
    earliest = sa.func.least if postgresql else sa.func.min
    latest = sa.func.greatest if postgresql else sa.func.max
    return insert.on_conflict_do_update(
        index_elements=["minute_start", "object", "direction"],
        set_={
            "synced": r.synced + insert.excluded.synced,
            "first_batch": sa.case(
                (insert.excluded.first_synced_at < r.first_synced_at, insert.excluded.first_batch),
                else_=r.first_batch,
            ),
            "first_synced_at": earliest(r.first_synced_at, insert.excluded.first_synced_at),
            "last_synced_at": latest(r.last_synced_at, insert.excluded.last_synced_at),
        },
    )


def _add_to_counters(insert: Any) -> Any:
    # Concurrent workers add to the same bucket: an upsert, never update-then-insert.
    return insert.on_conflict_do_update(
        index_elements=["bucket_start", "object", "direction", "operation"],
        set_={"synced": sync_throughput.c.synced + insert.excluded.synced},
    )
