"""Opening the store: one engine factory for SQLite and PostgreSQL.

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and its
transactions are begun by us rather than by the driver, so that a writer can ask for
``BEGIN IMMEDIATE`` and take the write lock up front instead of failing on upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from crmsync.errors import ConfigError, CrmsyncError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A table every upgraded store has: without it, nothing else is there either.
SCHEMA_MARKER = "sync_change"
UPGRADE_HINT = "run `crmsync db upgrade` first"


class StoreNotReady(CrmsyncError):
    """The store cannot be used as it is: missing, unreachable or not upgraded.

    The message is one line saying what is wrong and what to do.
    """


def shown_url(url: str | URL) -> str:
    """The URL to show a person: never its password."""
    return make_url(url).render_as_string(hide_password=True)


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"CRMSYNC_DATABASE_URL: not a database URL ({exc})") from None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = _parse(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None  # a URI filename: its options are SQLite's business
    return Path(database)


def open_store(url: str, *, existing: bool = True, reachable: bool = True, **kwargs: Any) -> Engine:
    """An engine on a store that can be used now, or ``StoreNotReady``.

    ``existing`` (every command but ``db upgrade``): the store must already be there and
    upgraded, and nothing is created, not even an empty SQLite file. Without it, only
    the SQLite file's folder must exist. Without ``reachable``, a database that does
    not answer is left for the caller to wait for (the worker rides out outages).
    """
    path = sqlite_file(url)
    if path is not None:
        if not path.parent.is_dir():
            raise StoreNotReady(
                f"CRMSYNC_DATABASE_URL: the folder {path.parent} does not exist; "
                "create it, or point the URL at a file in an existing folder"
            )
        if existing and not path.exists():
            raise StoreNotReady(
                f"no store at {path}: {UPGRADE_HINT} to create it, or set "
                "CRMSYNC_DATABASE_URL to the store you meant (the demo's is "
                "sqlite:///.crmsync-demo/crmsync.db)"
            )
    engine = create_store_engine(url, **kwargs)
    try:
        with engine.connect() as conn:
            upgraded = inspect(conn).has_table(SCHEMA_MARKER)
    except DBAPIError as exc:
        if not reachable and not sqlite_file(url):
            return engine
        engine.dispose()
        raise StoreNotReady(unreachable_message(url, exc)) from None
    if existing and not upgraded:
        engine.dispose()
        raise StoreNotReady(f"the store at {shown_url(url)} has no crmsync schema: {UPGRADE_HINT}")
    return engine


def unreachable_message(url: str, exc: DBAPIError) -> str:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return (
        f"cannot open the store at {shown_url(url)} ({reason}); check "
        "CRMSYNC_DATABASE_URL and that the database is running"
    )


def not_upgraded(exc: DBAPIError) -> bool:
    """Whether the store lacks a table crmsync needs (a person must upgrade it); other
    database errors at the top level are outages or contention, which pass."""
    text_ = str(exc.orig or exc)
    # 42P01 is PostgreSQL's undefined_table.
    return "no such table" in text_ or getattr(exc.orig, "sqlstate", None) == "42P01"


def store_error_message(url: str, exc: DBAPIError) -> str:
    """One line for a database error that reached the command's top level."""
    if not_upgraded(exc):
        first = str(exc.orig or exc).strip().splitlines()[0]
        return f"the store at {shown_url(url)} is not upgraded ({first}): {UPGRADE_HINT}"
    return unreachable_message(url, exc)


def create_store_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with crmsync's connection settings applied (it connects,
    and SQLite creates its file, only when first used: see ``open_store``)."""
    parsed = _parse(url)
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
            except BaseException:
                _writable_again(conn, quietly=True)
                raise
            _writable_again(conn, quietly=False)
    finally:
        conn.close()


def _writable_again(conn: Connection, *, quietly: bool) -> None:
    # The flag belongs to the pooled connection: one left on would refuse every later
    # writer's statements, so a connection that cannot clear it is thrown away (one
    # already invalidated is thrown away anyway). ``quietly``: an error is already on
    # its way out, and this one must not hide it.
    if conn.invalidated:
        return
    try:
        conn.exec_driver_sql("PRAGMA query_only=OFF")
    except Exception:
        conn.invalidate()
        if not quietly:
            raise


def store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached or used right now (a restart, a
    refused or dropped connection, a lock timeout), rather than a fault of ours (a
    refused statement, an integrity error: logged with their traceback every time)."""
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
