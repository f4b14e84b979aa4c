"""PostgreSQL: keep the planner's statistics of crmsync's own tables near their size.

A bulk load grows the capture log, then the queue, by hundreds of thousands of rows in
seconds. Until a table is analysed again the planner believes what the last ``ANALYZE``
saw (often nothing), and a plan psycopg has cached for a statement run many times can
read a whole range of the queue row by row where it should probe the index (at
1,000,000 changes, a fold's batch went from 60 ms to 12 s: docs/benchmarks.md, session
13). Autovacuum analyses only once a minute, and not at all where it is turned off.

So the processes that write anyway (the fold, the upkeep) analyse crmsync's ``sync_*``
tables once one has outgrown its statistics: a handful of runs while a table grows to
a million rows, each of a fixed-size sample, none while its size holds. A table another
process is analysing is left to it; the application's tables are not touched.
"""

from __future__ import annotations

import functools
import logging

import sqlalchemy as sa
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import ARRAY

from crmsync.store.schema import metadata

log = logging.getLogger(__name__)

# A table is analysed once it has outgrown its statistics: its pages (read now, not
# from the statistics collector, whose counts lag up to a second) more than twice the
# pages of the last ANALYZE, or more rows changed since then than it was believed to
# hold; and in either case by more than a floor (autovacuum's own floor is 50 rows; a
# table of a few thousand rows never misleads a plan).
PAGE_FLOOR = 128
ROW_FLOOR = 10_000

_STALE = text(
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " WHERE s.schemaname = current_schema() AND s.relname = ANY(:tables)"
    " AND (pg_relation_size(c.oid) / current_setting('block_size')::int"
    "      > greatest(:page_floor, 2 * c.relpages)"
    "   OR s.n_mod_since_analyze > greatest(:row_floor, c.reltuples))"
    " ORDER BY s.relname"
).bindparams(sa.bindparam("tables", type_=ARRAY(sa.String())))


@functools.cache
def _own_tables() -> tuple[str, ...]:
    """The log, the queue, the journal and the rest of crmsync's ``sync_*`` tables (the
    standard objects' tables in the same metadata are the application's)."""
    return tuple(sorted(t for t in metadata.tables if t.startswith("sync_")))


def refresh(engine: Engine) -> list[str]:
    """Analyse crmsync's tables whose statistics a bulk change has left far behind;
    returns the names analysed (none on SQLite, which keeps no statistics unless asked)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        params = {"tables": list(_own_tables()), "page_floor": PAGE_FLOOR, "row_floor": ROW_FLOOR}
        stale = list(conn.execute(_STALE, params).scalars())
    done = []
    for name in stale:
        if name not in _own_tables():  # only names of our own schema reach the statement
            continue
        try:
            with engine.begin() as conn:
                # Two processes analysing one table queue on its lock: the one that
                # waits would only repeat the work, so it gives way.
                conn.execute(text("SET LOCAL lock_timeout = '50ms'"))
                conn.execute(text(f'ANALYZE "{name}"'))
        except sa.exc.OperationalError as exc:
            log.debug("planner statistics of %s left to another process: %s", name, exc.orig)
            continue
        done.append(name)
    return done


def analyse_now(engine: Engine, table: sa.Table) -> None:
    """Analyse one of crmsync's tables before a read whose plan depends on its size,
    waiting for an analyse already running (none on SQLite). The drift audit's seen ids
    grow by a million rows in seconds: planned on the statistics of an empty table, the
    only-local pass's anti-join reads them once per local row."""
    if engine.dialect.name != "postgresql" or table.name not in _own_tables():
        return
    with engine.begin() as conn:
        conn.execute(text(f'ANALYZE "{table.name}"'))
