"""The Sync Errors search (``q``): text anywhere in the message, code, label or ids.

The match is a substring, case-insensitive as each backend's ``LIKE`` family folds case:
``ILIKE`` on PostgreSQL (served by the ``pg_trgm`` indexes of migration 0002), ``LIKE``
on SQLite, which folds ASCII letters only. ``%``, ``_`` and the backslash are literal.

On SQLite a ``q`` of three characters or more may first ask the FTS5 trigram index of
migration 0004 (``sync_error_fts``) for candidate rows, then keep those the ``LIKE``
predicate matches: the candidates are a superset of the matches and the ``LIKE``
decides, so the rows are exactly those of the scan. Shorter searches scan (a trigram
index cannot look them up; the list's other filters still narrow it).

A term in most errors makes every row a candidate, slower than the scan, so ``plan``
samples the index for the term's share of candidates (``share``); above ``SCAN_SHARE``
the scan serves. Either plan returns the same rows.
"""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from crmsync.store.params import like_pattern
from crmsync.store.schema import ERROR_FTS, sync_error

# The shortest text the trigram tokenizer makes a token of (sqlite.org/fts5.html,
# "The Trigram Tokenizer").
TRIGRAM = 3
MAX_TRIGRAMS = 32
# Above this share of the errors being candidates, the scan is cheaper than reading them
# by id (at 1M errors: index 0.10-0.15 s against scan 0.52-0.54 s at 11%, 0.51 s against
# 0.43 s at 20%; docs/benchmarks.md).
SCAN_SHARE = 0.15
# ``share`` counts the candidates among SAMPLES windows of SAMPLE_IDS consecutive ids,
# spread from the oldest error to the newest: a rowid range is a seek into each doclist.
SAMPLES = 4
SAMPLE_IDS = 1000

T = TypeVar("T")

_fts = sa.table(ERROR_FTS, sa.column("rowid"), sa.column(ERROR_FTS))


def _searched() -> list[Any]:
    e = sync_error.c
    return [
        e.error_message,
        e.error_code,
        e.record_label,
        e.record_key,
        e.crm_id,
        sa.cast(e.record_id, sa.String),
    ]


def scan(q: str, dialect: str) -> ColumnElement[bool]:
    """The search as a predicate on every searched column of ``sync_error``."""
    pattern = like_pattern(q)
    if dialect == "postgresql":
        return sa.or_(*(c.ilike(pattern, escape="\\") for c in _searched()))
    # SQLite's LIKE ignores case for ASCII letters only, as its lower() folds ASCII
    # only: other letters match in their own case. No lower() per row.
    return sa.or_(*(c.like(pattern, escape="\\") for c in _searched()))


def trigrams(q: str) -> list[str]:
    """The trigrams of ``q`` the index is asked for: all of them, or ``MAX_TRIGRAMS``
    spread over long text (any subset still finds a superset of the matches)."""
    starts = list(range(len(q) - TRIGRAM + 1))
    step = -(-len(starts) // MAX_TRIGRAMS)
    picked = [*starts[::step], starts[-1]]
    return list(dict.fromkeys(q[i : i + TRIGRAM] for i in picked))


def fts_query(q: str) -> str:
    """An FTS5 query for the rows holding every trigram of ``q``, each one an FTS5 string
    (quotes doubled), so nothing in ``q`` is query syntax.

    The index keeps no positions (``detail=none``, a quarter of the size), so the query
    is an AND of trigrams rather than a phrase: a superset of the rows holding ``q``,
    which ``matches`` narrows with ``LIKE``.
    """
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in trigrams(q))


def candidates(q: str) -> sa.Select[Any]:
    """The ids of the errors whose searched columns hold every trigram of ``q``, in any
    case, by the index (``q`` of at least ``TRIGRAM`` characters)."""
    return sa.select(_fts.c.rowid).where(_fts.c[ERROR_FTS].match(fts_query(q)))


def uses_index(q: str, dialect: str) -> bool:
    """Whether ``matches`` narrows the search with the trigram index."""
    return dialect == "sqlite" and len(q) >= TRIGRAM


def windows(top: int) -> list[tuple[int, int]]:
    """The id ranges ``share`` samples when the highest id is ``top``: all of them when
    the table is small."""
    if top <= SAMPLES * SAMPLE_IDS:
        return [(1, top)] if top else []
    starts = [1 + k * (top - SAMPLE_IDS) // (SAMPLES - 1) for k in range(SAMPLES)]
    return [(start, start + SAMPLE_IDS - 1) for start in starts]


def _sampled(conn: Connection, q: str, ranges: list[tuple[int, int]], most: int | None) -> int:
    """The candidates for ``q`` in the id ``ranges``, counted up to ``most``: SQLite stops
    reading the index there (a common term is decided within its first window)."""
    match = _fts.c[ERROR_FTS].match(fts_query(q))
    selects = [
        sa.select(_fts.c.rowid).where(match, _fts.c.rowid.between(lo, hi)) for lo, hi in ranges
    ]
    rows = (sa.union_all(*selects) if len(selects) > 1 else selects[0]).subquery()
    counted = sa.select(rows.c.rowid).limit(most).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(counted)).scalar_one())


def _ids(ranges: list[tuple[int, int]]) -> int:
    return sum(high - low + 1 for low, high in ranges)


def share(conn: Connection, q: str) -> float:
    """About which share of the errors are candidates for ``q`` (hold all its trigrams),
    from the index on sampled id ranges; exact on a small table."""
    ranges = windows(table_size(conn))
    return _sampled(conn, q, ranges, None) / _ids(ranges) if ranges else 0.0


def table_size(conn: Connection) -> int:
    """About how many errors there are, cheaply: the highest id (an index seek, where
    ``count(*)`` reads every row); deleted errors only make it larger."""
    return int(conn.execute(sa.select(sa.func.max(sync_error.c.id))).scalar() or 0)


def plan(conn: Connection, q: str | None) -> bool:
    """Whether the search of ``q`` should narrow by the trigram index on this store: it
    can (``uses_index``) and the term is selective enough that its candidates cost less
    than the scan."""
    if q is None or not uses_index(q, conn.dialect.name):
        return False
    ranges = windows(table_size(conn))
    most = int(SCAN_SHARE * _ids(ranges))
    return not ranges or _sampled(conn, q, ranges, most + 1) <= most


def not_indexed(column: ColumnElement[T]) -> ColumnElement[T]:
    """``+column``: a term so written is never served by an index on SQLite
    (sqlite.org/optoverview.html, "Disqualifying WHERE clause terms using unary-+");
    the value and its type are unchanged."""
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


def matches(q: str, dialect: str, indexed: bool | None = None) -> ColumnElement[bool]:
    """The search as the lists, summary, export, retry and dismiss apply it: through the
    index if ``indexed`` (as ``plan`` chose; by default whenever it can), else a scan."""
    if not (uses_index(q, dialect) if indexed is None else indexed and uses_index(q, dialect)):
        return scan(q, dialect)
    # Exact, not approximate: the candidates are a superset of the ``LIKE`` matches (the
    # tokenizer folds each character, ASCII letters included, and stops at a NUL as
    # ``LIKE`` does), and the ``LIKE`` decides on each of them.
    return sa.and_(sync_error.c.id.in_(candidates(q)), scan(q, dialect))
