"""Periodic upkeep of the capture log and the status tables, by the processes that
write anyway (workers, ``crmsync serve``); safe to run from several at once.

- ``compact_counts``, every ``COMPACT_SECONDS``: folds the capture log (up to
  ``FOLD_SECONDS``, unless another process is folding) and the backlog's +1/-1 count
  rows into one per group (``store.backlog_counts``), so reads stay a few dozen rows;
  the open errors' counts likewise (``store.error_counts``).
- ``retry_due``: the workers' automatic retries of parked passing failures.
- ``maintain``, every poll or ops round, does the rest once per 15-minute bucket: one
  backlog sample per (object, direction) for the trend (kept ``SAMPLE_DAYS`` days);
  ``sync_throughput`` retention: 15-minute buckets for ``FINE_DAYS`` days (every clock
  hour of every zone, +05:30 and +05:45 included, sums exactly), then one row per UTC
  hour (sums unchanged), deleted after ``KEEP_DAYS`` days; ``sync_rate``'s minutes (the
  time to drain reads the last few) deleted after ``RATE_KEEP``; sync history older than
  ``CRMSYNC_HISTORY_RETENTION_DAYS`` (``store.history.prune``, in bounded chunks).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.mapping import active
from crmsync.store import (
    backlog_counts,
    capture,
    error_counts,
    history,
    planner_stats,
    sessions,
    sync_errors,
)
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.queue import bucket_start
from crmsync.store.schema import sync_backlog_sample, sync_rate, sync_throughput, sync_tombstone
from crmsync.store.status import DIRECTIONS, backlog_groups
from crmsync.store.types import utcnow

FINE_DAYS = 8
KEEP_DAYS = 90
SAMPLE_DAYS = 2
# Well beyond the time to drain's window (store.drain.WINDOW), so that ``at=`` a little
# in the past still finds its minutes.
RATE_KEEP = timedelta(hours=1)
HOUR = timedelta(hours=1)
# How often long-running processes fold the capture log and the backlog counts.
COMPACT_SECONDS = 5.0
# How long one round of upkeep folds the capture log (the rest waits for the next), and
# on SQLite how long it lets other writers in between two batches.
FOLD_SECONDS = 1.0
FOLD_PAUSE_SECONDS = 0.15
# A fold of this many rows is followed by a vacuum of the counts (PostgreSQL).
SHRINK_ROWS = 10_000


@dataclass(frozen=True)
class Maintained:
    """What one ``maintain`` call did (``sampled`` False: already done in this bucket)."""

    sampled: bool
    compacted_hours: int = 0
    pruned_rows: int = 0
    folded_counts: int = 0


def _upsert_throughput(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Insert throughput rows, replacing ``synced`` of any row already at the same key."""
    if not rows:
        return
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_throughput)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["bucket_start", "object", "direction", "operation"],
            set_={"synced": insert.excluded.synced},
        ),
        rows,
    )


def backlog_totals(engine: Engine) -> dict[tuple[str, str], int]:
    """The backlog per (object, direction), zeros included, from one read snapshot."""
    # Zeros included: a missing sample means "not sampled", not "empty".
    totals = {(o, d): 0 for o in active() for d in DIRECTIONS}
    with read_transaction(engine) as conn:
        for g in backlog_groups(conn):
            totals[(g.object, g.direction)] = totals.get((g.object, g.direction), 0) + g.count
    return totals


def sample_backlog(conn: Connection, now: datetime, totals: dict[tuple[str, str], int]) -> bool:
    """Record ``totals`` (the backlog per (object, direction)) in ``now``'s bucket, once
    per bucket."""
    s = sync_backlog_sample.c
    start = bucket_start(now)
    done = conn.execute(sa.select(sa.literal(1)).where(s.sampled_at == start).limit(1)).first()
    if done is not None:
        return False
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(
        sync_backlog_sample
    )
    # Another process may sample the same bucket at the same moment: first one wins.
    conn.execute(
        insert.on_conflict_do_nothing(index_elements=["sampled_at", "object", "direction"]),
        [
            {"sampled_at": start, "object": o, "direction": d, "backlog": n}
            for (o, d), n in sorted(totals.items())
        ],
    )
    return True


def compact(conn: Connection, now: datetime) -> int:
    """Fold 15-minute buckets older than ``FINE_DAYS`` into UTC hours; hours rewritten."""
    t = sync_throughput.c
    cutoff = bucket_start(now - timedelta(days=FINE_DAYS)).replace(minute=0)
    rows = conn.execute(
        sa.select(t.bucket_start, t.object, t.direction, t.operation, t.synced).where(
            t.bucket_start < cutoff,
            t.bucket_start >= now - timedelta(days=KEEP_DAYS),
        )
    ).all()
    sums: dict[datetime, dict[tuple[str, str, str], int]] = defaultdict(lambda: defaultdict(int))
    fine: set[datetime] = set()
    for start, obj, direction, operation, n in rows:
        hour = start.replace(minute=0, second=0, microsecond=0)
        sums[hour][(obj, direction, operation)] += int(n)
        if start != hour:
            fine.add(hour)
    for hour in sorted(fine):
        conn.execute(
            sa.delete(sync_throughput).where(t.bucket_start >= hour, t.bucket_start < hour + HOUR)
        )
        _upsert_throughput(
            conn,
            [
                {"bucket_start": hour, "object": o, "direction": d, "operation": op, "synced": n}
                for (o, d, op), n in sorted(sums[hour].items())
            ],
        )
    return len(fine)


def prune(conn: Connection, now: datetime) -> int:
    """Delete counters and tombstones older than ``KEEP_DAYS``, rate minutes older than
    ``RATE_KEEP``, backlog samples older than ``SAMPLE_DAYS`` and logged-out sessions
    whose cookies have expired."""
    t = sync_throughput.c
    old_counts = conn.execute(
        sa.delete(sync_throughput).where(t.bucket_start < now - timedelta(days=KEEP_DAYS))
    ).rowcount
    old_samples = conn.execute(
        sa.delete(sync_backlog_sample).where(
            sync_backlog_sample.c.sampled_at < now - timedelta(days=SAMPLE_DAYS)
        )
    ).rowcount
    old_tombstones = conn.execute(
        sa.delete(sync_tombstone).where(
            sync_tombstone.c.deleted_at < now - timedelta(days=KEEP_DAYS)
        )
    ).rowcount
    old_minutes = conn.execute(
        sa.delete(sync_rate).where(sync_rate.c.minute_start < now - RATE_KEEP)
    ).rowcount
    pruned = int(old_counts) + int(old_samples) + int(old_tombstones) + int(old_minutes)
    return pruned + sessions.prune(conn, now)


def compact_counts(engine: Engine) -> int:
    """Fold the capture log (for up to ``FOLD_SECONDS``, unless another process is
    folding) and the backlog counts (a short write transaction of its own); after a fold
    of many rows (a bulk load or drain), shrink PostgreSQL's table, which reads scan
    whole. On PostgreSQL, also vacuum the capture log once folding has left it many
    dead rows, and analyse those of crmsync's tables whose statistics a bulk change
    has outgrown (``planner_stats``). Readers never fold: this is where a process
    without a worker (``crmsync serve``) keeps the log's unfolded tail short, and so
    the backlog's reads cheap."""
    # SQLite has one writer: a pause between batches lets the application's writers,
    # waiting in their busy handler, in (it retries every 100 ms at most).
    pause = FOLD_PAUSE_SECONDS if engine.dialect.name == "sqlite" else 0.0
    capture.fold_pending(engine, wait=False, max_seconds=FOLD_SECONDS, pause=pause)
    with write_transaction(engine) as conn:
        folded = backlog_counts.compact(conn)
        errors_folded = error_counts.compact(conn)
    if folded >= SHRINK_ROWS and engine.dialect.name == "postgresql":
        backlog_counts.shrink(engine)
    if errors_folded >= SHRINK_ROWS and engine.dialect.name == "postgresql":
        error_counts.shrink(engine)
    capture.shrink(engine)
    planner_stats.refresh(engine)
    return folded


def retry_due(engine: Engine, now: datetime | None = None) -> int:
    """Queue again the parked records whose automatic retry is due (``sync_errors.
    retry_due``), a batch per call; the workers call it with their upkeep."""
    with write_transaction(engine) as conn:
        return sync_errors.retry_due(conn, now or utcnow())


def maintain(engine: Engine, now: datetime | None = None) -> Maintained:
    """Fold the backlog counts; sample the backlog, compact and prune throughput once per
    15-minute bucket."""
    now = now or utcnow()
    folded = compact_counts(engine)
    s = sync_backlog_sample.c
    with engine.connect() as conn:
        done = conn.execute(
            sa.select(sa.literal(1)).where(s.sampled_at == bucket_start(now)).limit(1)
        ).first()
    if done is not None:
        return Maintained(sampled=False, folded_counts=folded)
    totals = backlog_totals(engine)
    with write_transaction(engine) as conn:
        if not sample_backlog(conn, now, totals):
            return Maintained(sampled=False, folded_counts=folded)
        compacted, pruned = compact(conn, now), prune(conn, now)
    # In chunks of their own: a long history must not hold the write lock for long.
    pruned += history.prune(engine, now)
    return Maintained(
        sampled=True, compacted_hours=compacted, pruned_rows=pruned, folded_counts=folded
    )
