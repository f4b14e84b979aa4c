"""Backlog counts kept exact by triggers on ``sync_queue``, so that reading them is instant.

Counting the pending entries off ``ix_sync_queue_backlog`` costs about a full scan; the
Sync Status views, ``/metrics`` and the backlog samples must not. So row triggers on
``sync_queue`` (``store.counted``) append a row ``(object, direction, operation, n = +1
or -1)`` to ``sync_backlog_count`` whenever an entry enters the backlog, leaves it, or
moves between groups (parked entries are not backlog): every writer of the queue is
covered (capture, the worker's outcomes, pull staging, retries, plain SQL). The update
trigger names its columns, so a claim, a reschedule or a refresh of an entry's label does
not call it; the capture's upsert does name ``operation`` and ``state``, and the trigger
returns at once when they keep their values. Migration 0005 installs the triggers and
seeds the counts in the same transaction. The table has no key and no index: a counted
write adds one row at its end and nothing else.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import EntryState
from crmsync.store import counted
from crmsync.store.schema import sync_backlog_count, sync_queue

BACKLOG = counted.Counted(
    source=sync_queue,
    counts=sync_backlog_count,
    trigger="crmsync_backlog_count",
    group=("object", "direction", "operation"),
    moves=("state", "operation", "object", "direction"),
    predicate="{row}.state <> '" + EntryState.PARKED.value + "'",
)


def sqlite_ddl() -> list[str]:
    return counted.sqlite_ddl(BACKLOG)


def postgres_ddl() -> list[str]:
    return counted.postgres_ddl(BACKLOG)


def install(conn: Connection) -> None:
    counted.install(conn, BACKLOG, sync_queue.c.state != EntryState.PARKED)


def uninstall(conn: Connection) -> None:
    counted.uninstall(conn, BACKLOG)


def seed(conn: Connection) -> None:
    """Replace the counts with a count of the queue (an index scan: migration only)."""
    counted.seed(conn, BACKLOG, sync_queue.c.state != EntryState.PARKED)


def sums(direction: str | None = None, obj: str | None = None) -> sa.Subquery:
    """The count per (object, direction, operation), groups at zero left out."""
    c = sync_backlog_count.c
    where = [
        *([c.direction == direction] if direction is not None else []),
        *([c.object == obj] if obj is not None else []),
    ]
    return counted.sums(BACKLOG, *where, name="backlog_sums")


def compact(conn: Connection) -> int:
    return counted.compact(conn, BACKLOG)


def shrink(engine: Engine) -> None:
    counted.shrink(engine, BACKLOG)
