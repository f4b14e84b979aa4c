"""The Sync Errors search (``q``): text anywhere in the message, code, label or ids.

The match is a substring, case-insensitive as each backend's ``LIKE`` family folds case:
``ILIKE`` on PostgreSQL (served by the ``pg_trgm`` indexes of migration 0002), ``LIKE``
on SQLite, which folds ASCII letters only. ``%``, ``_`` and ``\\`` are literal.

On SQLite a scan costs 1.7 s at 1M errors, so a ``q`` of three characters or more
first asks the FTS5 trigram index of migration 0004 (``sync_error_fts``) for candidate
rows, then keeps those the ``LIKE`` predicate matches. The candidates are a superset of
the ``LIKE`` matches (the tokenizer folds each character, ASCII letters included, and
stops at a NUL as ``LIKE`` does), and the ``LIKE`` decides, so the rows are those of
the scan, exactly. A trigram index cannot look up fewer than three characters: shorter
searches keep the scan (the list's other filters still narrow it).
"""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import ColumnElement
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from crmsync.store.params import like_pattern
from crmsync.store.schema import ERROR_FTS, sync_error

# The shortest text the trigram tokenizer makes a token of (sqlite.org/fts5.html,
# "The Trigram Tokenizer").
TRIGRAM = 3
MAX_TRIGRAMS = 32

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


def fts_query(q: str) -> str:
    """An FTS5 query for the rows holding every trigram of ``q``, each one an FTS5 string
    (quotes doubled), so nothing in ``q`` is query syntax.

    The index keeps no positions (``detail=none``, a quarter of the size), so the query
    is an AND of trigrams rather than a phrase: a superset of the rows holding ``q``,
    which ``matches`` narrows with ``LIKE``. Long text asks for ``MAX_TRIGRAMS`` of its
    trigrams, spread over it (any subset is still a superset).
    """
    starts = list(range(len(q) - TRIGRAM + 1))
    step = -(-len(starts) // MAX_TRIGRAMS)
    picked = [*starts[::step], starts[-1]]
    trigrams = dict.fromkeys(q[i : i + TRIGRAM] for i in picked)
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in trigrams)


def candidates(q: str) -> sa.Select[Any]:
    """The ids of the errors whose searched columns hold every trigram of ``q``, in any
    case, by the index (``q`` of at least ``TRIGRAM`` characters)."""
    return sa.select(_fts.c.rowid).where(_fts.c[ERROR_FTS].match(fts_query(q)))


def uses_index(q: str, dialect: str) -> bool:
    """Whether ``matches`` narrows the search with the trigram index."""
    return dialect == "sqlite" and len(q) >= TRIGRAM


def not_indexed(column: ColumnElement[T]) -> ColumnElement[T]:
    """``+column``: a term so written is never served by an index on SQLite
    (sqlite.org/optoverview.html, "Disqualifying WHERE clause terms using unary-+");
    the value and its type are unchanged."""
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


def matches(q: str, dialect: str) -> ColumnElement[bool]:
    """The search as the lists, summary, export, retry and dismiss apply it."""
    if not uses_index(q, dialect):
        return scan(q, dialect)
    return sa.and_(sync_error.c.id.in_(candidates(q)), scan(q, dialect))
