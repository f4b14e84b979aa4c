"""Records parked because their parent was missing, queued again when it arrives.

A contact pulled before its brand-new account parks (``crmsync.missing_parent``); the
automatic retry would bring it back on its schedule, but the account's arrival is the
moment its cause is gone. ``arrived`` runs in the transaction that inserts the parents
(an apply's batch, a full read's load) and queues those children again at once, each
with a ``retried`` event by ``parent_arrived``: they apply with the next batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, ObjectSpec
from crmsync.store import sync_errors
from crmsync.store.schema import sync_queue
from crmsync.values import MISSING_PARENT


def arrived(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    obj: str,
    crm_ids: Sequence[str | None],
    now: datetime,
) -> int:
    """Queue again the pulls parked for a missing ``obj`` among ``crm_ids`` (just
    inserted locally); returns how many.

    Only the pulls parked for a missing parent are read (``last_error_code``), of the
    objects with a lookup to ``obj``, through the backlog index's (state, object,
    direction) prefix: usually none."""
    new = {c.lower() for c in crm_ids if c}
    if not new:
        return 0
    q = sync_queue.c
    queued = 0
    for child in specs.values():
        columns = [lk.column for lk in child.lookups if lk.target == obj]
        if not columns:
            continue
        parked = conn.execute(
            sa.select(q.record_key, q.payload).where(
                q.state == EntryState.PARKED,
                q.object == child.name,
                q.direction == Direction.FROM_CRM,
                q.last_error_code == MISSING_PARENT,
            )
        ).all()
        waiting = [key for key, payload in parked if _refers_to(payload, columns, new)]
        queued += sync_errors.requeue_records(
            conn, child.name, Direction.FROM_CRM, waiting, now, sync_errors.PARENT_ACTOR
        )
    return queued


def _refers_to(payload: object, columns: Sequence[str], crm_ids: set[str]) -> bool:
    """Whether a staged change's lookups (``Change.payload``) name one of ``crm_ids``."""
    lookups = payload.get("lookups") if isinstance(payload, dict) else None
    if not isinstance(lookups, dict):
        return False
    return any(str(lookups.get(c) or "").lower() in crm_ids for c in columns)
