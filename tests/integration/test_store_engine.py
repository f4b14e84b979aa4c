"""The SQLite engine's own transaction handling (``store/db.py``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from crmsync.store.db import create_store_engine, write_transaction


def test_sqlite_runs_in_wal_and_autocommit_statements_persist(tmp_path: Path) -> None:
    """crmsync begins SQLite's transactions itself; a connection asking for AUTOCOMMIT
    gets none, so ANALYZE (or VACUUM) is kept instead of rolled back at close."""
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with write_transaction(engine) as conn:
            conn.execute(sa.text("CREATE TABLE t (a INTEGER)"))
            conn.execute(sa.text("CREATE INDEX ix_t_a ON t (a)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (2), (3)"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            stats = conn.execute(sa.text("SELECT count(*) FROM sqlite_stat1")).scalar()
        assert stats == 1
        with engine.connect() as conn:  # an ordinary connection still rolls back
            conn.execute(sa.text("INSERT INTO t VALUES (4)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 3
    finally:
        engine.dispose()
