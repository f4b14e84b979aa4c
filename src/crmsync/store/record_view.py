"""One record as the record page shows it: its local row, sync state, open errors, the
parents its Dynamics lookups name; a bounded search for records; and resync.

Readers here write nothing. ``resync`` queues the record again in one direction, with a
``resynced`` event in the same transaction: ``to_crm`` as a captured change would
(the local row as it is now, sent to Dynamics); ``from_crm`` stages the Dynamics row the
caller read, applied like any pulled change (the conflict rules settle both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, ErrorStatus, ObjectSpec
from crmsync.errors import ValidationFailed
from crmsync.store import inbound, requeue
from crmsync.store.local_tables import local_table
from crmsync.store.params import MAX_ID, check_text, iso
from crmsync.store.records import NotFound
from crmsync.store.schema import sync_error, sync_record
from crmsync.store.sync_errors import error_columns, to_item
from crmsync.store.types import utcnow
from crmsync.values import LocalRef

SEARCH_MAX = 50


@dataclass(frozen=True)
class RecordView:
    """What the store holds about one record."""

    row: dict[str, Any]  # the local row's mapped columns, id and crm_id, as stored
    crm_id: str | None
    synced_values: dict[str, Any] | None
    last_synced_at: datetime | None
    errors: list[dict[str, Any]]  # open errors, both directions (ERROR items)


def load(conn: Connection, spec: ObjectSpec, record_id: int) -> RecordView:
    """The record ``record_id`` of ``spec``; ``NotFound`` if no local row holds it."""
    if not 1 <= record_id <= MAX_ID:
        raise NotFound(f"no {spec.name} with id {record_id}")
    table = local_table(spec)
    columns = [table.c.id, table.c.crm_id, *(table.c[c] for c in spec.columns)]
    row = conn.execute(sa.select(*columns).where(table.c.id == record_id)).mappings().first()
    if row is None:
        raise NotFound(f"no {spec.name} with id {record_id}")
    r = sync_record.c
    state = conn.execute(
        sa.select(r.crm_id, r.synced_values, r.last_synced_at).where(
            r.object == spec.name, r.record_id == record_id
        )
    ).first()
    crm_id = row["crm_id"] or (state.crm_id if state is not None else None)
    e = sync_error.c
    keys = [str(record_id), *([str(crm_id).lower()] if crm_id else [])]
    errors = conn.execute(
        error_columns()
        .where(
            e.object == spec.name,
            e.status == ErrorStatus.OPEN,
            sa.or_(e.record_id == record_id, e.record_key.in_(keys)),
        )
        .order_by(e.last_failed_at.desc(), e.id.desc())
        .limit(10)
    ).mappings()
    return RecordView(
        row=dict(row),
        crm_id=str(crm_id).lower() if crm_id else None,
        synced_values=dict(state.synced_values) if state is not None else None,
        last_synced_at=state.last_synced_at if state is not None else None,
        errors=[_error(m) for m in errors],
    )


def _error(row: Any) -> dict[str, Any]:
    return to_item(row)


def parents(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    spec: ObjectSpec,
    dynamics_row: Mapping[str, Any] | None,
) -> dict[tuple[str, str], int]:
    """(target, Dynamics id) -> local id for the lookups ``dynamics_row`` carries."""
    wanted: dict[str, set[str]] = {}
    for lk in spec.lookups:
        value = (dynamics_row or {}).get(lk.value_attribute)
        if value:
            wanted.setdefault(lk.target, set()).add(str(value).lower())
    return inbound.local_parents(conn, specs, wanted)


def search(
    conn: Connection, specs: Mapping[str, ObjectSpec], q: str, limit: int = 20
) -> list[dict[str, Any]]:
    """Records whose local id, Dynamics id, label (email or name) or email column matches
    ``q`` (ids exactly, text case-insensitively from its start), across every object;
    at most ``limit`` (up to ``SEARCH_MAX``)."""
    text = (check_text("q", q, 200) or "").strip()
    if not text:
        raise ValidationFailed("q", "give an email, a name, a local id or a Dynamics id")
    if not 1 <= limit <= SEARCH_MAX:
        raise ValidationFailed("limit", f"must be between 1 and {SEARCH_MAX}")
    found: list[dict[str, Any]] = []
    pattern = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    for spec in specs.values():
        if len(found) >= limit:
            break
        table = local_table(spec)
        label = table.c[spec.label_column]
        match: list[sa.ColumnElement[bool]] = [sa.func.lower(table.c.crm_id) == text.lower()]
        if text.isdecimal() and int(text) <= MAX_ID:
            match.append(table.c.id == int(text))
        texts = {spec.label_column, *(c for c in spec.fields if "email" in c or c == "name")}
        for column in sorted(texts):
            if isinstance(table.c[column].type, sa.String):
                match.append(sa.func.lower(table.c[column]).like(pattern, escape="\\"))
        rows = conn.execute(
            sa.select(table.c.id, table.c.crm_id, label.label("label"))
            .where(sa.or_(*match))
            .order_by(table.c.id)
            .limit(limit - len(found))
        )
        found += [{"object": spec.name, "id": i, "crm_id": c, "label": lab} for i, c, lab in rows]
    return found


def resync(
    conn: Connection,
    spec: ObjectSpec,
    record_id: int,
    direction: Direction,
    actor: str | None,
    staged: Sequence[dict[str, Any]] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Queue the record again in ``direction``, with a ``resynced`` event by ``actor``.

    ``to_crm``: its entry made (or refreshed, a parked one due again) from the local row.
    ``from_crm``: ``staged`` holds the queue row of the Dynamics row read (as
    ``pull.entry_row`` builds it), staged as a pull would stage it."""
    now = now or utcnow()
    view = load(conn, spec, record_id)
    if direction == Direction.TO_CRM:
        if not spec.flow.pushes:
            raise ValidationFailed("direction", f"{spec.name} does not sync to Dynamics")
        local = [LocalRef(record_id, view.crm_id)]
        requeue.queue_again(conn, spec.name, to_crm=local, now=now, actor=actor)
    else:
        if not spec.flow.pulls:
            raise ValidationFailed("direction", f"{spec.name} does not sync from Dynamics")
        if not staged:
            raise NotFound(f"{spec.name} {record_id} is not in Dynamics")
        requeue.queue_again(conn, spec.name, from_crm=staged, now=now, actor=actor)
    return {
        "object": spec.name,
        "record_id": record_id,
        "crm_id": view.crm_id,
        "direction": str(direction),
        "queued_at": iso(now),
    }
