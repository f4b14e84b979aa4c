"""Change capture: database triggers that queue every local write for Dynamics.

Each insert, update and delete on a pushed object's table creates or refreshes its
``to_crm`` entry in ``sync_queue`` inside the writer's own transaction, whoever the
writer is (the API, the CLI, or another program's plain SQL). The coalescing rules:

- one entry per (object, direction, record); it keeps its first-queued time;
- an insert followed by updates stays an insert; so does any change to a record that
  was never synced (its ``crm_id`` is still null);
- deleting a record that never reached Dynamics drops the entry (nothing to send),
  unless a worker already chose its Dynamics id and may have created it there (the
  entry then carries that id), in which case it becomes a delete;
- deleting a synced record becomes a delete carrying its ``crm_id``.

Updates that change none of the pushed columns are not captured, and neither is any
write made while capture is suppressed (``db.suppress_capture``).

Triggers are generated from the object registry, so making an object two-way in
configuration needs no code: ``install_triggers`` (run by ``crmsync db upgrade`` and at
worker start) drops and recreates them to match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

from crmsync.domain import ObjectSpec
from crmsync.store.types import SQLITE_NOW

PREFIX = "crmsync_capture_"
OPS = ("insert", "update", "delete")
DELETE = "'delete'"
IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class _Dialect:
    now: str
    cast_key: str  # expression for record_key from a row alias


SQLITE = _Dialect(now=SQLITE_NOW, cast_key="CAST({row}.id AS TEXT)")
POSTGRES = _Dialect(now="now()", cast_key="CAST({row}.id AS TEXT)")

_COLUMNS = (
    "object, direction, record_key, record_id, crm_id, operation, label, state,"
    " first_queued_at, last_changed_at, version, attempts, next_attempt_at"
)


def _upsert(spec: ObjectSpec, d: _Dialect, row: str, operation_sql: str) -> list[str]:
    """Create the entry, or refresh it, moving its operation and state if they changed.

    SQLite rewrites every index that covers a column named in an UPDATE's SET list,
    whatever the values; so there the refresh names only unindexed columns, and a second
    statement (which writes only in the rare case that the operation changes or the entry
    was parked) handles the rest. PostgreSQL compares values instead (an update leaving
    indexed columns as they were stays HOT), so one statement does it all.
    """
    refresh = (
        " ON CONFLICT (object, direction, record_key) DO UPDATE SET"
        " crm_id = COALESCE(excluded.crm_id, sync_queue.crm_id), label = excluded.label,"
        " last_changed_at = excluded.last_changed_at, version = sync_queue.version + 1"
    )
    insert = f"INSERT INTO sync_queue ({_COLUMNS}) VALUES ({_values(spec, d, row, operation_sql)})"
    parked = "sync_queue.state = 'parked'"
    if d is POSTGRES:
        return [
            insert + refresh + ", operation = excluded.operation, state = 'pending',"
            f" attempts = CASE WHEN {parked} THEN 0 ELSE sync_queue.attempts END,"
            f" next_attempt_at = CASE WHEN {parked} THEN excluded.next_attempt_at"
            " ELSE sync_queue.next_attempt_at END"
        ]
    key = d.cast_key.format(row=row)
    match = f"object = '{spec.name}' AND direction = 'to_crm' AND record_key = {key}"
    return [
        insert + refresh,
        f"UPDATE sync_queue SET operation = {operation_sql}, state = 'pending',"
        " attempts = CASE WHEN state = 'parked' THEN 0 ELSE attempts END,"
        f" next_attempt_at = CASE WHEN state = 'parked' THEN {d.now} ELSE next_attempt_at END"
        f" WHERE {match} AND (state = 'parked' OR operation <> {operation_sql})",
    ]


def _ident(name: str) -> str:
    # Trigger DDL cannot take bind parameters; every identifier in it comes from the
    # registry and must be a plain lower-case SQL name.
    if not IDENT.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def _values(spec: ObjectSpec, d: _Dialect, row: str, operation_sql: str) -> str:
    _ident(spec.name), _ident(spec.table), _ident(spec.label_column)
    key = d.cast_key.format(row=row)
    return (
        f"'{spec.name}', 'to_crm', {key}, {row}.id, {row}.crm_id, {operation_sql},"
        f" {row}.{spec.label_column}, 'pending', {d.now}, {d.now}, 1, 0, {d.now}"
    )


def _write_statements(spec: ObjectSpec, d: _Dialect, op: str) -> list[str]:
    """The SQL a trigger runs for ``op``, shared by both dialects."""
    if op in ("insert", "update"):
        # A record without a crm_id never reached Dynamics: whatever happened to it
        # before, sending it is an insert (an upsert under the id the worker chooses).
        return _upsert(
            spec, d, "NEW", "CASE WHEN NEW.crm_id IS NULL THEN 'insert' ELSE 'update' END"
        )
    key = d.cast_key.format(row="OLD")
    match = f"object = '{spec.name}' AND direction = 'to_crm' AND record_key = {key}"
    return [
        # Never reached Dynamics and no id chosen yet: nothing to send.
        f"DELETE FROM sync_queue WHERE {match} AND OLD.crm_id IS NULL AND crm_id IS NULL",
        # Otherwise a delete, carrying the record's id or the one a worker chose.
        f"INSERT INTO sync_queue ({_COLUMNS}) SELECT {_values(spec, d, 'OLD', DELETE)}"
        f" WHERE OLD.crm_id IS NOT NULL OR EXISTS (SELECT 1 FROM sync_queue WHERE {match})"
        " ON CONFLICT (object, direction, record_key) DO UPDATE SET"
        " crm_id = COALESCE(excluded.crm_id, sync_queue.crm_id), label = excluded.label,"
        " last_changed_at = excluded.last_changed_at, version = sync_queue.version + 1,"
        " operation = 'delete', state = 'pending',"
        " attempts = CASE WHEN sync_queue.state = 'parked' THEN 0 ELSE sync_queue.attempts END,"
        " next_attempt_at = CASE WHEN sync_queue.state = 'parked' THEN excluded.next_attempt_at"
        " ELSE sync_queue.next_attempt_at END",
    ]


def _changed(spec: ObjectSpec, neq: str) -> str:
    cols = [_ident(c) for c in spec.columns if spec.flow_for(c).pushes]
    return " OR ".join(f"OLD.{c} {neq} NEW.{c}" for c in cols) or "FALSE"


def sqlite_ddl(spec: ObjectSpec) -> list[str]:
    out = []
    for op in OPS:
        when = "NOT EXISTS (SELECT 1 FROM sync_suppress)"
        if op == "update":
            when += f" AND ({_changed(spec, 'IS NOT')})"
        body = ";\n".join(_write_statements(spec, SQLITE, op))
        out.append(
            f"CREATE TRIGGER {PREFIX}{spec.table}_{op} AFTER {op.upper()} ON {spec.table}\n"
            f"FOR EACH ROW WHEN {when}\nBEGIN\n{body};\nEND"
        )
    return out


def postgres_ddl(spec: ObjectSpec) -> list[str]:
    """Triggers with no WHEN clause: the tests open the function body instead.

    PostgreSQL keeps a WHEN clause as stored text and plans it again at the start of
    every statement that fires the trigger, which cost about 20 µs a write (more than
    the upsert's own index work); a test in a plpgsql body is planned once a session.
    """
    out = []
    for op in OPS:
        fn = f"{PREFIX}{spec.table}_{op}"
        body = ";\n  ".join(_write_statements(spec, POSTGRES, op))
        skip = "current_setting('crmsync.suppress', true) IS NOT DISTINCT FROM 'on'"
        if op == "update":
            skip += f" OR NOT ({_changed(spec, 'IS DISTINCT FROM')})"
        out.append(
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"BEGIN\n  IF {skip} THEN\n    RETURN NULL;\n  END IF;\n"
            f"  {body};\n  RETURN NULL;\nEND\n$fn$"
        )
        out.append(
            f"CREATE TRIGGER {fn} AFTER {op.upper()} ON {spec.table}\n"
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()"
        )
    return out


def drop_triggers(conn: Connection, tables: Iterable[str]) -> None:
    sqlite = conn.dialect.name == "sqlite"
    for table in tables:
        for op in OPS:
            name = f"{PREFIX}{table}_{op}"
            if sqlite:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
            else:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
                conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))


def install_triggers(conn: Connection, specs: Iterable[ObjectSpec]) -> list[str]:
    """Make the capture triggers match the registry; returns the captured objects.

    Objects that do not push (from Dynamics only) get no triggers at all.
    """
    specs = list(specs)
    drop_triggers(conn, [s.table for s in specs])
    captured = []
    sqlite = conn.dialect.name == "sqlite"
    # A suppression marker can only outlive its transaction through a crash mid-commit
    # on a foreign writer; clearing it here keeps capture from staying off.
    conn.execute(text("DELETE FROM sync_suppress"))
    for spec in specs:
        if not spec.flow.pushes:
            continue
        for ddl in sqlite_ddl(spec) if sqlite else postgres_ddl(spec):
            conn.execute(text(ddl))
        captured.append(spec.name)
    return captured
