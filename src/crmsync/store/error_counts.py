"""Counts of the open sync errors kept exact by triggers on ``sync_error``, so that the
summary heading every Sync Errors page reads a few rows instead of counting errors.

As ``store.backlog_counts`` does for the queue: row triggers append ``(object,
direction, error_code, category, field, n = +1 or -1)`` to ``sync_error_count``
whenever an error opens, stops being open (resolved, dismissed, deleted) or, while
open, changes group (a new failure with another code). Every writer of ``sync_error``
is covered without touching its code, in the writer's own transaction. ``compact``
folds the rows into one per group (upkeep, every few seconds); ``sums`` is the read.
Migration 0012 installs the triggers and seeds the counts in one transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import ErrorStatus
from crmsync.store.schema import sync_error, sync_error_count

TRIGGER = "crmsync_error_count"
GROUP = ("object", "direction", "error_code", "category", "field")
COLUMNS = ", ".join((*GROUP, "n"))
# An update moves an error between groups only if one of these changes.
MOVES = ("status", *GROUP)
OPEN = "{row}.status = '" + ErrorStatus.OPEN.value + "'"


def _row(row: str, n: int) -> str:
    return ", ".join([*(f"{row}.{c}" for c in GROUP), str(n)])


def sqlite_ddl() -> list[str]:
    moved = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in MOVES)
    insert = f"INSERT INTO sync_error_count ({COLUMNS})"
    # Constant DDL: nothing in it comes from configuration or input.
    return [
        f"CREATE TRIGGER {TRIGGER}_insert AFTER INSERT ON sync_error\n"  # noqa: S608
        f"FOR EACH ROW WHEN {OPEN.format(row='NEW')}\n"
        f"BEGIN\n{insert} VALUES ({_row('NEW', 1)});\nEND",
        f"CREATE TRIGGER {TRIGGER}_delete AFTER DELETE ON sync_error\n"
        f"FOR EACH ROW WHEN {OPEN.format(row='OLD')}\n"
        f"BEGIN\n{insert} VALUES ({_row('OLD', -1)});\nEND",
        f"CREATE TRIGGER {TRIGGER}_update AFTER UPDATE OF {', '.join(MOVES)} ON sync_error\n"
        f"FOR EACH ROW WHEN {moved}\n"
        f"BEGIN\n{insert}"
        f" SELECT {_row('OLD', -1)} WHERE {OPEN.format(row='OLD')}"
        f" UNION ALL SELECT {_row('NEW', 1)} WHERE {OPEN.format(row='NEW')};\nEND",
    ]


def _pg_function(name: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        f"BEGIN\n{body}\n  RETURN NULL;\nEND\n$fn$"
    )


def postgres_ddl() -> list[str]:
    """PostgreSQL: the tests in the plpgsql body (plans cached per session, see
    ``backlog_counts.postgres_ddl``); TRUNCATE clears the counts by a statement trigger."""
    insert = f"INSERT INTO sync_error_count ({COLUMNS}) VALUES"
    same = " AND ".join(f"OLD.{c} IS NOT DISTINCT FROM NEW.{c}" for c in MOVES)
    bodies = {
        "insert": f"  IF {OPEN.format(row='NEW')} THEN\n"
        f"    {insert} ({_row('NEW', 1)});\n  END IF;",
        "delete": f"  IF {OPEN.format(row='OLD')} THEN\n"
        f"    {insert} ({_row('OLD', -1)});\n  END IF;",
        "update": f"  IF {same} THEN\n    RETURN NULL;\n  END IF;\n"
        f"  IF {OPEN.format(row='OLD')} THEN\n"
        f"    {insert} ({_row('OLD', -1)});\n  END IF;\n"
        f"  IF {OPEN.format(row='NEW')} THEN\n"
        f"    {insert} ({_row('NEW', 1)});\n  END IF;",
    }
    events = {"insert": "INSERT", "delete": "DELETE", "update": f"UPDATE OF {', '.join(MOVES)}"}
    out = []
    for op, body in bodies.items():
        out.append(_pg_function(f"{TRIGGER}_{op}", body))
        out.append(
            f"CREATE TRIGGER {TRIGGER}_{op} AFTER {events[op]} ON sync_error\n"
            f"FOR EACH ROW EXECUTE FUNCTION {TRIGGER}_{op}()"
        )
    out.append(_pg_function(f"{TRIGGER}_truncate", "  TRUNCATE sync_error_count;"))
    out.append(
        f"CREATE TRIGGER {TRIGGER}_truncate AFTER TRUNCATE ON sync_error\n"
        f"FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}_truncate()"
    )
    return out


def install(conn: Connection) -> None:
    """Create the triggers, then count the open errors as they stand (same transaction)."""
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
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON sync_error"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))


def _group(table: sa.Table | sa.Subquery | sa.CTE) -> list[sa.ColumnElement[Any]]:
    return [table.c[c] for c in GROUP]


def seed(conn: Connection) -> None:
    """Replace the counts with a count of the open errors (migration and tests only)."""
    conn.execute(sa.delete(sync_error_count))
    conn.execute(
        sa.insert(sync_error_count).from_select(
            [*GROUP, "n"],
            sa.select(*_group(sync_error), sa.func.count())
            .where(sync_error.c.status == ErrorStatus.OPEN)
            .group_by(*_group(sync_error)),
        )
    )


def sums() -> sa.Subquery:
    """The open errors per (object, direction, error_code, category, field), zeros out."""
    total = sa.func.sum(sync_error_count.c.n)
    group = _group(sync_error_count)
    return sa.select(*group, total.label("n")).group_by(*group).having(total != 0).subquery("sums")


def compact(conn: Connection) -> int:
    """Fold the rows into one per group; returns how many rows there were beyond one per
    group (0: nothing folded). PostgreSQL folds in one statement (rows appended meanwhile
    are neither deleted nor summed); SQLite's write transaction excludes other writers."""
    c = sync_error_count.c
    groups = sa.select(*_group(sync_error_count)).group_by(*_group(sync_error_count))
    rows, distinct = conn.execute(
        sa.select(
            sa.func.count(),
            sa.select(sa.func.count()).select_from(groups.subquery()).scalar_subquery(),
        ).select_from(sync_error_count)
    ).one()
    if rows <= distinct:
        return 0
    if conn.dialect.name == "postgresql":
        gone = sa.delete(sync_error_count).returning(*_group(sync_error_count), c.n).cte("gone")
        total = sa.func.sum(gone.c.n)
        folded = sa.select(*_group(gone), total).group_by(*_group(gone)).having(total != 0)
        conn.execute(sa.insert(sync_error_count).from_select([*GROUP, "n"], folded))
    else:
        folded_rows = conn.execute(sa.select(sums())).all()
        conn.execute(sa.delete(sync_error_count))
        if folded_rows:
            conn.execute(
                sa.insert(sync_error_count),
                [dict(zip((*GROUP, "n"), row, strict=True)) for row in folded_rows],
            )
    return int(rows - distinct)


def shrink(engine: Engine) -> None:
    """PostgreSQL, after a large fold: vacuum the counts (see ``backlog_counts.shrink``)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM sync_error_count"))
