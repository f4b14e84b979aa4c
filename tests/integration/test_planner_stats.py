"""PostgreSQL: a bulk fold leaves the planner's statistics of the queue near its size.

With the queue analysed while empty, a plan cached for the fold's statements read the
queue's whole range row by row once it held 200,000 entries (12 s a batch where 60 ms
was enough): ``store.planner_stats`` analyses crmsync's tables as they outgrow their
statistics, and leaves them alone otherwise.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crmsync.store import capture, maintenance, planner_stats

pytestmark = pytest.mark.postgres

LEADS = 30_000


def estimate(engine: sa.Engine, table: str) -> tuple[float, int]:
    """What the planner believes ``table`` holds: (rows, times analysed)."""
    with engine.connect() as conn:
        rows, times = conn.execute(
            sa.text(
                "SELECT c.reltuples, s.analyze_count FROM pg_class c"
                " JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.relname = :t"
            ),
            {"t": table},
        ).one()
    return float(rows), int(times)


def load(engine: sa.Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, last_name)"
                " SELECT 'p' || x || '@example.com', 'n' FROM generate_series(1, :n) AS x"
            ),
            {"n": n},
        )


@pytest.fixture
def analysed_empty(engine: sa.Engine) -> sa.Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps no planner statistics unless asked")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE sync_queue"))
        conn.execute(sa.text("ANALYZE sync_change"))
    assert estimate(engine, "sync_queue")[0] <= 0
    return engine


def test_a_long_fold_analyses_the_queue_it_grows(analysed_empty: sa.Engine) -> None:
    engine = analysed_empty
    load(engine, LEADS)
    assert capture.fold_pending(engine) == LEADS
    rows, _ = estimate(engine, "sync_queue")
    # Analysed on the way (every few batches), not only at the end: at least once the
    # queue held a third of the load.
    assert rows >= LEADS / 3


def test_the_upkeep_analyses_what_a_bulk_change_outgrew(analysed_empty: sa.Engine) -> None:
    engine = analysed_empty
    load(engine, LEADS)
    with engine.begin() as conn:  # one batch: fold_pending's own look never comes
        capture.fold(conn, LEADS)
    assert estimate(engine, "sync_queue")[0] <= 0
    maintenance.compact_counts(engine)
    rows, times = estimate(engine, "sync_queue")
    assert rows == pytest.approx(LEADS, rel=0.05)
    # Nothing outgrown since: the next rounds leave every table alone.
    assert planner_stats.refresh(engine) == []
    maintenance.compact_counts(engine)
    assert estimate(engine, "sync_queue")[1] == times


def test_a_table_being_analysed_elsewhere_is_left_to_it(analysed_empty: sa.Engine) -> None:
    engine = analysed_empty
    load(engine, LEADS)
    with engine.begin() as conn:
        capture.fold(conn, LEADS)
    with engine.connect() as other:
        other.execute(sa.text("LOCK TABLE sync_queue IN SHARE UPDATE EXCLUSIVE MODE"))
        assert "sync_queue" not in planner_stats.refresh(engine)  # gives way, no wait
        other.rollback()
    assert "sync_queue" in planner_stats.refresh(engine)
