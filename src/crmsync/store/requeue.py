"""Queueing records again (a resync, an audit's repair), and what a resync reads first.

``queue_again`` is the one way a resync or a repair puts a record back in the queue:
``to_crm`` records go into the capture log as if a local write had touched them (the
fold then makes or refreshes the record's one entry: counted in the backlog, retried,
journalled like any change, never a second entry for the record); ``from_crm`` records
are staged like a pull's changes (``inbound.stage``: a newer staged change is kept).
It runs in the caller's transaction, beside the job's ``advance``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import Direction, EventKind, ObjectSpec
from crmsync.store import history, inbound
from crmsync.store.capture import LABEL_MAX
from crmsync.store.local_tables import local_table, row_columns
from crmsync.store.schema import sync_change, sync_record
from crmsync.values import LocalRef

# Ids given with --id / "ids" at once.
MAX_IDS = 10_000


def queue_again(
    conn: Connection,
    obj: str,
    *,
    to_crm: Sequence[LocalRef] = (),
    from_crm: Sequence[dict[str, Any]] = (),
    now: datetime,
    actor: str | None = None,
    job: int | None = None,
) -> int:
    """Queue ``obj``'s records again: local records to be pushed, Dynamics' rows (queue
    entry rows, as a pull stages them) to be applied, each with a ``resynced`` event (by
    ``actor``, or as part of ``job``). Returns how many were queued."""
    detail: dict[str, Any] = {"by": actor or ("job" if job is not None else "unknown")}
    if job is not None:
        detail["job"] = job
    history.write(
        conn,
        [
            *(
                history.event(
                    obj,
                    str(ref.record_id),
                    EventKind.RESYNCED,
                    now,
                    direction=Direction.TO_CRM,
                    detail=detail,
                )
                for ref in to_crm
            ),
            *(
                history.event(
                    obj,
                    history.key_of(row.get("record_id"), row.get("crm_id")),
                    EventKind.RESYNCED,
                    now,
                    direction=Direction.FROM_CRM,
                    detail=detail,
                )
                for row in from_crm
            ),
        ],
    )
    if to_crm:
        conn.execute(
            sa.insert(sync_change),
            [
                {
                    "object": obj,
                    "record_id": ref.record_id,
                    "deleted": ref.deleted,
                    "crm_id": ref.crm_id if ref.deleted else None,
                    "label": ref.label[:LABEL_MAX] if ref.deleted and ref.label else None,
                    "changed_at": now,
                }
                for ref in to_crm
            ],
        )
    if from_crm:
        inbound.stage(conn, from_crm, now=now)
    return len(to_crm) + len(from_crm)


def _window(
    spec: ObjectSpec, table: sa.Table, since: datetime | None, until: datetime | None
) -> list[Any]:
    where: list[Any] = []
    if since is not None:
        where.append(table.c.updated_at >= since)
    if until is not None:
        where.append(table.c.updated_at < until)
    return where


def local_page(
    conn: Connection,
    spec: ObjectSpec,
    *,
    after: int,
    limit: int,
    since: datetime | None = None,
    until: datetime | None = None,
    ids: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """The next ``limit`` local rows of ``spec`` after the id ``after``, in id order:
    those changed locally in [since, until) (``updated_at``), or those among ``ids``."""
    table = local_table(spec)
    where = [table.c.id > after, *_window(spec, table, since, until)]
    if ids:
        where.append(table.c.id.in_(sorted(set(ids))))
    rows = conn.execute(
        sa.select(*row_columns(table)).where(*where).order_by(table.c.id).limit(limit)
    ).mappings()
    return [dict(r) for r in rows]


def count_local(
    conn: Connection,
    spec: ObjectSpec,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    ids: Sequence[int] = (),
) -> int:
    table = local_table(spec)
    where = _window(spec, table, since, until)
    if ids:
        where.append(table.c.id.in_(sorted(set(ids))))
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
    )


def rows_by_crm_id(
    conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The local rows holding these Dynamics ids, by lower-case id."""
    if not crm_ids:
        return {}
    table = local_table(spec)
    wanted = sorted({c.lower() for c in crm_ids} | set(crm_ids))
    rows = conn.execute(sa.select(*row_columns(table)).where(table.c.crm_id.in_(wanted))).mappings()
    return {str(r["crm_id"]).lower(): dict(r) for r in rows}


def synced_ids(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> dict[str, int]:
    """Dynamics id -> local id of the records whose last sync recorded these ids (their
    local row may be gone)."""
    if not crm_ids:
        return {}
    r = sync_record.c
    rows = conn.execute(
        sa.select(r.crm_id, r.record_id).where(
            r.object == spec.name, r.crm_id.in_(sorted({c.lower() for c in crm_ids}))
        )
    )
    return {str(c).lower(): int(i) for c, i in rows}


def parent_ids(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    spec: ObjectSpec,
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, int], str | None]:
    """(target, local id) -> Dynamics id of the parents the rows' lookups point at."""
    out: dict[tuple[str, int], str | None] = {}
    for lk in spec.lookups:
        ids = sorted({int(r[lk.column]) for r in rows if r.get(lk.column) is not None})
        if not ids or lk.target not in specs:
            continue
        table = local_table(specs[lk.target])
        found = dict(
            conn.execute(sa.select(table.c.id, table.c.crm_id).where(table.c.id.in_(ids))).all()
        )
        for i in ids:
            crm_id = found.get(i)
            out[(lk.target, i)] = str(crm_id).lower() if crm_id else None
    return out
