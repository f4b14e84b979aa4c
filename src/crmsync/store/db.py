"""Opening the store: one engine factory for SQLite and PostgreSQL.

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and its
transactions are begun by us rather than by the driver, so that a writer can ask for
``BEGIN IMMEDIATE`` and take the write lock up front instead of failing on upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError

from crmsync.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_store_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with crmsync's connection settings applied."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"CRMSYNC_DATABASE_URL: not a database URL ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    raise ConfigError("CRMSYNC_DATABASE_URL: only sqlite and postgresql are supported")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the driver.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # NORMAL is durable in WAL mode across application crashes; only an OS crash
        # can lose the last commits (sqlite.org/pragma.html#pragma_synchronous).
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # each statement commits by itself (ANALYZE, VACUUM), as asked
        conn.exec_driver_sql(f"BEGIN {options.get('sqlite_begin', 'DEFERRED')}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction meant to write: on SQLite it takes the write lock at once."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn
    finally:
        conn.close()


def is_sqlite(conn_or_engine: Connection | Engine) -> bool:
    return conn_or_engine.dialect.name == "sqlite"


def suppress_capture(conn: Connection) -> None:
    """Make the rest of this transaction's writes invisible to change capture.

    Used when crmsync applies Dynamics' changes, so that they are not sent back (echo
    suppression). On PostgreSQL a transaction-local setting does it. On SQLite a row in
    ``sync_suppress`` does: SQLite has a single writer, so no other connection can ever
    see that row, and ``resume_capture`` (or the end of the transaction) removes it.
    """
    if is_sqlite(conn):
        conn.execute(text("INSERT OR IGNORE INTO sync_suppress (id) VALUES (1)"))
    else:
        conn.execute(text("SELECT set_config('crmsync.suppress', 'on', true)"))


def resume_capture(conn: Connection) -> None:
    if is_sqlite(conn):
        conn.execute(text("DELETE FROM sync_suppress"))
    else:
        conn.execute(text("SELECT set_config('crmsync.suppress', 'off', true)"))


@contextmanager
def capture_suppressed(conn: Connection) -> Iterator[Connection]:
    """``suppress_capture`` for the duration of a block inside a transaction."""
    suppress_capture(conn)
    try:
        yield conn
    finally:
        if conn.in_transaction() and not conn.invalidated:
            resume_capture(conn)


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction on one snapshot: every statement in it sees the same
    store, and none of them can write (PostgreSQL: ``REPEATABLE READ, READ ONLY``;
    SQLite: a deferred transaction, which keeps its first read's snapshot, with
    ``query_only`` on)."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                yield conn
            return
        with conn.begin():
            conn.exec_driver_sql("PRAGMA query_only=ON")
            try:
                yield conn
            finally:
                _writable_again(conn)
    finally:
        conn.close()


def _writable_again(conn: Connection) -> None:
    # The flag belongs to the pooled connection: one left on would refuse every later
    # writer's statements, so a connection that cannot clear it is thrown away.
    try:
        conn.exec_driver_sql("PRAGMA query_only=OFF")
    except Exception:
        conn.invalidate()
        raise
