"""The drift audit's side of the store: what Dynamics holds, compared with what synced.

The audit's first pass saves the ids and versions Dynamics returned (``save_seen``, a
few pages a transaction). The comparison runs here, a page at a time, so that neither
side is ever held in memory:

- ``page_local``: for one page of Dynamics' ids and versions, the local rows holding
  them whose version or values may have moved (the unmoved are cleared in SQL,
  ``store/unmoved.py``; the engine decides on the rest), and the ids no local row holds
  (only in Dynamics); ``on_their_way``: which of the moved ones the sync knows of;
- ``only_local``: after the first pass, local rows whose Dynamics id Dynamics did not
  return (or that have none and were never synced).

Records with a change on its way (queued either way, pending or parked, or logged and
not folded yet) are not drift; records the sync filter excludes are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.domain import Direction, ObjectSpec
from crmsync.store import planner_stats
from crmsync.store.local_tables import local_table
from crmsync.store.pgarrays import id_in, unnest
from crmsync.store.schema import (
    sync_audit,
    sync_audit_seen,
    sync_change,
    sync_queue,
    sync_record,
)
from crmsync.store.unmoved import same_as_synced

PAGE = 5_000


def save_seen(conn: Connection, job_id: int, obj: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Remember pages of Dynamics' ids (``crm_id``, ``version``, ``excluded``) for the
    audit ``job_id``, in one statement; a page saved twice adds nothing."""
    if not rows:
        return
    s = sync_audit_seen.c
    job, name = sa.literal(job_id, sa.BigInteger), sa.literal(obj, sa.String)
    if conn.dialect.name == "postgresql":
        page = unnest("seen", crm_id=sa.String, version=sa.BigInteger, excluded=sa.Boolean)
        values = sa.select(job, name, page.c.crm_id, page.c.version, page.c.excluded)
        insert: Any = pg_insert(sync_audit_seen)
        params: dict[str, Any] = {
            "seen_crm_id": [r["crm_id"] for r in rows],
            "seen_version": [r["version"] for r in rows],
            "seen_excluded": [bool(r["excluded"]) for r in rows],
        }
    else:
        # One JSON parameter, the page's rows as [crm_id, version, excluded] arrays.
        each = sa.func.json_each(sa.bindparam("seen", type_=sa.String)).table_valued("value")
        values = sa.select(
            job, name, *(sa.func.json_extract(each.c.value, f"$[{i}]") for i in range(3))
        ).where(sa.true())  # SQLite: an upsert's SELECT needs a WHERE (lang_upsert.html)
        insert = sqlite_insert(sync_audit_seen)
        params = {
            "seen": json.dumps([[r["crm_id"], r["version"], bool(r["excluded"])] for r in rows])
        }
    columns = [s.job_id, s.object, s.crm_id, s.version, s.excluded]
    conn.execute(
        insert.from_select(columns, values).on_conflict_do_nothing(
            index_elements=["job_id", "object", "crm_id"]
        ),
        params,
    )


def analyse_seen(engine: Engine) -> None:
    """Bring the planner's statistics of the seen ids up to what the first pass saved,
    before ``only_local`` anti-joins them (PostgreSQL)."""
    planner_stats.analyse_now(engine, sync_audit_seen)


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


def _uncaptured(obj: str, record_id: Any) -> Any:
    """No local change of the record in the capture log, not folded into the queue yet.
    The log's ids are read once (SQLite has no index on the log's records: a probe per
    row would scan it per row)."""
    c = sync_change.c
    return record_id.not_in(sa.select(c.record_id).where(c.object == obj))


def _captured_ids(conn: Connection, obj: str, record_ids: Sequence[int]) -> set[int]:
    if not record_ids:
        return set()
    c = sync_change.c
    return set(
        conn.execute(
            sa.select(c.record_id).where(c.object == obj, id_in(conn, c.record_id, record_ids))
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
    upto: int | None = None,
) -> list[dict[str, Any]]:
    """Local rows after the id ``after`` (and up to ``upto``) that Dynamics does not
    hold: the row, with ``synced`` (it has sync state: it was in Dynamics once). Rows
    synced since ``scan_started`` are left out: the first pass may have read past them
    before the sync put them in Dynamics (no drift; the next audit sees them)."""
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
            *([table.c.id <= upto] if upto is not None else []),
            ~_marked(spec, table),
            sa.func.coalesce(r.excluded, sa.false()).is_(False),
            # A row with a Dynamics id that the first pass did not read, or one never in
            # Dynamics (no id, no sync state). The probes are true of a row without an
            # id (a null matches nothing), so they stand outside the OR: PostgreSQL
            # turns only a top-level NOT EXISTS into an anti-join, which hashes the
            # seen ids where probing them row by row would take seconds at 1,000,000.
            ~seen,
            ~_queued(spec.name, Direction.FROM_CRM, table.c.crm_id),
            table.c.crm_id.is_not(None) | r.record_id.is_(None),
            ~_queued(spec.name, Direction.TO_CRM, sa.cast(table.c.id, sa.String)),
            _uncaptured(spec.name, table.c.id),
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


def last_id(conn: Connection, spec: ObjectSpec) -> int:
    """The highest local id of ``spec``'s table (0: none)."""
    table = local_table(spec)
    return int(conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0)


def page_local(
    conn: Connection, spec: ObjectSpec, versions: Mapping[str, int | None]
) -> tuple[list[dict[str, Any]], dict[str, int | None]]:
    """For a page of Dynamics ids and the versions Dynamics returned: the local rows
    holding them that may have moved since their last sync (the compared columns,
    ``_synced``, ``_synced_version``, ``_etag``, and ``_seen``, Dynamics' version), and
    for the ids no local row holds, the local id their last sync recorded (None: never
    synced here).

    A row whose Dynamics version and mapped values are still the last synced ones
    (``unmoved.same_as_synced``) is left out in SQL; the rows returned are compared in
    Python, which decides. Rows excluded or marked deleted in Dynamics are in neither,
    nor are missing ids the sync knows to be on their way. Whether a returned row's
    change is on its way is asked of the few that moved (``on_their_way``)."""
    if not versions:
        return [], {}
    r, table = sync_record.c, local_table(spec)
    # The page in one parameter: ids and versions side by side.
    if conn.dialect.name == "postgresql":
        page = unnest("page", crm_id=sa.String, version=sa.BigInteger)
        page_id, seen = page.c.crm_id, page.c.version
        params: dict[str, Any] = {
            "page_crm_id": list(versions),
            "page_version": list(versions.values()),
        }
    else:
        page = sa.func.json_each(sa.bindparam("page", type_=sa.String)).table_valued("key", "value")
        page_id, seen = page.c.key, page.c.value
        params = {"page": json.dumps(versions)}
    skip = sa.or_(_marked(spec, table), sa.func.coalesce(r.excluded, sa.false()).is_(True))
    cleared = sa.func.coalesce(
        sa.and_(
            r.crm_version == seen,
            r.crm_version != 0,  # no version: ``version_moved`` falls back on the ETag
            same_as_synced(conn.dialect.name, spec, table, r.synced_values),
        ),
        sa.false(),
    )
    rows = conn.execute(
        sa.select(
            page_id.label("_page_id"),
            seen.label("_seen"),
            *_compared(spec, table),
            r.synced_values.label("_synced"),
            r.crm_version.label("_synced_version"),
            r.etag.label("_etag"),
        )
        .select_from(
            page.outerjoin(table, table.c.crm_id == page_id).outerjoin(
                sync_record, (r.object == spec.name) & (r.record_id == table.c.id)
            )
        )
        .where(sa.or_(table.c.id.is_(None), ~skip & ~cleared)),
        params,
    )
    keys = list(rows.keys())
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for values in rows:
        row = dict(zip(keys, values, strict=True))
        page_id = row.pop("_page_id")
        if row["id"] is None:
            missing.append(page_id)
        else:
            found.append(row)
    return found, _only_dynamics(conn, spec, sorted(missing)) if missing else {}


def on_their_way(conn: Connection, spec: ObjectSpec, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """The Dynamics ids of those local ``rows`` (``id``, ``crm_id``) with a change the
    sync knows of: in the capture log, or queued either way (pending or parked)."""
    if not rows:
        return set()
    q = sync_queue.c
    by_id = {int(x["id"]): str(x["crm_id"]) for x in rows}
    # The capture log first, then the queue: a fold between the reads (PostgreSQL's
    # read committed) moves an entry from the first to the second, so it is seen.
    known = {by_id[i] for i in _captured_ids(conn, spec.name, list(by_id))}
    pushing = conn.execute(
        sa.select(q.record_key).where(
            q.object == spec.name,
            q.direction == Direction.TO_CRM,
            id_in(conn, q.record_key, [str(i) for i in by_id]),
        )
    ).scalars()
    known.update(by_id[int(k)] for k in pushing)
    known.update(
        conn.execute(
            sa.select(q.record_key).where(
                q.object == spec.name,
                q.direction == Direction.FROM_CRM,
                id_in(conn, q.record_key, list(by_id.values())),
            )
        ).scalars()
    )
    return known


def _only_dynamics(
    conn: Connection, spec: ObjectSpec, missing: Sequence[str]
) -> dict[str, int | None]:
    """Of a page's ids no local row holds, those the sync does not know to be on their
    way, with the local id their last sync recorded (None: never synced here)."""
    r, q = sync_record.c, sync_queue.c
    # A local deletion capture logged: its record id, by the sync state's crm_id.
    synced = {
        c: (i, bool(x))
        for c, i, x in conn.execute(
            sa.select(r.crm_id, r.record_id, r.excluded).where(
                r.object == spec.name, id_in(conn, r.crm_id, missing)
            )
        )
    }
    deleting = _captured_ids(conn, spec.name, [i for i, _ in synced.values() if i is not None])
    queued = set(
        conn.execute(
            sa.select(q.record_key).where(
                q.object == spec.name,
                q.direction == Direction.FROM_CRM,
                id_in(conn, q.record_key, missing),
            )
        ).scalars()
    ) | set(
        conn.execute(
            sa.select(q.crm_id).where(
                q.object == spec.name,
                q.direction == Direction.TO_CRM,
                id_in(conn, q.crm_id, missing),
            )
        ).scalars()
    )
    return {
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
