"""At a worker's start: the mapping against the environment's metadata.

The same comparison as ``crmsync mapping check``. An object with a mismatch that every
request of it would hit (its table or a column gone, another type, change tracking off
or its own sync filter missing for an object that pulls) is paused with the reason and
one sync error, like a mismatch found while syncing; the other objects start. A
mismatch that fails only some records (a shorter maximum length, a missing option) is
logged. A metadata read that fails (Dynamics unreachable, no privilege to read
metadata) is logged and checks nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from crmsync.domain import Direction, ObjectSpec
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.metadata import read_tables
from crmsync.errors import CrmsyncError
from crmsync.mapping.check import Mismatch, mismatches
from crmsync.store.db import store_unavailable, write_transaction
from crmsync.store.status import pause_unusable
from crmsync.store.types import utcnow

if TYPE_CHECKING:  # the engine passes the store's handle on; it runs no SQL
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

BLOCKING = frozenset({"missing_entity", "missing_attribute", "type", "entity_set"})
READ_SECONDS = 60.0


def blocking(found: list[Mismatch], specs: Mapping[str, ObjectSpec]) -> dict[str, Mismatch]:
    """The first mismatch per object that every request of the object would hit."""
    out: dict[str, Mismatch] = {}
    for m in found:
        pulls = m.object in specs and specs[m.object].flow.pulls
        if m.kind in BLOCKING or (m.kind in ("change_tracking", "sync_filter") and pulls):
            out.setdefault(m.object, m)
    return out


async def guard(
    engine: Engine,
    client: DataverseClient,
    specs: Mapping[str, ObjectSpec],
    timeout: float = READ_SECONDS,
) -> list[Mismatch]:
    """Check the mapping; pause the objects it cannot sync. Returns the mismatches."""
    try:
        tables = await asyncio.wait_for(
            read_tables(client, (s.logical_name for s in specs.values())), timeout
        )
    except (CrmsyncError, TimeoutError) as exc:
        log.warning(
            "mapping not checked against Dynamics",
            extra={"event": "mapping.unchecked", "error": str(exc)[:300] or type(exc).__name__},
        )
        return []
    found = mismatches(specs, tables)
    stop = blocking(found, specs)
    for m in found:
        log.warning(
            f"mapping mismatch: {m.message}",
            extra={
                "event": "mapping.mismatch",
                "object": m.object,
                "field": m.field,
                "kind": m.kind,
            },
        )
    if stop:

        def pause() -> None:
            now = utcnow()
            with write_transaction(engine) as conn:
                for obj, m in stop.items():
                    way = Direction.TO_CRM if specs[obj].flow.pushes else Direction.FROM_CRM
                    pause_unusable(conn, obj, way, "", m.message, now)

        try:
            await asyncio.to_thread(pause)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            # The store is down: the worker waits for it, and the first request of the
            # object pauses it then (the same mismatch, found while syncing).
            log.warning(
                "objects not paused for the mapping: the store is unavailable",
                extra={"event": "mapping.unpaused", "error": str(exc).splitlines()[0][:300]},
            )
    return found
