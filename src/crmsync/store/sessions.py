"""Console sessions ended by a logout: recorded so that every console process refuses
a copy of the cookie, and pruned once the cookie would have expired anyway."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.store.schema import console_session_revoked

_c = console_session_revoked.c


def revoke(conn: Connection, session_id: str, expires_at: datetime) -> None:
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(
        console_session_revoked
    )
    conn.execute(
        insert.values(session_id=session_id, expires_at=expires_at).on_conflict_do_nothing()
    )


def revoked(conn: Connection, now: datetime) -> dict[str, datetime]:
    """The sessions logged out whose cookies have not yet expired, with that expiry."""
    rows = conn.execute(sa.select(_c.session_id, _c.expires_at).where(_c.expires_at > now))
    return {r.session_id: r.expires_at for r in rows}


def prune(conn: Connection, now: datetime) -> int:
    return int(
        conn.execute(sa.delete(console_session_revoked).where(_c.expires_at <= now)).rowcount
    )
