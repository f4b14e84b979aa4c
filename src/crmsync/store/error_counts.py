"""Counts of the open sync errors kept exact by triggers on ``sync_error``, so that the
summary heading every Sync Errors page reads a few rows instead of counting errors.

As ``store.backlog_counts`` does for the queue (``store.counted``): row triggers append
``(object, direction, error_code, category, field, n = +1 or -1)`` to
``sync_error_count`` whenever an error opens, stops being open (resolved, dismissed,
deleted) or, while open, changes group (a new failure with another code). ``field`` may
be null, so the update trigger compares with ``IS NOT DISTINCT FROM``. Migration 0012
installs the triggers and seeds the counts in one transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import ErrorStatus
from crmsync.store import counted
from crmsync.store.schema import sync_error, sync_error_count

GROUP = ("object", "direction", "error_code", "category", "field")
OPEN_ERRORS = counted.Counted(
    source=sync_error,
    counts=sync_error_count,
    trigger="crmsync_error_count",
    group=GROUP,
    moves=("status", *GROUP),
    predicate="{row}.status = '" + ErrorStatus.OPEN.value + "'",
    nullable=True,
)


def sqlite_ddl() -> list[str]:
    return counted.sqlite_ddl(OPEN_ERRORS)


def postgres_ddl() -> list[str]:
    return counted.postgres_ddl(OPEN_ERRORS)


def install(conn: Connection) -> None:
    counted.install(conn, OPEN_ERRORS, sync_error.c.status == ErrorStatus.OPEN)


def uninstall(conn: Connection) -> None:
    counted.uninstall(conn, OPEN_ERRORS)


def seed(conn: Connection) -> None:
    """Replace the counts with a count of the open errors (migration and tests only)."""
    counted.seed(conn, OPEN_ERRORS, sync_error.c.status == ErrorStatus.OPEN)


def sums() -> sa.Subquery:
    """The open errors per (object, direction, error_code, category, field), zeros out."""
    return counted.sums(OPEN_ERRORS)


def compact(conn: Connection) -> int:
    return counted.compact(conn, OPEN_ERRORS)


def shrink(engine: Engine) -> None:
    counted.shrink(engine, OPEN_ERRORS)
