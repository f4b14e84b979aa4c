"""Backlog counts kept exact by triggers on ``sync_queue``, so that reading them is instant.

Counting the pending entries off ``ix_sync_queue_backlog`` costs about a full scan; the
Sync Status views, ``/metrics`` and the backlog samples must not. So row triggers on
``sync_queue`` append a row ``(object, direction, operation, n = +1 or -1)`` to
``sync_backlog_count`` whenever an entry enters the backlog, leaves it, or moves between
groups (parked entries are not backlog). Appending never waits on another writer, unlike
a counter row every writer would lock, and it covers every writer of the queue without
touching its code (capture, the worker's outcomes, pull staging, retries, plain SQL).

A group's count is the sum of its rows; ``compact`` folds them into one row per group so
that the sum stays a read of a few dozen rows (``store.maintenance`` runs it every few
seconds). The triggers depend on no configuration: migration 0005 installs them once
and seeds the counts in the same transaction (``install``). The table has no key and no
index: a counted write adds one row at its end and nothing else.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import EntryState
from crmsync.store.schema import sync_backlog_count, sync_queue

TRIGGER = "crmsync_backlog_count"
COLUMNS = "object, direction, operation, n"
# An update moves an entry between groups only if one of these changes.
MOVES = ("state", "operation", "object", "direction")
NOT_PARKED = "{row}.state <> 'parked'"


def _row(row: str, n: int) -> str:
    return f"{row}.object, {row}.direction, {row}.operation, {n}"


def sqlite_ddl() -> list[str]:
    """SQLite: a WHEN clause costs nothing here (it is compiled into the statement)."""
    moved = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in MOVES)
    insert = f"INSERT INTO sync_backlog_count ({COLUMNS})"
    # Constant DDL: nothing in it comes from configuration or input.
    return [
        f"CREATE TRIGGER {TRIGGER}_insert AFTER INSERT ON sync_queue\n"  # noqa: S608
        f"FOR EACH ROW WHEN {NOT_PARKED.format(row='NEW')}\n"
        f"BEGIN\n{insert} VALUES ({_row('NEW', 1)});\nEND",
        f"CREATE TRIGGER {TRIGGER}_delete AFTER DELETE ON sync_queue\n"
        f"FOR EACH ROW WHEN {NOT_PARKED.format(row='OLD')}\n"
        f"BEGIN\n{insert} VALUES ({_row('OLD', -1)});\nEND",
        f"CREATE TRIGGER {TRIGGER}_update AFTER UPDATE OF {', '.join(MOVES)} ON sync_queue\n"
        f"FOR EACH ROW WHEN {moved}\n"
        f"BEGIN\n{insert}"
        f" SELECT {_row('OLD', -1)} WHERE {NOT_PARKED.format(row='OLD')}"
        f" UNION ALL SELECT {_row('NEW', 1)} WHERE {NOT_PARKED.format(row='NEW')};\nEND",
    ]


def _pg_function(name: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        f"BEGIN\n{body}\n  RETURN NULL;\nEND\n$fn$"
    )


def postgres_ddl() -> list[str]:
    """PostgreSQL: the tests are in the plpgsql body, not in a WHEN clause.

    A WHEN clause is planned again by every statement that fires the trigger (~20 µs a
    write, see ``store.capture``); a body's plans are cached for the session. The update
    trigger names its columns (``UPDATE OF``), so that a claim, a reschedule or a
    refresh of an entry's label does not call it at all; the capture's upsert does name
    ``operation`` and ``state``, and the body returns at its first test when they keep
    their values. TRUNCATE bypasses row triggers, hence the statement trigger for it.
    """
    insert = f"INSERT INTO sync_backlog_count ({COLUMNS}) VALUES"
    same = " AND ".join(f"OLD.{c} = NEW.{c}" for c in MOVES)
    bodies = {
        "insert": f"  IF {NOT_PARKED.format(row='NEW')} THEN\n"
        f"    {insert} ({_row('NEW', 1)});\n  END IF;",
        "delete": f"  IF {NOT_PARKED.format(row='OLD')} THEN\n"
        f"    {insert} ({_row('OLD', -1)});\n  END IF;",
        "update": f"  IF {same} THEN\n    RETURN NULL;\n  END IF;\n"
        f"  IF {NOT_PARKED.format(row='OLD')} THEN\n"
        f"    {insert} ({_row('OLD', -1)});\n  END IF;\n"
        f"  IF {NOT_PARKED.format(row='NEW')} THEN\n"
        f"    {insert} ({_row('NEW', 1)});\n  END IF;",
    }
    events = {"insert": "INSERT", "delete": "DELETE", "update": f"UPDATE OF {', '.join(MOVES)}"}
    out = []
    for op, body in bodies.items():
        out.append(_pg_function(f"{TRIGGER}_{op}", body))
        out.append(
            f"CREATE TRIGGER {TRIGGER}_{op} AFTER {events[op]} ON sync_queue\n"
            f"FOR EACH ROW EXECUTE FUNCTION {TRIGGER}_{op}()"
        )
    out.append(_pg_function(f"{TRIGGER}_truncate", "  TRUNCATE sync_backlog_count;"))
    out.append(
        f"CREATE TRIGGER {TRIGGER}_truncate AFTER TRUNCATE ON sync_queue\n"
        f"FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}_truncate()"
    )
    return out


def install(conn: Connection) -> None:
    """Create the triggers, then count the queue as it stands (same transaction)."""
    # One transaction for both: on PostgreSQL creating a trigger locks the queue against
    # writers until commit, so no write between the two is missed or counted twice.
    for ddl in sqlite_ddl() if conn.dialect.name == "sqlite" else postgres_ddl():
        conn.execute(sa.text(ddl))
    seed(conn)


def uninstall(conn: Connection) -> None:
    sqlite = conn.dialect.name == "sqlite"
    for op in ("insert", "delete", "update", "truncate"):
        name = f"{TRIGGER}_{op}"
        if sqlite:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON sync_queue"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))


def seed(conn: Connection) -> None:
    """Replace the counts with a count of the queue (an index scan: migration only)."""
    q = sync_queue.c
    conn.execute(sa.delete(sync_backlog_count))
    conn.execute(
        sa.insert(sync_backlog_count).from_select(
            ["object", "direction", "operation", "n"],
            sa.select(q.object, q.direction, q.operation, sa.func.count())
            .where(q.state != EntryState.PARKED)
            .group_by(q.object, q.direction, q.operation),
        )
    )


def sums(direction: str | None = None, obj: str | None = None) -> sa.Subquery:
    """The count per (object, direction, operation), groups at zero left out."""
    c = sync_backlog_count.c
    total = sa.func.sum(c.n)
    query = (
        sa.select(c.object, c.direction, c.operation, total.label("n"))
        .group_by(c.object, c.direction, c.operation)
        .having(total != 0)
    )
    if direction is not None:
        query = query.where(c.direction == direction)
    if obj is not None:
        query = query.where(c.object == obj)
    return query.subquery("backlog_sums")


def compact(conn: Connection) -> int:
    """Fold the rows into one per group (zeros dropped); returns how many rows there were
    beyond one per group (0: nothing to fold, nothing written).

    PostgreSQL: one statement deletes the rows it sees and inserts their sums, so a row
    appended meanwhile by another transaction is neither deleted nor summed, and two
    compactions at once never count a row twice (the second one skips the rows the
    first deleted). SQLite: the caller's write transaction excludes every other writer.
    """
    c = sync_backlog_count.c
    rows, groups = conn.execute(
        sa.select(
            sa.func.count(),
            sa.select(sa.func.count())
            .select_from(
                sa.select(c.object, c.direction, c.operation)
                .group_by(c.object, c.direction, c.operation)
                .subquery()
            )
            .scalar_subquery(),
        ).select_from(sync_backlog_count)
    ).one()
    if rows <= groups:
        return 0
    if conn.dialect.name == "postgresql":
        conn.execute(_fold())
    else:
        folded_rows = conn.execute(sa.select(sums())).all()
        conn.execute(sa.delete(sync_backlog_count))
        if folded_rows:
            conn.execute(
                sa.insert(sync_backlog_count),
                [
                    {"object": o, "direction": d, "operation": op, "n": int(n)}
                    for o, d, op, n in folded_rows
                ],
            )
    return int(rows - groups)


def _fold() -> sa.Insert:
    """PostgreSQL's fold, one statement: ``WITH gone AS (DELETE ... RETURNING) INSERT``."""
    c = sync_backlog_count.c
    gone = sa.delete(sync_backlog_count).returning(c.object, c.direction, c.operation, c.n)
    rows = gone.cte("gone")
    total = sa.func.sum(rows.c.n)
    folded = (
        sa.select(rows.c.object, rows.c.direction, rows.c.operation, total)
        .group_by(rows.c.object, rows.c.direction, rows.c.operation)
        .having(total != 0)
    )
    return sa.insert(sync_backlog_count).from_select(
        ["object", "direction", "operation", "n"], folded
    )


def shrink(engine: Engine) -> None:
    """PostgreSQL, after a large fold: give the table's dead pages back.

    Every read scans the whole table, and a fold of many rows leaves it mostly dead
    tuples; worse, the folded rows land on its last page (no free space was known),
    so even once vacuumed the empty pages before them stay and are read every time
    (4 ms at a million rows folded). So: vacuum (the early pages become free space),
    fold once more (the rows move to the first page), vacuum again (the empty tail is
    cut off). None of this blocks the queue's writers: vacuum takes no lock they
    need, and gives up cutting the tail rather than wait for them.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM sync_backlog_count"))
        conn.execute(_fold())
        conn.execute(sa.text("VACUUM sync_backlog_count"))
