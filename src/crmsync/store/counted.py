"""Counts of a table's rows by group, kept exact by triggers: one way for every count.

Row triggers on the counted table append ``(group..., n = +1 or -1)`` to its counts
table whenever a row starts or stops being counted (inserted, deleted, or updated into
or out of the predicate) or moves between groups. Appending never waits on another
writer, unlike a counter row every writer would lock, and it covers every writer of
the table without touching its code, in the writer's own transaction. A group's count
is the sum of its rows; ``compact`` folds them into one row per group so that the sum
stays a read of a few dozen rows (the upkeep runs it every few seconds). The DDL is
constant: nothing in it comes from configuration or input. ``backlog_counts`` (the
queue's backlog) and ``error_counts`` (the open errors) are the two ``Counted``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine


@dataclass(frozen=True)
class Counted:
    """What a counts table counts: rows of ``source`` matching ``predicate`` (SQL with
    ``{row}`` for OLD or NEW) by the columns ``group``; an update moves a row between
    groups only if one of ``moves`` changes (``nullable``: some of them may be null)."""

    source: sa.Table
    counts: sa.Table
    trigger: str
    group: tuple[str, ...]
    moves: tuple[str, ...]
    predicate: str
    nullable: bool = False

    def _row(self, row: str, n: int) -> str:
        return ", ".join([*(f"{row}.{c}" for c in self.group), str(n)])

    def _when(self, row: str) -> str:
        return self.predicate.format(row=row)

    def columns(self, table: sa.Table | sa.Subquery | sa.CTE) -> list[sa.ColumnElement[Any]]:
        return [table.c[c] for c in self.group]


def sqlite_ddl(c: Counted) -> list[str]:
    """SQLite: a WHEN clause costs nothing here (it is compiled into the statement)."""
    moved = " OR ".join(f"OLD.{m} IS NOT NEW.{m}" for m in c.moves)
    insert = f"INSERT INTO {c.counts.name} ({', '.join((*c.group, 'n'))})"
    on = c.source.name
    return [
        f"CREATE TRIGGER {c.trigger}_insert AFTER INSERT ON {on}\n"  # noqa: S608
        f"FOR EACH ROW WHEN {c._when('NEW')}\n"
        f"BEGIN\n{insert} VALUES ({c._row('NEW', 1)});\nEND",
        f"CREATE TRIGGER {c.trigger}_delete AFTER DELETE ON {on}\n"
        f"FOR EACH ROW WHEN {c._when('OLD')}\n"
        f"BEGIN\n{insert} VALUES ({c._row('OLD', -1)});\nEND",
        f"CREATE TRIGGER {c.trigger}_update AFTER UPDATE OF {', '.join(c.moves)} ON {on}\n"
        f"FOR EACH ROW WHEN {moved}\n"
        f"BEGIN\n{insert}"
        f" SELECT {c._row('OLD', -1)} WHERE {c._when('OLD')}"
        f" UNION ALL SELECT {c._row('NEW', 1)} WHERE {c._when('NEW')};\nEND",
    ]


def _pg_function(name: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        f"BEGIN\n{body}\n  RETURN NULL;\nEND\n$fn$"
    )


def postgres_ddl(c: Counted) -> list[str]:
    """PostgreSQL: the tests are in the plpgsql body, not in a WHEN clause.

    A WHEN clause is planned again by every statement that fires the trigger (~20 µs a
    write, see ``store.capture``); a body's plans are cached for the session. The update
    trigger names its columns (``UPDATE OF``), so that other updates do not call it at
    all, and its body returns at its first test when they keep their values. TRUNCATE
    bypasses row triggers, hence the statement trigger for it.
    """
    insert = f"INSERT INTO {c.counts.name} ({', '.join((*c.group, 'n'))}) VALUES"
    equal = "IS NOT DISTINCT FROM" if c.nullable else "="
    same = " AND ".join(f"OLD.{m} {equal} NEW.{m}" for m in c.moves)
    old, new = c._when("OLD"), c._when("NEW")
    bodies = {
        "insert": f"  IF {new} THEN\n    {insert} ({c._row('NEW', 1)});\n  END IF;",
        "delete": f"  IF {old} THEN\n    {insert} ({c._row('OLD', -1)});\n  END IF;",
        "update": f"  IF {same} THEN\n    RETURN NULL;\n  END IF;\n"
        f"  IF {old} THEN\n    {insert} ({c._row('OLD', -1)});\n  END IF;\n"
        f"  IF {new} THEN\n    {insert} ({c._row('NEW', 1)});\n  END IF;",
    }
    events = {"insert": "INSERT", "delete": "DELETE", "update": f"UPDATE OF {', '.join(c.moves)}"}
    out = []
    for op, body in bodies.items():
        out.append(_pg_function(f"{c.trigger}_{op}", body))
        out.append(
            f"CREATE TRIGGER {c.trigger}_{op} AFTER {events[op]} ON {c.source.name}\n"
            f"FOR EACH ROW EXECUTE FUNCTION {c.trigger}_{op}()"
        )
    out.append(_pg_function(f"{c.trigger}_truncate", f"  TRUNCATE {c.counts.name};"))
    out.append(
        f"CREATE TRIGGER {c.trigger}_truncate AFTER TRUNCATE ON {c.source.name}\n"
        f"FOR EACH STATEMENT EXECUTE FUNCTION {c.trigger}_truncate()"
    )
    return out


def install(conn: Connection, c: Counted, counted: sa.ColumnElement[bool]) -> None:
    """Create the triggers, then count the table as it stands (``counted``: the
    predicate as a SQL expression) in the same transaction: on PostgreSQL creating a
    trigger locks the table against writers until commit, so no write between the two
    is missed or counted twice."""
    for ddl in sqlite_ddl(c) if conn.dialect.name == "sqlite" else postgres_ddl(c):
        conn.execute(sa.text(ddl))
    seed(conn, c, counted)


def uninstall(conn: Connection, c: Counted) -> None:
    sqlite = conn.dialect.name == "sqlite"
    for op in ("insert", "delete", "update", "truncate"):
        name = f"{c.trigger}_{op}"
        if sqlite:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON {c.source.name}"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))


def seed(conn: Connection, c: Counted, counted: sa.ColumnElement[bool]) -> None:
    """Replace the counts with a count of the table (migrations and tests only)."""
    conn.execute(sa.delete(c.counts))
    conn.execute(
        sa.insert(c.counts).from_select(
            [*c.group, "n"],
            sa.select(*c.columns(c.source), sa.func.count())
            .where(counted)
            .group_by(*c.columns(c.source)),
        )
    )


def sums(c: Counted, *where: sa.ColumnElement[bool], name: str = "sums") -> sa.Subquery:
    """The count per group (narrowed by ``where`` on the counts table), zeros left out."""
    total = sa.func.sum(c.counts.c.n)
    group = c.columns(c.counts)
    query = sa.select(*group, total.label("n")).where(*where).group_by(*group)
    return query.having(total != 0).subquery(name)


def compact(conn: Connection, c: Counted) -> int:
    """Fold the rows into one per group (zeros dropped); returns how many rows there were
    beyond one per group (0: nothing to fold, nothing written).

    PostgreSQL: one statement deletes the rows it sees and inserts their sums, so a row
    appended meanwhile by another transaction is neither deleted nor summed, and two
    compactions at once never count a row twice (the second one skips the rows the
    first deleted). SQLite: the caller's write transaction excludes every other writer.
    """
    groups = sa.select(*c.columns(c.counts)).group_by(*c.columns(c.counts))
    rows, distinct = conn.execute(
        sa.select(
            sa.func.count(),
            sa.select(sa.func.count()).select_from(groups.subquery()).scalar_subquery(),
        ).select_from(c.counts)
    ).one()
    if rows <= distinct:
        return 0
    if conn.dialect.name == "postgresql":
        conn.execute(fold(c))
    else:
        folded = conn.execute(sa.select(sums(c))).all()
        conn.execute(sa.delete(c.counts))
        if folded:
            names = (*c.group, "n")
            conn.execute(
                sa.insert(c.counts), [dict(zip(names, row, strict=True)) for row in folded]
            )
    return int(rows - distinct)


def fold(c: Counted) -> sa.Insert:
    """PostgreSQL's fold, one statement: ``WITH gone AS (DELETE ... RETURNING) INSERT``."""
    gone = sa.delete(c.counts).returning(*c.columns(c.counts), c.counts.c.n).cte("gone")
    total = sa.func.sum(gone.c.n)
    folded = sa.select(*c.columns(gone), total).group_by(*c.columns(gone)).having(total != 0)
    return sa.insert(c.counts).from_select([*c.group, "n"], folded)


def shrink(engine: Engine, c: Counted) -> None:
    """PostgreSQL, after a large fold: give the counts table's dead pages back.

    Every read scans the whole table, and a fold of many rows leaves it mostly dead
    tuples; worse, the folded rows land on its last page (no free space was known), so
    even once vacuumed the empty pages before them stay and are read every time. So:
    vacuum (the early pages become free space), fold once more (the rows move to the
    first page), vacuum again (the empty tail is cut off). None of this blocks the
    table's writers: vacuum takes no lock they need, and gives up cutting the tail
    rather than wait for them.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"VACUUM {c.counts.name}"))
        conn.execute(fold(c))
        conn.execute(sa.text(f"VACUUM {c.counts.name}"))
