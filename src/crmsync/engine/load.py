"""The initial load's bulk path: records the store has never seen, inserted page by page.

During a full read (the first pull of an object, or a reconciliation) most records are
new to the store. For such a record the apply plan could only be "insert Dynamics'
values": there is no local side to conflict with, no push in flight, nothing to echo.
So instead of a queue entry each, a page's new records go into the local table and
``sync_record`` at once, in the transaction that stages the rest of the page (and, on
the last page, saves the delta link), with capture suppressed so nothing goes back.

What is known to the store in any way (a local row or a push in flight holding the id),
excluded by the sync filter, not fitting a local column, or waiting for a parent that
is not local goes the ordinary way, through the queue, where it is decided record by
record. If the database refuses the bulk insert (another worker inserted one of the
records first, a local constraint), the whole page goes the ordinary way too.

The work per record in Python is kept to the checks, done column by column over the
page. The rows go to the database many per statement (multi-row ``VALUES`` straight
through the driver: no per-row trip through SQLAlchemy, no per-row ``executemany`` step
handing the GIL back and forth with the event loop thread that parses the next page),
the sync state is joined to the inserted rows by ``crm_id`` in SQL, and the synced
values are built by the database from the inserted row (``json_object``) instead of
being JSON-encoded in Python per record.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError

from crmsync.domain import ObjectSpec
from crmsync.engine import changes as ch
from crmsync.store import queue
from crmsync.store.db import capture_suppressed
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_change, sync_queue, sync_tombstone

# Rows per INSERT statement: enough that a statement's own cost vanishes, few enough
# that its text stays small and its prepared form is reused page after page.
ROWS_PER_STATEMENT = 1000
_fromisoformat = datetime.fromisoformat
_TEXT_OR_NONE = {str, type(None)}


@dataclass(frozen=True)
class Loaded:
    """What ``insert_new`` did with a page: the Dynamics ids it inserted, and the rows
    (as Dynamics sent them) left for the ordinary path, and the ids needing nothing."""

    inserted: list[str]
    rest: list[dict[str, Any]]
    # Known records the store holds at the version read (a reconciliation's bulk): no
    # work, but seen (what a full read does not return is gone).
    settled: list[str] = field(default_factory=list)


def id_in(conn: Connection, column: sa.ColumnElement[Any], ids: Iterable[str | int]) -> Any:
    """``column IN ids`` with the ids as ONE parameter: ``in_()`` with thousands of
    values costs more in SQLAlchemy's parameter expansion than the lookup in the
    database."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(ids), type_=ARRAY(column.type)))
    each = sa.func.json_each(sa.bindparam(None, json.dumps(list(ids)), type_=sa.String))
    return column.in_(sa.select(each.table_valued("value").c.value))


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
        at = None if excluded is None or excluded else (version or ch.version_of(etag))
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
            q.object == spec.name, q.direction == "to_crm", id_in(conn, q.crm_id, crm_ids)
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


def held_at_version(
    rows: Sequence[Mapping[str, Any]],
    ids: Sequence[str],
    synced: Mapping[str, int],
    filter_field: str | None,
) -> set[int]:
    """Positions of a full read's ``rows`` that the store already holds at that version
    (their sync state has this ``versionnumber`` or a later one; ``synced`` as
    ``known_ids`` gives it) and that the filter does not exclude: for them
    ``changes.stage_operation`` would stage nothing, so a reconciliation sets them aside
    before any work per record (no ``Change``, no synced values decoded)."""
    out: set[int] = set()
    if not synced:
        return out
    for i, crm_id in enumerate(ids):
        at = synced.get(crm_id)
        if at is None:
            continue
        row = rows[i]
        if filter_field is not None and row.get(filter_field) is False:
            continue  # the ordinary path remembers the exclusion
        version = row.get(ch.VERSION)
        if type(version) is not int:
            version = ch.row_version(row)
        if version is not None and version <= at:
            out.add(i)
    return out


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
        moment = ch.parse_time(text) if isinstance(text, str) else None
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


def insert_new(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    spec: ObjectSpec,
    rows: Sequence[dict[str, Any]],
    filter_field: str | None,
    now: datetime,
) -> Loaded:
    """Insert the records of a full read's page that the store has never seen, with
    their sync state, in the caller's transaction (see the module docstring)."""
    if not rows:
        return Loaded([], [])
    table = local_table(spec)
    key = spec.primary_key
    ids = [str(r[key]).lower() for r in rows]
    known, synced = known_ids(conn, spec, ids)
    same = held_at_version(rows, ids, synced, filter_field)
    settled = [ids[i] for i in sorted(same)]
    if same:
        rows = [r for i, r in enumerate(rows) if i not in same]
        ids = [i for j, i in enumerate(ids) if j not in same]
    # Text columns without a length take any text; every pulled field is a text
    # column today, and a value of another kind goes the ordinary way.
    fields = [
        (c, a, getattr(table.c[c].type, "length", None) or sys.maxsize)
        for c, a in ch.pulled_fields(spec).items()
    ]
    lookups = [
        (lk.column, lk.value_attribute, lk.target)
        for lk in spec.lookups
        if spec.flow_for(lk.column).pulls
    ]
    parents: dict[tuple[str, str], int] = {}
    if lookups:
        wanted: dict[str, set[str]] = {}
        for row in rows:
            for _, attr, target in lookups:
                if row.get(attr):
                    wanted.setdefault(target, set()).add(str(row[attr]).lower())
        parents = local_parents(conn, specs, wanted)
    # Column by column: a comprehension per column costs a fraction of a Python loop
    # per record, and this is the part of the initial load that runs per record.
    picked = [i for i, crm_id in enumerate(ids) if crm_id not in known]
    if filter_field is not None:
        # Only an explicit No excludes; the ordinary path decides what that means.
        picked = [i for i in picked if rows[i].get(filter_field) is not False]
    new = [rows[i] for i in picked]
    unfit: set[int] = set()  # positions in ``new`` left for the ordinary path
    values: list[list[Any]] = []
    for _, attr, length in fields:
        column = [r.get(attr) for r in new]
        # Text that fits, as apply's ``_fits`` checks it; the ordinary path parks
        # anything else with the reason.
        if not _all_text_within(column, length):
            unfit.update(
                j
                for j, v in enumerate(column)
                if v is not None and (type(v) is not str or len(v) > length)
            )
        values.append(column)
    for _, attr, target in lookups:
        given = [r.get(attr) for r in new]
        local = [parents.get((target, str(v).lower())) if v else None for v in given]
        # A parent that is not local (yet): the queue waits for it.
        unfit.update(
            j for j, (v, p) in enumerate(zip(given, local, strict=True)) if v and p is None
        )
        values.append(local)
    sqlite = conn.dialect.name == "sqlite"
    versions = [r.get(ch.VERSION) for r in new]
    etags = [r.get("@odata.etag") for r in new]
    new_ids = [ids[i] for i in picked]
    local_rows = list(zip(*values, new_ids, strict=True))
    states = list(
        zip(
            new_ids,
            [e if type(e) is str else None for e in etags],
            [
                v if type(v) is int else ch.row_version(r)
                for v, r in zip(versions, new, strict=True)
            ],
            stored_times([r.get(ch.MODIFIED_ON) for r in new], sqlite),
            strict=True,
        )
    )
    if unfit:
        local_rows = [x for j, x in enumerate(local_rows) if j not in unfit]
        states = [x for j, x in enumerate(states) if j not in unfit]
        picked = [i for j, i in enumerate(picked) if j not in unfit]
    if not picked:
        return Loaded([], list(rows), settled)
    columns = [c for c, _, _ in fields] + [c for c, _, _ in lookups]
    try:
        with capture_suppressed(conn), conn.begin_nested():
            _write(conn, spec, columns, local_rows, states, now)
            queue.count_synced(conn, {(spec.name, "from_crm", "insert"): len(picked)}, now)
    except DBAPIError:
        return Loaded([], list(rows), settled)
    taken = set(picked)
    rest = [r for i, r in enumerate(rows) if i not in taken]
    return Loaded([ids[i] for i in picked], rest, settled)


def _all_text_within(column: Sequence[Any], length: int) -> bool:
    """Whether every value is None or text of at most ``length`` characters, answered
    by builtins looping in C (the usual case; the caller then skips its own check)."""
    if not set(map(type, column)) <= _TEXT_OR_NONE:
        return False
    return length == sys.maxsize or max(map(len, filter(None, column)), default=0) <= length


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
) -> None:
    """Insert the local rows, then their sync state joined to them by ``crm_id`` (ids
    from the database, nothing looked up in Python), many rows per statement straight
    through the driver: SQLAlchemy's per-parameter processing and ``executemany``'s
    per-row step cost more than the inserts. Names come from the schema; every value
    is a bound parameter."""
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
    stamp = now if pg else now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
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
    step = _max_rows(conn, 4)
    for start in range(0, len(states), step):
        part = states[start : start + step]
        conn.exec_driver_sql(
            f"WITH v (crm_id, etag, version, modified) AS (VALUES {marks(4, len(part))})"
            " INSERT INTO sync_record (object, record_id, crm_id, etag, crm_version,"
            f" crm_modified_at, last_synced_at, synced_values) {select}",
            (*chain.from_iterable(part), spec.name, stamp),
        )
