"""The drift audit's side of the store: what Dynamics holds, compared with what synced.

The audit's first pass saves the ids and versions Dynamics returned (``save_seen``, one
page a transaction). The comparison runs here, a page at a time, so that neither side
is ever held in memory:

- ``page_local``: for one page of Dynamics' ids, the local rows holding them with the
  last synced values and versions (for the engine to pick the ones whose version or
  local values moved), and the ids no local row holds (only in Dynamics);
- ``only_local``: after the first pass, local rows whose Dynamics id Dynamics did not
  return (or that have none and were never synced).

Records with a change on its way (a queue entry in either direction, pending or parked,
or a local change capture logged and the sync has not folded into the queue yet) are not
drift: the sync knows of them. Records the sync filter excludes are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.domain import Direction, ObjectSpec
from crmsync.store.local_tables import local_table
from crmsync.store.schema import (
    sync_audit,
    sync_audit_seen,
    sync_change,
    sync_queue,
    sync_record,
)

PAGE = 5_000


def save_seen(conn: Connection, job_id: int, obj: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Remember a page of Dynamics' ids (``crm_id``, ``version``,
    ``excluded``) for the audit ``job_id``; a page saved twice adds nothing."""
    if not rows:
        return
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_audit_seen)
    conn.execute(
        insert.on_conflict_do_nothing(index_elements=["job_id", "object", "crm_id"]),
        [{"job_id": job_id, "object": obj, **r} for r in rows],
    )


def forget_seen(conn: Connection, job_id: int) -> None:
    conn.execute(sa.delete(sync_audit_seen).where(sync_audit_seen.c.job_id == job_id))


def count_seen(conn: Connection, job_id: int, obj: str) -> int:
    s = sync_audit_seen.c
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(s.job_id == job_id, s.object == obj)
        ).scalar_one()
    )


def _queued(obj: str, direction: Direction, key: Any) -> Any:
    q = sync_queue.c
    return (
        sa.select(sa.literal(1))
        .where(q.object == obj, q.direction == direction, q.record_key == key)
        .exists()
    )


def _captured(obj: str, record_id: Any) -> Any:
    """A local change of the record in the capture log, not folded into the queue yet."""
    c = sync_change.c
    return sa.select(sa.literal(1)).where(c.object == obj, c.record_id == record_id).exists()


def _captured_ids(conn: Connection, obj: str, record_ids: Sequence[int]) -> set[int]:
    if not record_ids:
        return set()
    c = sync_change.c
    return set(
        conn.execute(
            sa.select(c.record_id).where(c.object == obj, c.record_id.in_(sorted(record_ids)))
        ).scalars()
    )


def _compared(spec: ObjectSpec, table: sa.Table) -> list[Any]:
    """The columns an audit compares: the ids and the mapped columns (not timestamps)."""
    return [table.c.id, table.c.crm_id, *(table.c[c] for c in spec.columns)]


def _marked(spec: ObjectSpec, table: sa.Table) -> Any:
    if not spec.timestamps:
        return sa.false()
    return table.c.crm_deleted_at.is_not(None)


def only_local(
    conn: Connection,
    job_id: int,
    spec: ObjectSpec,
    after: int,
    limit: int = PAGE,
    scan_started: datetime | None = None,
) -> list[dict[str, Any]]:
    """Local rows after the id ``after`` that Dynamics does not hold: the row, with
    ``synced`` (it has sync state: it was in Dynamics once). Rows synced since
    ``scan_started`` are left out: the first pass may have read past them before the
    sync put them in Dynamics (no drift; the next audit sees them)."""
    s, r, table = sync_audit_seen.c, sync_record.c, local_table(spec)
    # By the row's own Dynamics id (a push saves it on the row and in the sync state
    # together): a plain key probe of the first pass on both databases.
    seen = (
        sa.select(sa.literal(1))
        .where(s.job_id == job_id, s.object == spec.name, s.crm_id == table.c.crm_id)
        .exists()
    )
    rows = conn.execute(
        sa.select(
            table.c.id,
            table.c.crm_id,
            r.record_id.label("synced_id"),
            r.crm_id.label("synced_crm_id"),
        )
        .outerjoin(sync_record, (r.object == spec.name) & (r.record_id == table.c.id))
        .where(
            table.c.id > after,
            ~_marked(spec, table),
            sa.func.coalesce(r.excluded, sa.false()).is_(False),
            sa.or_(
                # Never in Dynamics: no id, no sync state.
                table.c.crm_id.is_(None) & r.record_id.is_(None),
                table.c.crm_id.is_not(None)
                & ~seen
                & ~_queued(spec.name, Direction.FROM_CRM, table.c.crm_id),
            ),
            ~_queued(spec.name, Direction.TO_CRM, sa.cast(table.c.id, sa.String)),
            ~_captured(spec.name, table.c.id),
            *(
                [sa.or_(r.last_synced_at.is_(None), r.last_synced_at < scan_started)]
                if scan_started is not None
                else []
            ),
        )
        .order_by(table.c.id)
        .limit(limit)
    ).mappings()
    out = []
    for x in rows:
        row = dict(x)
        row["synced"] = row.pop("synced_id") is not None
        row["crm_id"] = row["crm_id"] or row.pop("synced_crm_id")
        row.pop("synced_crm_id", None)
        out.append(row)
    return out


def page_local(
    conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, int | None]]:
    """For a page of Dynamics ids: the local rows holding them (the compared columns,
    ``_synced``, ``_synced_version``, ``_etag``), and for the ids no local row holds,
    the local id their last sync recorded (None: never synced here). Records the sync
    knows to be on their way (queued either way) or excluded are in neither."""
    if not crm_ids:
        return {}, {}
    r, table, q = sync_record.c, local_table(spec), sync_queue.c
    wanted = sorted(set(crm_ids))
    rows = conn.execute(
        sa.select(
            *_compared(spec, table),
            r.synced_values.label("_synced"),
            r.crm_version.label("_synced_version"),
            r.etag.label("_etag"),
            sa.or_(_marked(spec, table), sa.func.coalesce(r.excluded, sa.false()).is_(True)).label(
                "_skip"
            ),
        )
        .outerjoin(sync_record, (r.object == spec.name) & (r.record_id == table.c.id))
        .where(table.c.crm_id.in_(wanted))
    ).mappings()
    present: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    for x in rows:
        present.add(x["crm_id"])
        if not x["_skip"]:
            found[x["crm_id"]] = dict(x)
    # The capture log first, then the queue (small beside a page; two probes): a fold
    # between the probes moves an entry from the first to the second, so it is seen.
    captured = _captured_ids(conn, spec.name, [x["id"] for x in found.values()])
    found = {c: x for c, x in found.items() if x["id"] not in captured}
    if found:
        pushing = set(
            conn.execute(
                sa.select(q.record_key).where(
                    q.object == spec.name,
                    q.direction == Direction.TO_CRM,
                    q.record_key.in_(sorted({str(x["id"]) for x in found.values()})),
                )
            ).scalars()
        )
        pulling = set(
            conn.execute(
                sa.select(q.record_key).where(
                    q.object == spec.name,
                    q.direction == Direction.FROM_CRM,
                    q.record_key.in_(sorted(found)),
                )
            ).scalars()
        )
        found = {c: x for c, x in found.items() if c not in pulling and str(x["id"]) not in pushing}
    missing = [c for c in wanted if c not in present]
    if not missing:
        return found, {}
    # A local deletion capture logged: its record id, by the sync state's crm_id.
    synced = {
        c: (i, bool(x))
        for c, i, x in conn.execute(
            sa.select(r.crm_id, r.record_id, r.excluded).where(
                r.object == spec.name, r.crm_id.in_(missing)
            )
        )
    }
    deleting = _captured_ids(conn, spec.name, [i for i, _ in synced.values() if i is not None])
    queued = set(
        conn.execute(
            sa.select(q.record_key).where(
                q.object == spec.name, q.direction == Direction.FROM_CRM, q.record_key.in_(missing)
            )
        ).scalars()
    ) | set(
        conn.execute(
            sa.select(q.crm_id).where(
                q.object == spec.name, q.direction == Direction.TO_CRM, q.crm_id.in_(missing)
            )
        ).scalars()
    )
    return found, {
        c: synced[c][0] if c in synced else None
        for c in missing
        if c not in queued and not (c in synced and (synced[c][1] or synced[c][0] in deleting))
    }


def save_result(conn: Connection, result: Mapping[str, Any]) -> None:
    """Replace an object's last audit findings (``sync_audit``'s columns)."""
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_audit)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["object"],
            set_={c: insert.excluded[c] for c in result if c != "object"},
        ),
        [dict(result)],
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def last_results(conn: Connection, objects: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The last audit's findings per object, in the contract's shape."""
    a = sync_audit.c
    query = sa.select(sync_audit).order_by(a.object)
    if objects is not None:
        query = query.where(a.object.in_(list(objects)))
    return [
        {
            "object": row.object,
            "job_id": row.job_id,
            "checked": row.checked,
            "only_local": row.only_local,
            "only_dynamics": row.only_dynamics,
            "different": row.different,
            "repaired": row.repaired,
            "samples": list(row.samples or []),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
        }
        for row in conn.execute(query)
    ]
