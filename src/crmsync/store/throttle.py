"""Until when Dynamics told a credential to wait, shared by every process on the store.

Dataverse keeps its service protection limits per user (api-limits.md): one worker's
429 means every worker using that application user must wait out ``Retry-After``,
whichever machine it runs on. The instant is UTC wall time (each process converts it to
its own monotonic clock) and only ever moves later, so concurrent writers need no
coordination beyond one conditional upsert.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.store.db import write_transaction
from crmsync.store.schema import dynamics_throttle


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


def read(engine: Engine, credential: str) -> datetime | None:
    """``throttled_until`` on a connection of its own (a worker's poll)."""
    with engine.connect() as conn:
        return throttled_until(conn, credential)
