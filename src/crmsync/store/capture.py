"""Change capture: triggers log every local write; ``fold`` queues what they logged.

- **Triggers** on each pushed object's table append one row to ``sync_change`` in the
  writer's transaction, whoever writes: a rolled-back write leaves none, a committed one
  always one. Updates of no pushed column, and writes with capture suppressed
  (``db.suppress_capture``), are not logged. ``install_triggers`` (``db upgrade``)
  makes them match the registry; ``ensure_triggers`` (worker and ``serve`` start) does
  so only if the installed ones differ.
- **The fold** moves logged changes into ``sync_queue``, oldest first, deleting them in
  the transaction that queues them: a change is in the log or in the queue, never
  neither. One entry per (object, direction, record); the rules are beside ``fold``.
  On PostgreSQL one folder at a time (an advisory lock). Writers fold (claims, applies,
  the upkeep); readers count the unfolded tail as folded (``store.backlog``).
"""

from __future__ import annotations

import functools
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import ARRAY

from crmsync.domain import Direction, EntryState, EventKind, ObjectSpec, Operation
from crmsync.mapping import active, spec_of
from crmsync.mapping.compare import differs_from_base
from crmsync.store import history, planner_stats
from crmsync.store.db import write_transaction
from crmsync.store.local_tables import local_table
from crmsync.store.pgarrays import id_in, unnest
from crmsync.store.schema import sync_change, sync_error, sync_queue, sync_record
from crmsync.store.types import SQLITE_NOW, UTCDateTime

PREFIX = "crmsync_capture_"
OPS = tuple(Operation)
IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# ``sync_queue.label`` and ``sync_change.label``: longer labels (an account's name may
# have 400 characters) are cut, or PostgreSQL would refuse the write or the fold.
LABEL_MAX = 300
# Changes folded per transaction: on SQLite the fold holds the write lock meanwhile, so
# a batch is kept to tens of milliseconds.
FOLD_BATCH = 2_000
# One folder at a time on PostgreSQL (pg_advisory_xact_lock's key: "crmsync fold").
FOLD_LOCK = 0x63726D73_666F6C64
# How long a worker folds before it claims or applies a batch (the rest of a long log is
# folded by its next batches).
BATCH_FOLD_SECONDS = 0.5
# A long fold looks at the planner's statistics every this many batches (PostgreSQL).
STATS_BATCHES = 5
# Dead rows left in the log by folding that make ``shrink`` vacuum it (PostgreSQL).
SHRINK_ROWS = 20_000

_QUEUE_COLUMNS = (
    "object, direction, record_key, record_id, crm_id, operation, label, state,"
    " first_queued_at, last_changed_at, version, attempts, next_attempt_at"
)
# Refreshing an entry: the bound values win, except an id a worker already chose. A
# parked entry is due again with its attempts reset, and so is one that becomes a
# delete: whatever its update waited for (a retry's backoff, a paused pull), the delete
# is another request and needs none of it.
_AGAIN = (
    "sync_queue.state = 'parked'"
    " OR (excluded.operation = 'delete' AND sync_queue.operation <> 'delete')"
)
_REFRESH = (
    " ON CONFLICT (object, direction, record_key) DO UPDATE SET"
    " crm_id = COALESCE(excluded.crm_id, sync_queue.crm_id), label = excluded.label,"
    " last_changed_at = excluded.last_changed_at, version = sync_queue.version + 1,"
    " operation = excluded.operation, state = 'pending',"
    f" attempts = CASE WHEN {_AGAIN} THEN 0 ELSE sync_queue.attempts END,"
    f" next_attempt_at = CASE WHEN {_AGAIN} THEN excluded.next_attempt_at"
    " ELSE sync_queue.next_attempt_at END"
)
_TIMES = (
    sa.bindparam("first_at", type_=UTCDateTime()),
    sa.bindparam("last_at", type_=UTCDateTime()),
)


def _ident(name: str) -> str:
    # Trigger DDL cannot take bind parameters; every identifier in it comes from the
    # registry and must be a plain lower-case SQL name.
    if not IDENT.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


# --- the triggers ------------------------------------------------------------------------


def _log_row(spec: ObjectSpec, op: str, now: str, false: str, true: str) -> str:
    _ident(spec.name), _ident(spec.label_column)
    # An attached table's own names for crmsync's id and crm_id.
    rid, crm_id = _ident(spec.id_column), _ident(spec.crm_id_column)
    if op == Operation.DELETE:
        label = f"substr(OLD.{spec.label_column}, 1, {LABEL_MAX})"
        values = f"'{spec.name}', OLD.{rid}, {true}, OLD.{crm_id}, {label}, {now}"
    else:
        values = f"'{spec.name}', NEW.{rid}, {false}, NULL, NULL, {now}"
    return (
        "INSERT INTO sync_change (object, record_id, deleted, crm_id, label, changed_at)"
        f" VALUES ({values})"
    )


def _changed(spec: ObjectSpec, neq: str) -> str:
    # Column by column: both databases stop at the first column that differs (a row
    # comparison measured no faster on a 40-column object: bench/capture.py --object wide).
    cols = [_ident(c) for c in spec.columns if spec.flow_for(c).pushes]
    return " OR ".join(f"OLD.{c} {neq} NEW.{c}" for c in cols) or "FALSE"


def sqlite_ddl(spec: ObjectSpec) -> list[str]:
    """SQLite compiles a WHEN clause into the writing statement: it costs nothing extra."""
    out = []
    for op in OPS:
        when = "NOT EXISTS (SELECT 1 FROM sync_suppress)"
        if op == Operation.UPDATE:
            when += f" AND ({_changed(spec, 'IS NOT')})"
        out.append(
            f"CREATE TRIGGER {PREFIX}{_ident(spec.table)}_{op}"
            f" AFTER {op.upper()} ON {spec.table}\n"
            f"FOR EACH ROW WHEN {when}\n"
            f"BEGIN\n{_log_row(spec, op, SQLITE_NOW, '0', '1')};\nEND"
        )
    return out


def postgres_ddl(spec: ObjectSpec) -> list[str]:
    """Triggers with no WHEN clause: the tests open the function body instead.

    PostgreSQL keeps a WHEN clause as stored text and plans it again at the start of
    every statement that fires the trigger, which cost about 20 µs a write; a test in a
    plpgsql body is planned once a session.
    """
    out = []
    for op in OPS:
        fn = f"{PREFIX}{_ident(spec.table)}_{op}"
        skip = "current_setting('crmsync.suppress', true) IS NOT DISTINCT FROM 'on'"
        if op == Operation.UPDATE:
            skip += f" OR NOT ({_changed(spec, 'IS DISTINCT FROM')})"
        out.append(
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"BEGIN\n  IF {skip} THEN\n    RETURN NULL;\n  END IF;\n"
            f"  {_log_row(spec, op, 'now()', 'false', 'true')};\n  RETURN NULL;\nEND\n$fn$"
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
            name = f"{PREFIX}{_ident(table)}_{op}"
            if sqlite:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
            else:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
                conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))


def install_triggers(conn: Connection, specs: Iterable[ObjectSpec]) -> list[str]:
    """Make the capture triggers match the registry; returns the captured objects.

    Objects that do not push (from Dynamics only) get no triggers at all. Their changes
    already logged are still folded: the log was written when they did push.
    """
    specs = list(specs)
    drop_triggers(conn, [s.table for s in specs])
    _drop_orphans(conn)
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


def _drop_orphans(conn: Connection) -> None:
    """Drop the capture triggers left on tables no mapped object has any more (an object
    taken out of the mapping, an attached object given another table): they would log
    changes nothing folds."""
    like = PREFIX.replace("_", "\\_") + "%"
    if conn.dialect.name == "sqlite":
        names = conn.execute(
            text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                f" AND name LIKE '{like}' ESCAPE '\\'"
            )
        ).scalars()
        for name in list(names):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {_ident(name)}"))
        return
    found = conn.execute(
        text(
            "SELECT t.tgname, c.relname FROM pg_trigger AS t JOIN pg_class AS c"
            f" ON c.oid = t.tgrelid WHERE t.tgname LIKE '{like}' AND NOT t.tgisinternal"
        )
    ).all()
    for name, table in found:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {_ident(name)} ON {_ident(table)}"))
        conn.execute(text(f"DROP FUNCTION IF EXISTS {_ident(name)}()"))


# pg_advisory_xact_lock's key for bringing the triggers to the registry: "crmsync trig".
TRIGGER_LOCK = 0x63726D73_74726967


def expected_triggers(dialect: str, specs: Iterable[ObjectSpec]) -> dict[str, str]:
    """Trigger (SQLite) or trigger function (PostgreSQL) name -> the text the database
    keeps for it (SQLite's ``sqlite_master.sql``, PostgreSQL's ``pg_proc.prosrc``), for
    the registry's pushed objects; objects that do not push have none."""
    out: dict[str, str] = {}
    for spec in specs:
        if not spec.flow.pushes:
            continue
        if dialect == "sqlite":
            texts = sqlite_ddl(spec)
        else:  # each function's body, between its $fn$ quotes
            texts = [ddl.split("$fn$")[1] for ddl in postgres_ddl(spec)[::2]]
        for op, kept in zip(OPS, texts, strict=True):
            out[f"{PREFIX}{spec.table}_{op}"] = kept
    return out


def installed_triggers(conn: Connection) -> dict[str, str]:
    """The capture triggers as the database holds them, shaped as ``expected_triggers``.

    On PostgreSQL a trigger function counts only while its trigger exists."""
    like = PREFIX.replace("_", "\\_") + "%"
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                f" AND name LIKE '{like}' ESCAPE '\\'"
            )
        )
    else:
        rows = conn.execute(
            text(
                "SELECT p.proname, p.prosrc FROM pg_proc AS p"
                " JOIN pg_trigger AS t ON t.tgfoid = p.oid AND t.tgname = p.proname"
                f" WHERE p.proname LIKE '{like}' AND NOT t.tgisinternal"
            )
        )
    return {str(name): str(body) for name, body in rows}


def ensure_triggers(engine: Engine, specs: Iterable[ObjectSpec]) -> list[str] | None:
    """Bring the capture triggers to the registry's flows if they differ; returns the
    captured objects when it (re)installed them, None when they already matched.

    Reading first keeps the usual start free of DDL (dropping a trigger locks its table
    against every writer). Installing is one transaction; several processes starting
    at once take turns (PostgreSQL: an advisory lock; SQLite: its single writer) and
    look again under it, so the triggers are installed once and never seen half done.
    """
    specs = list(specs)
    expected = expected_triggers(engine.dialect.name, specs)
    with engine.connect() as conn:
        if installed_triggers(conn) == expected:
            return None
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": TRIGGER_LOCK})
        if installed_triggers(conn) == expected:
            return None
        return install_triggers(conn, specs)


# --- the fold -----------------------------------------------------------------------------


def _touch(obj: str) -> sa.TextClause:
    spec = spec_of(obj)
    return _touch_statement(obj, spec.table, spec.label_column, spec.id_column, spec.crm_id_column)


@functools.cache
def _touch_statement(
    obj: str, table: str, label: str, id_column: str = "id", crm_id_column: str = "crm_id"
) -> sa.TextClause:
    """Create or refresh ``obj``'s entry from the record as it is now.

    Its Dynamics id is the row's, else the one its last sync recorded: a push that
    finishes saves both in one transaction, so the second is only a safeguard.
    """
    table, label, name = _ident(table), _ident(label), _ident(obj)
    rid = f"t.{_ident(id_column)}"
    crm_id = f"COALESCE(t.{_ident(crm_id_column)}, r.crm_id)"
    return text(
        f"INSERT INTO sync_queue ({_QUEUE_COLUMNS})"
        f" SELECT '{name}', 'to_crm', CAST({rid} AS VARCHAR(40)), {rid}, {crm_id},"
        f" CASE WHEN {crm_id} IS NULL THEN 'insert' ELSE 'update' END,"
        f" substr(t.{label}, 1, {LABEL_MAX}),"
        " 'pending', :first_at, :last_at, 1, 0, :first_at"
        f" FROM {table} AS t LEFT JOIN sync_record AS r"
        f" ON r.object = '{name}' AND r.record_id = {rid}"
        f" WHERE {rid} = :record_id" + _REFRESH
    ).bindparams(*_TIMES)


_ENTRY = "object = :object AND direction = 'to_crm' AND record_key = :record_key"
# The Dynamics id a delete carries: the record's own when deleted, else the one a worker
# chose for its entry (the refresh keeps it), else the one its last sync recorded (a
# push that finished after the delete was logged but before it was folded).
_SYNCED_ID = (
    "(SELECT r.crm_id FROM sync_record AS r WHERE r.object = :object AND r.record_id = :record_id)"
)
_DROP = text(
    f"DELETE FROM sync_queue WHERE {_ENTRY} AND crm_id IS NULL"
    f" AND COALESCE(CAST(:crm_id AS VARCHAR(36)), {_SYNCED_ID}) IS NULL"
)
_DELETE = text(
    f"INSERT INTO sync_queue ({_QUEUE_COLUMNS})"
    " SELECT CAST(:object AS VARCHAR(32)), 'to_crm', CAST(:record_key AS VARCHAR(40)),"
    f" CAST(:record_id AS BIGINT), d.crm_id, 'delete', CAST(:label AS VARCHAR({LABEL_MAX})),"
    " 'pending', :first_at, :last_at, 1, 0, :first_at"
    f" FROM (SELECT COALESCE(CAST(:crm_id AS VARCHAR(36)), {_SYNCED_ID}) AS crm_id) AS d"
    f" WHERE d.crm_id IS NOT NULL OR EXISTS (SELECT 1 FROM sync_queue WHERE {_ENTRY})" + _REFRESH
).bindparams(*_TIMES)


def _take(limit: int, objects: Sequence[str]) -> Any:
    c = sync_change.c
    oldest = sa.select(c.seq).where(c.object.in_(objects)).order_by(c.seq).limit(limit)
    return (
        sa.delete(sync_change)
        .where(c.seq.in_(oldest))
        .returning(c.seq, c.object, c.record_id, c.deleted, c.crm_id, c.label, c.changed_at)
    )


def _steps(rows: Sequence[Any]) -> list[list[dict[str, Any]]]:
    """Each record's changes as steps in capture order: a run of inserts and updates is
    one step (they all queue the record as it is now), each delete is one."""
    per_record: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r.seq):
        steps = per_record[(r.object, r.record_id)]
        if steps and not r.deleted and not steps[-1]["deleted"]:
            steps[-1]["last_at"] = r.changed_at
            steps[-1]["writes"] += 1
            continue
        steps.append(
            {
                "object": r.object,
                "record_id": r.record_id,
                "record_key": str(r.record_id),
                "deleted": r.deleted,
                "crm_id": r.crm_id,
                "label": r.label,
                "first_at": r.changed_at,
                "last_at": r.changed_at,
                "writes": 1,
            }
        )
    return list(per_record.values())


def _lock_entries(conn: Connection, steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """PostgreSQL: wait for a worker finishing any of these records' entries, and keep
    the next one out until this fold commits; returns the steps whose entry is parked
    (the fold queues it again).

    The fold's statements read the record's row and its sync state from a snapshot
    taken when they start. A push finishing meanwhile (it saves the Dynamics id in the
    sync state and on the row, and removes the entry) would otherwise commit under the
    fold's feet: the entry it removes makes room for the fold's insert, built from the
    older snapshot, which has no Dynamics id (a delete then sent to nobody, an update
    queued as an insert). Once the entry is locked here, the finish has either
    committed (and the fold's next statements see it) or waits for this fold, then sees
    the entry's version moved and keeps it.
    """
    keys = sorted({(s["object"], s["record_key"]) for s in steps})
    rows = conn.execute(
        _lock_statement(),
        {"locked_object": [k[0] for k in keys], "locked_record_key": [k[1] for k in keys]},
    ).all()
    parked = {(r[0], r[1]) for r in rows if r[0] is not None}
    return [s for s in steps if (s["object"], s["record_key"]) in parked]


@functools.cache
def _lock_statement() -> sa.Select[Any]:
    q = sync_queue.c
    keys = unnest("locked", object=sa.String(), record_key=sa.String())
    # Only a parked entry's key comes back (nulls for the others, most of them): reading
    # every key made the statement 20% slower.
    parked = q.state == EntryState.PARKED
    return (
        sa.select(sa.case((parked, q.object)), sa.case((parked, q.record_key)))
        .join_from(
            sync_queue, keys, (q.object == keys.c.object) & (q.record_key == keys.c.record_key)
        )
        .where(q.direction == Direction.TO_CRM)
        .order_by(q.id)
        .with_for_update(of=sync_queue)
    )


# What a logged change does to its record's entry: the entry keeps its first-queued
# time; an insert or update queues the record as it is then (``insert`` while it has no
# Dynamics id); a delete of a record never in Dynamics drops the entry, else becomes a
# ``delete``; a parked entry changed again, or one that becomes a delete, is due again
# with its attempts reset, its error's automatic retry moot (``retry_at`` cleared); every
# refresh bumps ``version``.
def fold(conn: Connection, limit: int = FOLD_BATCH) -> int:
    """Queue the oldest ``limit`` logged changes, in the caller's transaction; returns
    how many there were. The caller keeps other folders out (``fold_pending`` does)."""
    # Only the mapped objects' changes: a change logged for an object this process does
    # not map (taken out of the mapping, or a worker still on an older mapping during a
    # rollout) stays in the log for a process that maps it, rather than being lost or
    # stopping every other object's fold.
    taken = conn.execute(_take(limit, list(active()))).all()
    if not taken:
        return 0
    consumed = len(taken)
    records = _steps(taken)
    # Step k of every record, then step k + 1: records are independent of each other,
    # and one record's steps run in capture order.
    for k in range(max(len(steps) for steps in records)):
        touches: dict[str, list[dict[str, Any]]] = defaultdict(list)
        deletes: list[dict[str, Any]] = []
        for steps in records:
            if k < len(steps):
                step = steps[k]
                (deletes if step["deleted"] else touches[step["object"]]).append(step)
        folding = [*deletes, *(p for ps in touches.values() for p in ps)]
        # The records whose entry may be parked: on PostgreSQL those the lock found
        # parked (usually none: no statement), on SQLite every one of the step.
        parked = _lock_entries(conn, folding) if conn.dialect.name == "postgresql" else folding
        for obj, params in touches.items():
            conn.execute(_touch(obj), params)
        if deletes:
            conn.execute(_DROP, deletes)
            conn.execute(_DELETE, deletes)
        # After the entries' locks, as a push's outcome takes them (entries, then errors).
        _retries_moot(conn, parked)
        if history.enabled():
            history.write(conn, _captured(conn, touches, deletes))
    return consumed


def _retries_moot(conn: Connection, steps: Sequence[dict[str, Any]]) -> None:
    """The records' open ``to_crm`` errors lose their planned automatic retry
    (``retry_at``): the change just folded queues a parked entry now, so the time shown
    on Sync Errors, the record page, the CLI and the API would never come. The error
    itself stays open until the record syncs or fails again.

    One statement per object, probing each record's errors by their index: bounded by
    the step's size whatever the number of errors (a row-value ``IN`` scans them all on
    SQLite); none without records (on PostgreSQL the records the lock found parked), or
    on SQLite while no retry is planned at all. Only open errors keep a ``retry_at``
    (resolving or dismissing one clears it), so the status is not asked."""
    if not steps:
        return
    postgresql = conn.dialect.name == "postgresql"
    if not postgresql and conn.execute(_ANY_PLANNED).first() is None:
        return  # no retry planned at all: one probe of its index, not one per record
    by_object: dict[str, set[str]] = defaultdict(set)
    for s in steps:
        by_object[s["object"]].add(s["record_key"])
    for obj, keys in sorted(by_object.items()):
        conn.execute(_moot_statement(postgresql), {"moot_object": obj, "moot_keys": sorted(keys)})


_ANY_PLANNED = sa.select(sa.literal(1)).where(sync_error.c.retry_at.is_not(None)).limit(1)


@functools.cache
def _moot_statement(postgresql: bool) -> sa.Update:
    err = sync_error.c
    keys = (
        err.record_key == sa.func.any(sa.bindparam("moot_keys", type_=ARRAY(sa.String())))
        if postgresql  # one array: the statement stays the same whatever the step's size
        else err.record_key.in_(sa.bindparam("moot_keys", expanding=True))
    )
    return (
        sa.update(sync_error)
        .where(
            err.object == sa.bindparam("moot_object", type_=sa.String()),
            err.direction == Direction.TO_CRM,
            keys,
            err.retry_at.is_not(None),
        )
        .values(retry_at=None)
    )


def _captured(
    conn: Connection, touches: Mapping[str, Sequence[dict[str, Any]]], deletes: Sequence[Any]
) -> list[dict[str, Any]]:
    """The ``captured`` events of one fold step: a run of writes folded into one entry
    is one event (``detail.writes`` counts them), as the entry queued (insert or update).

    Its ``fields`` are worked out here, not by the triggers (they stay one short row a
    write, ``bench/capture.py``): the pushed columns whose value now differs from the
    last synced one (``sync_record.synced_values``), or for a record never synced those
    holding a value. Read with the entry, in the query that reads its operation: the
    record as the fold queues it, so a run of writes names its net change, and an
    update that restores the synced values names none (null).
    """
    q, r = sync_queue.c, sync_record.c
    events = []
    for obj, params in touches.items():
        spec = spec_of(obj)
        table = local_table(spec)
        pushed = [c for c in spec.columns if spec.flow_for(c).pushes]
        rows = conn.execute(
            sa.select(q.record_key, q.operation, table.c.id, r.synced_values)
            .add_columns(*(table.c[c] for c in pushed))
            .select_from(sync_queue)
            .outerjoin(table, table.c.id == q.record_id)
            .outerjoin(sync_record, (r.object == obj) & (r.record_id == q.record_id))
            .where(
                q.object == obj,
                q.direction == Direction.TO_CRM,
                q.record_key.in_([p["record_key"] for p in params]),
            )
        ).all()
        found = {row[0]: row for row in rows}
        for p in params:
            row = found.get(p["record_key"])
            if row is None:
                events.append(_captured_event(p, None, None))
                continue
            fields = None if row[2] is None else _changed_fields(spec, pushed, row[3], row[4:])
            events.append(_captured_event(p, row[1], fields))
    events += [_captured_event(d, Operation.DELETE, None) for d in deletes]
    return events


def _changed_fields(
    spec: ObjectSpec, pushed: Sequence[str], synced: Mapping[str, Any] | None, values: Any
) -> list[str] | None:
    local = dict(zip(pushed, values, strict=True))
    if synced is None:
        changed = [c for c in pushed if local[c] is not None]
    else:
        wanted = set(pushed)
        changed = [c for c in differs_from_base(spec, local, synced) if c in wanted]
    return sorted(changed) or None


def _captured_event(
    step: Mapping[str, Any], operation: str | None, fields: list[str] | None
) -> dict[str, Any]:
    writes = {"writes": step["writes"]} if step["writes"] > 1 else None
    return history.event(
        step["object"],
        step["record_key"],
        EventKind.CAPTURED,
        step["first_at"],
        direction=Direction.TO_CRM,
        operation=operation,
        fields=fields,
        detail=writes,
    )


def fold_pending(
    engine: Engine,
    *,
    wait: bool = True,
    max_seconds: float | None = None,
    batch: int = FOLD_BATCH,
    pause: float = 0.0,
) -> int:
    """Fold the log in batches until it is empty; returns how many changes were folded.

    ``wait=False`` returns at once if another process is folding (its fold does the
    work); ``max_seconds`` stops after the batch that used the time up; ``pause`` waits
    between batches (on SQLite, so that writers waiting for the lock get in).
    """
    if not has_changes(engine):
        return 0
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    total = batches = 0
    while True:
        if batches and batches % STATS_BATCHES == 0:
            planner_stats.refresh(engine)  # the queue this fold grows, the log it drains
        batches += 1
        with write_transaction(engine) as conn:
            if conn.dialect.name == "postgresql":
                if wait:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FOLD_LOCK})
                elif not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": FOLD_LOCK}
                ).scalar():
                    return total
            n = fold(conn, batch)
        total += n
        if n < batch or (deadline is not None and time.monotonic() >= deadline):
            return total
        if pause:
            time.sleep(pause)


def has_changes(conn_or_engine: Connection | Engine) -> bool:
    """Whether any captured change of a mapped object waits in the log."""
    query = _first_waiting()
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return conn.execute(query).first() is not None
    return conn_or_engine.execute(query).first() is not None


def _first_waiting() -> sa.Select[Any]:
    # In key order: on PostgreSQL an index probe, which skips the rows folded since the
    # last vacuum faster than a scan of the table's pages would.
    c = sync_change.c
    return sa.select(c.seq).where(c.object.in_(list(active()))).order_by(c.seq).limit(1)


def changes_waiting() -> sa.Exists:
    """``has_changes`` as a column expression, for a caller that asks it in a statement
    of its own (a claim, in the round trip that starts its transaction)."""
    return sa.exists(_first_waiting())


def logged_changes(
    conn: Connection, obj: str, record_ids: Iterable[int]
) -> dict[int, tuple[datetime, int]]:
    """The records of ``obj`` among ``record_ids`` with changes (not deletes) still in
    the log: the time of each one's latest, and its place in the log."""
    ids = sorted(set(record_ids))
    if not ids:
        return {}
    c = sync_change.c
    rows = conn.execute(
        sa.select(c.record_id, sa.func.max(c.changed_at), sa.func.max(c.seq))
        .where(c.object == obj, c.record_id.in_(ids), c.deleted.is_(False))
        .group_by(c.record_id)
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def forget_changes(conn: Connection, obj: str, upto: Mapping[int, int]) -> None:
    """Drop logged changes (not deletes) of ``obj``'s records up to the given place in
    the log, per record: a push they would have queued was made moot. A change logged
    later is newer than what made it moot, and stays."""
    if not upto:
        return
    c = sync_change.c
    # One read of the records' rows and one delete by key: the log has no index on the
    # record on SQLite (migration 0017), where a delete per record scanned it each time.
    found = conn.execute(
        sa.select(c.seq, c.record_id).where(
            c.object == obj,
            c.deleted.is_(False),
            id_in(conn, c.record_id, sorted(upto)),
            c.seq <= max(upto.values()),
        )
    )
    moot = sorted(seq for seq, record_id in found if seq <= upto[record_id])
    if moot:
        conn.execute(sa.delete(sync_change).where(id_in(conn, c.seq, moot)))


def shrink(engine: Engine) -> bool:
    """PostgreSQL: vacuum the log once folding has left ``SHRINK_ROWS`` dead rows in it.

    Every folded change leaves a dead row; autovacuum looks at a table once a minute,
    and by then a busy store has left hundreds of thousands that every probe of the log
    steps over. Vacuum takes no lock that capture or the fold needs.
    """
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        dead = conn.execute(
            text(
                "SELECT n_dead_tup FROM pg_stat_user_tables"
                " WHERE relid = CAST('sync_change' AS regclass)"
            )
        ).scalar()
    if (dead or 0) < SHRINK_ROWS:
        return False
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM sync_change"))
    return True
