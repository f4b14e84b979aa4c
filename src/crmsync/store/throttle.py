"""Dynamics' service protection limits of a credential, shared by every process on the
store: until when Dynamics told it to wait, and the execution time each process spent.

Dataverse keeps its service protection limits per user (api-limits.md): one worker's
429 means every worker using that application user must wait out ``Retry-After``,
whichever machine it runs on. The instant is UTC wall time (each process converts it to
its own monotonic clock) and only ever moves later, so concurrent writers need no
coordination beyond one conditional upsert.

The execution time budget (1,200 s per 5 minutes) is the user's too: each process
writes what its requests spent over the window and its pacing share (its own row, so
writers never conflict) and reads the others' rows that are fresh (``SPEND_STALE``; an
older row is a process that is gone, deleted after ``SPEND_KEEP``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.store.db import write_transaction
from crmsync.store.schema import dynamics_spend, dynamics_throttle
from crmsync.values import Others

SPEND_STALE = timedelta(seconds=15)
SPEND_KEEP = timedelta(minutes=10)


def credential_key(dynamics_url: str | None, tenant_id: str | None, client_id: str | None) -> str:
    """A stable name for one application user in one environment, safe to store and
    show: a hash of public identifiers, never the secret or a token."""
    parts = [(dynamics_url or "").rstrip("/").lower(), tenant_id or "", client_id or ""]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def record(conn: Connection, credential: str, until: datetime, now: datetime) -> bool:
    """Move the credential's instant to ``until`` unless it is already later; True if it
    moved. One statement, atomic under concurrent writers on both backends (PostgreSQL
    re-checks the condition on the locked row; SQLite has one writer)."""
    t = dynamics_throttle
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(t)
    statement = insert.values(credential=credential, throttled_until=until, updated_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=[t.c.credential],
        set_={"throttled_until": insert.excluded.throttled_until, "updated_at": now},
        where=t.c.throttled_until < insert.excluded.throttled_until,
    )
    # RETURNING rather than rowcount: psycopg counts a conflict left alone as a row.
    return conn.execute(statement.returning(t.c.credential)).first() is not None


def throttled_until(conn: Connection, credential: str) -> datetime | None:
    """The credential's instant (past ones included), by primary key."""
    t = dynamics_throttle.c
    value: datetime | None = conn.execute(
        sa.select(t.throttled_until).where(t.credential == credential)
    ).scalar()
    return value


def latest(conn: Connection) -> datetime | None:
    """The latest instant of any credential, for operators (``/healthz``, ``/metrics``)."""
    value: datetime | None = conn.execute(
        sa.select(sa.func.max(dynamics_throttle.c.throttled_until))
    ).scalar()
    return value


def publish(engine: Engine, credential: str, until: datetime, now: datetime) -> bool:
    """``record`` in a transaction of its own (a worker's 429, told to the others)."""
    with write_transaction(engine) as conn:
        return record(conn, credential, until, now)


def poll(
    engine: Engine, credential: str, process: str, now: datetime
) -> tuple[datetime | None, Others]:
    """A worker's poll, on a connection of its own (a read: never waits for a writer):
    the credential's instant and the other live processes' spending."""
    with engine.connect() as conn:
        return throttled_until(conn, credential), others_spent(conn, credential, process, now)


def tell(
    engine: Engine,
    credential: str,
    process: str,
    spent_ms: float,
    share: float,
    now: Callable[[], datetime],
) -> None:
    """``record_spend`` in a transaction of its own, timed when it got the write lock
    (on SQLite it may wait for the application's writers)."""
    with write_transaction(engine) as conn:
        record_spend(conn, credential, process, spent_ms, share, now())


def record_spend(
    conn: Connection, credential: str, process: str, spent_ms: float, share: float, now: datetime
) -> None:
    """Set this process's spending and pacing share; drop the rows of processes long
    gone."""
    t = dynamics_spend
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(t)
    values = {"spent_ms": max(0.0, float(spent_ms)), "share": float(share), "updated_at": now}
    conn.execute(
        insert.values(credential=credential, process=process, **values).on_conflict_do_update(
            index_elements=[t.c.credential, t.c.process], set_=values
        )
    )
    conn.execute(
        sa.delete(t).where(t.c.credential == credential, t.c.updated_at < now - SPEND_KEEP)
    )


def others_spent(conn: Connection, credential: str, process: str, now: datetime) -> Others:
    """The other live processes' spending over the window (rows fresher than
    ``SPEND_STALE``)."""
    t = dynamics_spend.c
    count, spent, share = conn.execute(
        sa.select(sa.func.count(), sa.func.sum(t.spent_ms), sa.func.min(t.share)).where(
            t.credential == credential, t.process != process, t.updated_at >= now - SPEND_STALE
        )
    ).one()
    return Others(int(count), float(spent or 0.0), 1.0 if share is None else float(share))
