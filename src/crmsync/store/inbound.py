"""The inbound statements: Dynamics' changes staged, cursors saved, records loaded in bulk.

A pull's page is staged in ONE transaction its caller opens; every function here runs in
the caller's connection and commits nothing, so which statements share a transaction is
the caller's decision (the delta link is saved with the last page's entries).

- ``stage`` coalesces ``from_crm`` entries with pending ones of the same record and never
  replaces a newer change (higher ``versionnumber``) by an older one.
- ``load_known`` reads local rows, pushes in flight and logged deletes in ONE statement
  (one snapshot); ``load_buried`` is read after it, ``known_ids`` reads the log before the
  queue and tombstones last, so a record moving between them is seen in one place.
- ``insert_loaded`` writes a full read's new records and their sync state with capture
  suppressed, in a savepoint: refused, it leaves nothing and says so.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from crmsync.domain import Direction, EntryState, EventKind, ObjectSpec, Operation
from crmsync.mapping import active
from crmsync.store import history, parents, queue
from crmsync.store.db import capture_suppressed
from crmsync.store.local_tables import local_table
from crmsync.store.pgarrays import id_in
from crmsync.store.schema import (
    sync_change,
    sync_cursor,
    sync_event,
    sync_queue,
    sync_record,
    sync_tombstone,
)
from crmsync.store.types import UTCDateTime
from crmsync.values import Known, parse_time, version_of

# Rows per INSERT statement: enough that a statement's own cost vanishes, few enough
# that its text stays small and its prepared form is reused page after page.
ROWS_PER_STATEMENT = 1000
# A delete sorts after every version: nothing staged later may replace it.
_AFTER_ALL = 1e18
_fromisoformat = datetime.fromisoformat


def paused(engine: Engine, obj: str) -> bool:
    """Whether reading ``obj`` from Dynamics is paused (its ``from_crm`` direction)."""
    with engine.connect() as conn:
        return queue.is_paused(queue.paused_scopes(conn), obj, Direction.FROM_CRM)


def cursor(engine: Engine, obj: str) -> str | None:
    """The delta link ``obj``'s next pull starts from; None: a full read."""
    with engine.connect() as conn:
        return read_cursor(conn, obj)


def text_room(spec: ObjectSpec, column: str) -> int | None:
    """How many characters ``column`` of ``spec``'s local table holds (None: any)."""
    return getattr(local_table(spec).c[column].type, "length", None)


def why_unfit(spec: ObjectSpec, column: str, value: Any) -> str | None:
    """Why ``value`` cannot be stored in ``column`` of ``spec``'s local table, or None."""
    if value is None:
        return None
    col_type = local_table(spec).c[column].type
    if isinstance(col_type, sa.String):
        if not isinstance(value, str):
            return f"{column}: expected text, Dynamics sent {type(value).__name__}"
        if col_type.length is not None and len(value) > col_type.length:
            return f"{column}: {len(value)} characters, the local column holds {col_type.length}"
    return None


def bound_values(conn: Connection, spec: ObjectSpec, column: str, values: list[Any]) -> list[Any]:
    """``values`` of ``column`` as its type hands them to the driver (a decimal as exact
    text on SQLite, a date as its ISO text, ...), for ``insert_loaded``."""
    # The dialect's own form of the type: a decorated type's processor alone would
    # hand its generic implementation's (a Numeric's float) instead.
    process = (
        local_table(spec).c[column].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    )
    if process is None:
        return values
    return [None if v is None else process(v) for v in values]


def insert_loaded(
    conn: Connection,
    spec: ObjectSpec,
    columns: Sequence[str],
    local_rows: Sequence[tuple[Any, ...]],
    states: Sequence[tuple[Any, ...]],
    now: datetime,
    *,
    typed: bool = False,
) -> bool:
    """Insert a full read's new records (``local_rows``: ``columns`` then ``crm_id``, as
    the driver takes them: ``bound_values``) and their sync state (``states``: crm_id,
    etag, version, modified time as ``stored_times`` gives it and, with ``typed``, a JSON
    object of the typed fields' values in their JSON form, which the synced values take
    over the local columns'), counted as synced inserts, with capture suppressed, in a
    savepoint of the caller's transaction. False if the database refused them (another
    worker inserted one first, a local constraint): then nothing of them is written."""
    try:
        with capture_suppressed(conn), conn.begin_nested():
            _write(conn, spec, columns, local_rows, states, now, typed)
            _loaded_events(conn, spec, columns, [r[-1] for r in local_rows], now)
            queue.count_synced(
                conn, {(spec.name, Direction.FROM_CRM, Operation.INSERT): len(local_rows)}, now
            )
            parents.arrived(conn, active(), spec.name, [r[-1] for r in local_rows], now)
    except DBAPIError:
        return False
    return True


def _loaded_events(
    conn: Connection,
    spec: ObjectSpec,
    columns: Sequence[str],
    crm_ids: Sequence[str],
    now: datetime,
) -> None:
    """A full read's new records' ``pulled`` and ``applied`` events, by two INSERT ...
    SELECTs over the rows just written (a load of millions stays a few statements)."""
    if not history.enabled() or not crm_ids:
        return
    table = local_table(spec)
    fields = [c for c in columns if c in spec.columns]
    e = sync_event.c
    for kind in (EventKind.PULLED, EventKind.APPLIED):
        conn.execute(
            sa.insert(sync_event).from_select(
                [
                    e.object,
                    e.record_key,
                    e.at,
                    e.event,
                    e.direction,
                    e.operation,
                    e.fields,
                    e.detail,
                ],
                sa.select(
                    sa.literal(spec.name, sa.String),
                    sa.cast(table.c.id, sa.String),
                    sa.literal(now, UTCDateTime()),
                    sa.literal(str(kind), sa.String),
                    sa.literal(str(Direction.FROM_CRM), sa.String),
                    sa.literal(str(Operation.INSERT), sa.String),
                    sa.literal(fields, sa.JSON),
                    sa.literal({"full_read": True}, sa.JSON),
                ).where(id_in(conn, table.c.crm_id, crm_ids)),
            )
        )


def known_ids(
    conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]
) -> tuple[set[str], dict[str, int]]:
    """Those of ``crm_ids`` the store knows (a local row holds it, or a push in flight
    chose it: its local row has no ``crm_id`` yet), and the version each local row among
    them was last synced at, where it has a sync state that is not excluded."""
    if not crm_ids:
        return set(), {}
    q = sync_queue.c
    known: set[str] = set()
    synced: dict[str, int] = {}
    for crm_id, version, etag, excluded in _local_states(conn, spec, crm_ids):
        crm_id = str(crm_id).lower()
        known.add(crm_id)
        # As ``pull.load_known`` reads it: no state (outer join), excluded, or no
        # version known leave the record to the ordinary path.
        at = None if excluded is None or excluded else (version or version_of(etag))
        if at is not None:
            synced[crm_id] = at
    # A local delete still in the capture log is known, like a queued delete entry.
    # The log is read first: a fold moving a delete into the queue in between is then
    # seen in one or the other (the other order could miss it in both).
    c = sync_change.c
    logged = conn.execute(
        sa.select(c.crm_id).where(
            c.object == spec.name, c.deleted.is_(True), id_in(conn, c.crm_id, crm_ids)
        )
    )
    known.update(str(i).lower() for (i,) in logged)
    pushes = conn.execute(
        sa.select(q.crm_id).where(
            q.object == spec.name, q.direction == Direction.TO_CRM, id_in(conn, q.crm_id, crm_ids)
        )
    )
    known.update(str(i).lower() for (i,) in pushes)
    # A record crmsync deleted is known too (read last: a delete pushed meanwhile moves
    # from the queue to its tombstone), so a page read before it is not inserted again.
    t = sync_tombstone.c
    buried = conn.execute(
        sa.select(t.crm_id).where(t.object == spec.name, id_in(conn, t.crm_id, crm_ids))
    )
    known.update(str(i).lower() for (i,) in buried)
    return known, synced


def _local_states(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> Sequence[Any]:
    """``(crm_id, crm_version, etag, excluded)`` of the local rows holding these ids
    (the state's columns null without one). Written out so that SQLite goes from the
    page's ids to the ``crm_id`` index (``CROSS JOIN`` fixes the order): left to its
    planner it scanned every sync state of the object per page, quadratic over a load."""
    table = spec.table
    # An attached table's own names for id and crm_id (the mapping validated them).
    rid, crm_id = f"t.{spec.id_column}", f"t.{spec.crm_id_column}"
    state = "LEFT JOIN sync_record AS r ON r.object = {0} AND r.record_id = " + rid
    columns = f"SELECT {crm_id}, r.crm_version, r.etag, r.excluded"
    if conn.dialect.name == "postgresql":
        sql = f"{columns} FROM {table} AS t {state.format('%s')} WHERE {crm_id} = ANY(%s)"
        return conn.exec_driver_sql(sql, (spec.name, list(crm_ids))).all()
    sql = (
        f"{columns} FROM json_each(?) AS v CROSS JOIN {table} AS t {state.format('?')}"
        f" WHERE {crm_id} = v.value"
    )
    return conn.exec_driver_sql(sql, (json.dumps(list(crm_ids)), spec.name)).all()


def local_parents(
    conn: Connection, specs: Mapping[str, ObjectSpec], wanted: Mapping[str, set[str]]
) -> dict[tuple[str, str], int]:
    """(target object, Dynamics id) -> local id, for the parents that are local rows."""
    found: dict[tuple[str, str], int] = {}
    for target, ids in wanted.items():
        if not ids:
            continue
        table = local_table(specs[target])
        for r in conn.execute(
            sa.select(table.c.id, table.c.crm_id).where(id_in(conn, table.c.crm_id, sorted(ids)))
        ):
            found[(target, r.crm_id.lower())] = r.id
    return found


def stored_times(texts: Sequence[Any], sqlite: bool) -> list[str | None]:
    """Dynamics' ISO 8601 times as the store keeps them: ``UTCDateTime``'s text on
    SQLite, ISO 8601 for PostgreSQL to cast. Unreadable -> None, as the ordinary path
    (``changes.parse_time``) reads them."""
    out: list[str | None] = []
    for text in texts:
        if type(text) is str and len(text) == 20 and text[19] == "Z" and text[10] == "T":
            # Dataverse's own shape (UTC, whole seconds), nearly every record: checked
            # by the parser, rewritten by slicing (datetime formatting costs more).
            try:
                _fromisoformat(text[:19])
            except ValueError:
                out.append(None)
                continue
            if text[4] == text[7] == "-" and text[13] == text[16] == ":":
                out.append(f"{text[:10]} {text[11:19]}.000000" if sqlite else text)
                continue
        moment = parse_time(text) if isinstance(text, str) else None
        if moment is None:
            out.append(None)
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if sqlite:
            out.append(moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))
        else:
            out.append(moment.isoformat())
    return out


def _max_rows(conn: Connection, width: int) -> int:
    """Rows per multi-row ``VALUES`` within the driver's limit on bound parameters
    (SQLite's is 32,766 since 3.32 and 999 before; PostgreSQL's protocol allows 65,535)."""
    limit = 65_535
    if conn.dialect.name == "sqlite":
        driver = conn.connection.dbapi_connection
        getlimit = getattr(driver, "getlimit", None)  # Python 3.11+
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999
    return max(1, min(ROWS_PER_STATEMENT, (limit - 2) // width))


def _write(
    conn: Connection,
    spec: ObjectSpec,
    columns: Sequence[str],
    local_rows: Sequence[tuple[Any, ...]],
    states: Sequence[tuple[Any, ...]],
    now: datetime,
    typed: bool = False,
) -> None:
    """Insert the local rows, then their sync state joined to them by ``crm_id`` (ids
    from the database, nothing looked up in Python), many rows per statement straight
    through the driver (VALUES lists on SQLite, one array per column on PostgreSQL):
    SQLAlchemy's per-parameter processing and ``executemany``'s per-row step cost more
    than the inserts. Names come from the schema; every value is a bound parameter."""
    table = local_table(spec)
    rid, crm_id = table.c.id.name, table.c.crm_id.name  # an attached table's own names
    pg = conn.dialect.name == "postgresql"
    mark = "%s" if pg else "?"

    def cast(expr: str, type_: str) -> str:
        # SQLite takes the values as they are (its casts would mangle timestamp text).
        return f"CAST({expr} AS {type_})" if pg else expr

    def marks(width: int, count: int) -> str:
        row = f"({', '.join([mark] * width)})"
        return ", ".join([row] * count)

    synced = ", ".join(f"'{c}', t.{c}" for c in columns)
    synced = f"json_build_object({synced})" if pg else f"json_object({synced})"
    if typed:
        # A typed column's value as the database holds it is not its JSON form (a
        # timestamp's text, a decimal's scale): the forms given replace them. Only
        # values are given, never nulls (json_patch would drop the key).
        synced = (
            f"({synced}::jsonb || CAST(v.typed AS jsonb))::json"
            if pg
            else f"json_patch({synced}, v.typed)"
        )
    width = 5 if typed else 4
    stamp = now if pg else now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    names = "crm_id, etag, version, modified" + (", typed" if typed else "")
    if pg:
        # One array per column (unnest): psycopg parses a statement's placeholders in
        # Python and caches none past 50, so a VALUES list of a wide page costs more
        # there than the insert does. The arrays take the columns' base types: a
        # cast to VARCHAR(n) or NUMERIC(p, s) would truncate or round where the
        # insert itself refuses.
        kinds = [_base_type(conn, table.c[c]) for c in columns] + ["TEXT"]
        arrays = ", ".join(f"%b::{k}[]" for k in kinds)
        _insert_arrays(
            conn,
            f"INSERT INTO {table.name} ({', '.join(columns)}, {crm_id})"  # noqa: S608
            f" SELECT * FROM unnest({arrays})",
            local_rows,
            (),
        )
    else:
        step = _max_rows(conn, len(columns) + 1)
        for start in range(0, len(local_rows), step):
            part = local_rows[start : start + step]
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(columns)}, {crm_id})"  # noqa: S608
                f" VALUES {marks(len(columns) + 1, len(part))}",
                tuple(chain.from_iterable(part)),
            )
    select = (
        f"SELECT {mark}, t.{rid}, t.{crm_id}, v.etag, {cast('v.version', 'BIGINT')},"  # noqa: S608
        f" {cast('v.modified', 'TIMESTAMP WITH TIME ZONE')}, {mark}, {synced}"
        # CROSS JOIN: SQLite reads the page first and finds each row by its crm_id.
        f" FROM v CROSS JOIN {table.name} AS t WHERE t.{crm_id} = v.crm_id"
    )
    if pg:
        kinds = ["TEXT", "TEXT", "BIGINT", "TEXT", "TEXT"][:width]
        arrays = ", ".join(f"%b::{k}[]" for k in kinds)
        _insert_arrays(
            conn,
            f"WITH v ({names}) AS (SELECT * FROM unnest({arrays}))"  # noqa: S608
            " INSERT INTO sync_record (object, record_id, crm_id, etag, crm_version,"
            f" crm_modified_at, last_synced_at, synced_values) {select}",
            states,
            (spec.name, stamp),
        )
        return
    step = _max_rows(conn, width)
    for start in range(0, len(states), step):
        part = states[start : start + step]
        conn.exec_driver_sql(
            f"WITH v ({names}) AS (VALUES {marks(width, len(part))})"
            " INSERT INTO sync_record (object, record_id, crm_id, etag, crm_version,"
            f" crm_modified_at, last_synced_at, synced_values) {select}",
            (*chain.from_iterable(part), spec.name, stamp),
        )


# Rows per statement of ``_insert_arrays``: a page's worth.
ARRAY_ROWS = 5000


def _insert_arrays(
    conn: Connection, statement: str, rows: Sequence[tuple[Any, ...]], after: tuple[Any, ...]
) -> None:
    """``statement`` with one array parameter per column of ``rows`` (then ``after``)."""
    for start in range(0, len(rows), ARRAY_ROWS):
        part = rows[start : start + ARRAY_ROWS]
        conn.exec_driver_sql(statement, (*map(list, zip(*part, strict=True)), *after))


def _base_type(conn: Connection, column: sa.Column[Any]) -> str:
    """``column``'s PostgreSQL type without its length, precision or scale."""
    compiled = column.type.compile(dialect=conn.dialect)
    return re.sub(r"\(.*?\)", "", compiled).strip()


def read_cursor(conn: Connection, obj: str) -> str | None:
    link = conn.execute(
        sa.select(sync_cursor.c.delta_link).where(sync_cursor.c.object == obj)
    ).scalar()
    return str(link) if link else None


def save_cursor(conn: Connection, obj: str, link: str | None, now: datetime) -> None:
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_cursor)
    conn.execute(
        insert.values(object=obj, delta_link=link, updated_at=now).on_conflict_do_update(
            index_elements=["object"],
            set_={"delta_link": insert.excluded.delta_link, "updated_at": now},
        )
    )


def _marked(spec: ObjectSpec, table: sa.Table) -> sa.ColumnElement[bool]:
    # An attached table has no crm_deleted_at: its records are never marked.
    if not spec.timestamps:
        return sa.false()
    return table.c.crm_deleted_at.is_not(None)


def load_known(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> dict[str, Known]:
    """What the store knows about these Dynamics ids: the local row holding the id, or a
    push in flight that chose it (its local row has no ``crm_id`` yet), and the sync
    state both sides last agreed on.

    One statement, so one snapshot: a push finishing meanwhile moves the id from its
    queue entry to its local row in one commit, and two reads (rows, then queue) on
    PostgreSQL could fall between and see it in neither place, taking crmsync's own
    record for a new one. The same holds the other way for a local delete (the row
    goes, a delete entry comes).
    """
    if not crm_ids:
        return {}
    table, q, r = local_table(spec), sync_queue.c, sync_record.c
    local = sa.select(
        table.c.crm_id.label("crm_id"),
        table.c.id.label("record_id"),
        sa.literal(None, sa.String).label("operation"),
        _marked(spec, table).label("marked"),
    ).where(id_in(conn, table.c.crm_id, crm_ids))
    pushes = sa.select(
        q.crm_id.label("crm_id"),
        q.record_id.label("record_id"),
        q.operation.label("operation"),
        sa.false().label("marked"),
    ).where(q.object == spec.name, q.direction == Direction.TO_CRM, id_in(conn, q.crm_id, crm_ids))
    both = sa.union_all(local, pushes, _logged_deletes(conn, spec, crm_ids)).subquery()
    found = conn.execute(
        sa.select(both, r.synced_values, r.crm_version, r.etag, r.excluded).join_from(
            both,
            sync_record,
            (r.object == spec.name) & (r.record_id == both.c.record_id),
            isouter=True,
        )
    ).all()
    rows = {f.crm_id.lower(): f for f in found if f.operation is None}
    pushes_by_id: dict[str, Any] = {}
    for f in found:
        # A delete logged after an entry was queued is the later change.
        if f.operation is not None and (
            f.crm_id.lower() not in pushes_by_id or f.operation == Operation.DELETE
        ):
            pushes_by_id[f.crm_id.lower()] = f
    known: dict[str, Known] = {}
    for crm_id in crm_ids:
        push = pushes_by_id.get(crm_id)
        row = rows.get(crm_id)
        state = row if row is not None else push
        if state is None or state.record_id is None:
            continue
        known[crm_id] = Known(
            record_id=state.record_id,
            synced_values=state.synced_values,  # None without sync state (outer join)
            synced_version=state.crm_version or version_of(state.etag),
            local_delete_pending=push is not None and push.operation == Operation.DELETE,
            marked_deleted=bool(row is not None and row.marked),
            excluded=bool(state.excluded),  # None without sync state (outer join)
        )
    return known


def load_buried(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> set[str]:
    """The Dynamics ids among ``crm_ids`` of records crmsync deleted (``sync_tombstone``).

    Read after ``load_known`` in the same transaction: a delete committed between the
    two reads left a tombstone, so a record is known, buried, or truly new."""
    if not crm_ids:
        return set()
    t = sync_tombstone.c
    found = conn.execute(
        sa.select(t.crm_id).where(t.object == spec.name, id_in(conn, t.crm_id, crm_ids))
    ).scalars()
    return {str(c).lower() for c in found}


def load_staged(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> set[str]:
    """The Dynamics ids among ``crm_ids`` with a pulled change queued and not applied
    yet (``from_crm`` entries, waiting or being applied): a record the store does not
    hold yet, but will."""
    if not crm_ids:
        return set()
    q = sync_queue.c
    found = conn.execute(
        sa.select(q.record_key).where(
            q.object == spec.name,
            q.direction == Direction.FROM_CRM,
            id_in(conn, q.record_key, crm_ids),
        )
    ).scalars()
    return {str(c).lower() for c in found}


def _logged_deletes(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> sa.Select[Any]:
    """Local deletes of these Dynamics ids still in the capture log: pushes on their
    way, like the queue's delete entries (the log is folded into the queue later)."""
    c = sync_change.c
    return sa.select(
        c.crm_id.label("crm_id"),
        c.record_id.label("record_id"),
        sa.literal(Operation.DELETE, sa.String).label("operation"),
        sa.false().label("marked"),
    ).where(c.object == spec.name, c.deleted.is_(True), id_in(conn, c.crm_id, crm_ids))


def _crm_version(payload: Any) -> Any:
    return sa.func.coalesce(payload["version"].as_float(), _AFTER_ALL)


def stage(
    conn: Connection,
    rows: Sequence[dict[str, Any]],
    changed: Mapping[str, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> None:
    """Insert ``from_crm`` entries, coalescing with pending ones of the same records.

    An entry already holding a newer change (higher ``versionnumber``) is left as it
    is. A parked entry that receives a newer change is queued again, like a local edit
    of a parked record. Each row staged gets a ``pulled`` event: ``changed`` gives, by
    record key, the local ``fields`` and Dynamics ``attributes`` that changed.
    """
    if not rows:
        return
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_queue)
    q, new = sync_queue.c, insert.excluded
    parked = q.state == EntryState.PARKED
    upsert = insert.on_conflict_do_update(
        index_elements=["object", "direction", "record_key"],
        set_={
            "payload": new.payload,
            "operation": sa.case(
                (
                    (q.operation == Operation.INSERT) & (new.operation == Operation.UPDATE),
                    Operation.INSERT,
                ),
                else_=new.operation,
            ),
            "record_id": sa.func.coalesce(new.record_id, q.record_id),
            "label": new.label,
            "last_changed_at": new.last_changed_at,
            "version": q.version + 1,
            "state": EntryState.PENDING,
            "attempts": sa.case((parked, 0), else_=q.attempts),
            "next_attempt_at": sa.case((parked, new.next_attempt_at), else_=q.next_attempt_at),
        },
        where=_crm_version(q.payload) < _crm_version(new.payload),
    )
    if not history.enabled():
        conn.execute(upsert, rows)
        return
    # The rows taken (a newer change already waiting keeps one out): their events.
    taken = conn.execute(upsert.returning(q.object, q.record_key), rows).all()
    history.write(conn, _pulled(rows, {(o, k) for o, k in taken}, changed or {}, now))


def _pulled(
    rows: Sequence[dict[str, Any]],
    taken: set[tuple[str, str]],
    changed: Mapping[str, Mapping[str, Any]],
    now: datetime | None,
) -> list[dict[str, Any]]:
    """The ``pulled`` events of the rows ``stage`` took."""
    events = []
    for r in rows:
        if (r["object"], r["record_key"]) not in taken:
            continue
        payload = r["payload"] or {}
        what = changed.get(r["record_key"], {})
        detail = {"modifiedby": payload.get("modified_by"), "version": payload.get("version")}
        if what.get("attributes"):
            detail["attributes"] = list(what["attributes"])
        events.append(
            history.event(
                r["object"],
                history.key_of(r["record_id"], r["record_key"]),
                EventKind.PULLED,
                now or r["last_changed_at"],
                direction=Direction.FROM_CRM,
                operation=r["operation"],
                fields=what.get("fields"),
                detail=detail,
            )
        )
    return events


def exclude(conn: Connection, spec: ObjectSpec, known: Mapping[str, Known], now: datetime) -> None:
    """Remember that the sync filter excludes these synced records, and drop the
    Dynamics changes of theirs still waiting to be applied (older than the exclusion),
    resolving the errors of any that had failed: nothing is left to retry.

    Their local rows stay; their local changes are skipped by the push plan until
    Dynamics includes them again."""
    synced = {c: k for c, k in known.items() if k.synced_values is not None and not k.excluded}
    if not synced:
        return
    ids = [k.record_id for k in synced.values()]
    r, q = sync_record.c, sync_queue.c
    conn.execute(
        sa.update(sync_record)
        .where(r.object == spec.name, r.record_id.in_(ids))
        .values(excluded=True)
    )
    history.write(
        conn,
        (
            history.event(
                spec.name,
                str(k.record_id),
                EventKind.EXCLUDED,
                now,
                direction=Direction.FROM_CRM,
                detail={"crm_id": crm_id},
            )
            for crm_id, k in sorted(synced.items())
        ),
    )
    dropped = conn.execute(
        sa.delete(sync_queue)
        .where(
            q.object == spec.name,
            q.direction == Direction.FROM_CRM,
            q.state == EntryState.PENDING,
            q.record_key.in_(list(synced)),
            sa.or_(q.claimed_until.is_(None), q.claimed_until < now),
        )
        .returning(q.record_key)
    ).scalars()
    queue.resolve(conn, {(spec.name, Direction.FROM_CRM, key) for key in dropped}, now)


def vanished(
    conn: Connection, spec: ObjectSpec, seen: set[str], started_at: datetime
) -> list[tuple[int, str]]:
    """Local records synced before a full read began that the read did not return.

    Only records with sync state count (records crmsync never synced are not its to
    delete), and not those with local changes on their way (their push decides).
    """
    table, r, q = local_table(spec), sync_record.c, sync_queue.c
    c = sync_change.c
    pending_push = (
        sa.select(sa.literal(1))
        .where(
            q.object == spec.name,
            q.direction == Direction.TO_CRM,
            q.record_key == sa.cast(table.c.id, sa.String),
        )
        .exists()
    ) | (sa.select(sa.literal(1)).where(c.object == spec.name, c.record_id == table.c.id).exists())
    rows = conn.execute(
        sa.select(table.c.id, table.c.crm_id)
        .join(sync_record, (r.object == spec.name) & (r.record_id == table.c.id))
        .where(
            table.c.crm_id.is_not(None),
            ~_marked(spec, table),
            r.last_synced_at < started_at,
            # Excluded records no longer follow Dynamics, deletions included.
            r.excluded.is_(False),
            ~pending_push,
        )
    ).all()
    return [(i, c.lower()) for i, c in rows if c.lower() not in seen]
