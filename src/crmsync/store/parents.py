"""Records parked because their parent was missing, queued again when it arrives.

A contact pulled before its brand-new account parks (``crmsync.missing_parent``); the
automatic retry would bring it back on its schedule, but the account's arrival is the
moment its cause is gone. ``arrived`` runs in the transaction that inserts the parents
(an apply's batch, a full read's load) and queues those children again at once, each
with a ``retried`` event by ``parent_arrived``: they apply with the next batch.

``pushed`` is the same for the other direction: a local contact whose account is not in
Dynamics parks as a missing reference (``crmsync.missing_reference`` when the account
is parked itself, or Dynamics' own "does not exist" answer); the push that syncs the
account queues it again, in the transaction that records the account as synced.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync import diagnosis
from crmsync.domain import Direction, EntryState, ErrorCategory, ErrorStatus, ObjectSpec
from crmsync.store import sync_errors
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_error, sync_queue
from crmsync.values import MISSING_PARENT

# The codes of a missing reference; the error's category decides among them.
_REFERENCE_CODES = sorted(diagnosis.codes_of(ErrorCategory.MISSING_REFERENCE))


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


def pushed(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    obj: str,
    record_ids: Sequence[int],
    now: datetime,
) -> int:
    """Queue again the pushes parked for a missing reference to ``obj`` among
    ``record_ids`` (local ids just synced to Dynamics); returns how many.

    Read as ``arrived`` reads: only the pushes parked with an open error of the missing
    reference kind naming no field or a lookup to ``obj``, of the objects pushing such a
    lookup (usually none, and no statement at all for an object nothing refers to); their
    local rows then say whether they refer to one of ``record_ids``."""
    synced = sorted(set(record_ids))
    if not synced:
        return 0
    queued = 0
    for child in specs.values():
        columns = [
            lk.column
            for lk in child.lookups
            if lk.target == obj and child.flow_for(lk.column).pushes
        ]
        if not columns:
            continue
        parked = (
            conn.execute(_waiting_pushes(), {"child": child.name, "columns": columns})
            .scalars()
            .all()
        )
        if not parked:
            continue
        table = local_table(child)
        waiting = (
            conn.execute(
                sa.select(table.c.id).where(
                    table.c.id.in_(parked), sa.or_(*(table.c[c].in_(synced) for c in columns))
                )
            )
            .scalars()
            .all()
        )
        keys = _unlocked(conn, child.name, [str(i) for i in waiting])
        queued += sync_errors.requeue_records(
            conn, child.name, Direction.TO_CRM, keys, now, sync_errors.PARENT_ACTOR
        )
    return queued


@functools.cache
def _waiting_pushes() -> sa.Select[tuple[int]]:
    """The local ids of the ``child`` object's pushes parked with an open error of the
    missing reference kind, naming no field or one of ``columns``. Built once: it runs
    for every batch of a parent object that syncs."""
    q, e = sync_queue.c, sync_error.c
    missing = (
        sa.select(sa.literal(1))
        .where(
            *sync_errors.of_entry(probed=True),
            e.status == ErrorStatus.OPEN,
            e.category == ErrorCategory.MISSING_REFERENCE,
            sa.or_(e.field.is_(None), e.field.in_(sa.bindparam("columns", expanding=True))),
        )
        .exists()
    )
    return sa.select(q.record_id).where(
        q.state == EntryState.PARKED,
        q.object == sa.bindparam("child", type_=sa.String()),
        q.direction == Direction.TO_CRM,
        q.record_id.is_not(None),
        # The entry's own code first: the errors of the others (data errors, usually)
        # are not looked up.
        sa.func.lower(q.last_error_code).in_(_REFERENCE_CODES),
        missing,
    )


def _unlocked(conn: Connection, obj: str, record_keys: Sequence[str]) -> list[str]:
    """The keys of the parked ``to_crm`` entries among ``record_keys``, locked for the
    caller's transaction; on PostgreSQL those another transaction holds are left out.

    Whoever holds a parked entry is queueing it already (a fold of its local change, a
    person's retry), and waiting for it could deadlock: a fold locks the entries of its
    step, the parent's among them, in id order, and the caller holds the parent's."""
    if not record_keys or conn.dialect.name != "postgresql":
        return list(record_keys)
    q = sync_queue.c
    return list(
        conn.execute(
            sa.select(q.record_key)
            .where(
                q.object == obj,
                q.direction == Direction.TO_CRM,
                q.record_key.in_(sorted(record_keys)),
                q.state == EntryState.PARKED,
            )
            .order_by(q.id)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def _refers_to(payload: object, columns: Sequence[str], crm_ids: set[str]) -> bool:
    """Whether a staged change's lookups (``Change.payload``) name one of ``crm_ids``."""
    lookups = payload.get("lookups") if isinstance(payload, dict) else None
    if not isinstance(lookups, dict):
        return False
    return any(str(lookups.get(c) or "").lower() in crm_ids for c in columns)
