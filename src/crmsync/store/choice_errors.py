"""The parked errors of a choice whose options changed, retried when they can pass now.

``retry_known``: a worker that reads a table's options again and finds them changed
retries the open choice errors of the changed fields whose refused value is now one of
the options; a typo, or an option still unknown, stays parked (retried, it would only be
refused again). The refused value is the local row's for a record sent to Dynamics (what
a retry sends again), the parked entry's payload for one read from it (as Dynamics sent
it): the error's message shows it shortened, so it is not read from there.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EntryState, ErrorStatus, ObjectSpec
from crmsync.store import sync_errors
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_error, sync_queue

# Error ids retried per statement.
RETRY_BATCH = 500


def retry_known(
    conn: Connection,
    spec: ObjectSpec,
    columns: Iterable[str],
    codes: Collection[str],
    now: datetime,
    *,
    actor: str,
) -> int:
    """Retry the open errors (of ``codes``) of ``spec``'s ``columns`` whose refused value
    is one of the options ``spec`` now carries; returns how many. A record sent to
    Dynamics is refused its local row's value (what a retry sends again), a record read
    from it the option value its parked entry keeps (``payload``, as Dynamics sent it)."""
    e, q = sync_error.c, sync_queue.c
    ids: list[int] = []
    for column in columns:
        field = spec.field_specs[column]
        errors = [
            e.object == spec.name,
            e.field == column,
            e.error_code.in_(list(codes)),
            e.status == ErrorStatus.OPEN,
        ]
        table = local_table(spec)
        labels = [label for label, _ in field.choices]
        ids += conn.execute(
            sa.select(e.id)
            .join(table, table.c[spec.id_column] == e.record_id)
            .where(*errors, e.direction == Direction.TO_CRM, table.c[column].in_(labels))
        ).scalars()
        options = {option for _, option in field.choices}
        parked = conn.execute(
            sa.select(e.id, q.payload)
            .join(sync_queue, sa.and_(*sync_errors.of_entry()))
            .where(*errors, e.direction == Direction.FROM_CRM, q.state == EntryState.PARKED)
        ).all()
        ids += [i for i, payload in parked if _option_in(payload, column, options)]
    for start in range(0, len(ids), RETRY_BATCH):
        batch = ids[start : start + RETRY_BATCH]
        sync_errors.retry_ids(conn, batch, now, actor=actor)
    return len(ids)


def _option_in(payload: Any, column: str, options: Collection[int]) -> bool:
    values = payload.get("values") if isinstance(payload, Mapping) else None
    value = values.get(column) if isinstance(values, Mapping) else None
    return isinstance(value, int) and not isinstance(value, bool) and value in options
