"""Pauses as the readers see them: which (object, direction) scopes ``sync_pause`` holds.

A scope's object or direction may be ``*`` (every object, both directions). These two
only read; they live below both the queue and the status queries, so that a status read
does not load the queue's writers (its dialect inserts, capture, the finishing of batches).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction
from crmsync.store.schema import sync_pause


def paused_scopes(conn: Connection) -> set[tuple[str, str]]:
    return {(r.object, r.direction) for r in conn.execute(sa.select(sync_pause))}


def is_paused(scopes: set[tuple[str, str]], obj: str, direction: Direction) -> bool:
    return any((o in ("*", obj)) and (d in ("*", direction)) for o, d in scopes)
