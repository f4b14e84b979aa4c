"""The per-minute rate counters (``sync_rate``) on SQLite and PostgreSQL: written by the
same path workers record batches with, one statement per batch, read back as the time to
drain, and pruned by upkeep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.store import drain, maintenance, queue, status
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.schema import sync_rate
from crmsync.store.types import utcnow

LEASE = timedelta(hours=1)
# Ahead of the clock, so that the entries added now are due at the claims' times.
T0 = (utcnow() + timedelta(hours=1)).replace(second=10, microsecond=0)
S = timedelta(seconds=1)


def add_leads(engine: sa.Engine, n: int, prefix: str = "r") -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email) VALUES (:e)"),
            [{"e": f"{prefix}{i}@example.com"} for i in range(n)],
        )


def finish(engine: sa.Engine, n: int, at: datetime) -> None:
    """Claim ``n`` to_crm entries and record them synced at ``at``, as a push does."""
    entries = queue.claim(engine, "w", "to_crm", ["lead"], n, LEASE, now=at)
    assert len(entries) == n
    done = [queue.Done(e, crm_id=f"00000000-0000-0000-0000-{e.id:012d}") for e in entries]
    queue.record(engine, queue.Outcome(done=done), at)


def rate_rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    r = sync_rate.c
    query = sa.select(
        r.minute_start,
        r.object,
        r.direction,
        r.synced,
        r.first_synced_at,
        r.last_synced_at,
        r.first_batch,
    ).order_by(r.minute_start, r.object, r.direction)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


@contextmanager
def statements_on(engine: sa.Engine, table: str) -> Iterator[list[str]]:
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if table in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)


def test_batches_add_up_per_minute_with_first_and_last_sync(engine: sa.Engine) -> None:
    add_leads(engine, 250)
    with statements_on(engine, "sync_rate") as seen:
        finish(engine, 100, T0)
    # One statement for the whole batch of 100 (on PostgreSQL, the finish itself).
    assert len(seen) == 1
    finish(engine, 50, T0 + 20 * S)
    finish(engine, 60, T0 + 40 * S)  # 13:19:50
    finish(engine, 40, T0 + 60 * S)  # the next minute
    minute = T0.replace(second=0)
    assert rate_rows(engine) == [
        (minute, "lead", "to_crm", 210, T0, T0 + 40 * S, 100),
        (minute + 60 * S, "lead", "to_crm", 40, T0 + 60 * S, T0 + 60 * S, 40),
    ]


def test_a_batch_that_finished_earlier_becomes_the_first(engine: sa.Engine) -> None:
    # Two workers: the later transaction can carry the earlier time.
    add_leads(engine, 30)
    finish(engine, 10, T0 + 10 * S)
    finish(engine, 20, T0)
    assert rate_rows(engine) == [
        (T0.replace(second=0), "lead", "to_crm", 30, T0, T0 + 10 * S, 20),
    ]


def test_uncounted_outcomes_and_each_direction(engine: sa.Engine) -> None:
    add_leads(engine, 3)
    entries = queue.claim(engine, "w", "to_crm", ["lead"], 3, LEASE, now=T0)
    # Nothing sent (an excluded record): not throughput, not rate.
    queue.record(engine, queue.Outcome(done=[queue.Done(entries[0], counted=False)]), T0)
    assert rate_rows(engine) == []
    with write_transaction(engine) as conn:
        queue.count_synced(
            conn, {("lead", "from_crm", "insert"): 7, ("lead", "from_crm", "update"): 3}, T0
        )
        queue.count_synced(conn, {("contact", "from_crm", "insert"): 2}, T0 + S)
    assert rate_rows(engine) == [
        (T0.replace(second=0), "contact", "from_crm", 2, T0 + S, T0 + S, 2),
        (T0.replace(second=0), "lead", "from_crm", 10, T0, T0, 10),
    ]


def test_a_drain_recorded_by_batches_reads_back_as_its_time(engine: sa.Engine) -> None:
    # Batches of 25 a second for 10 s, 250 still waiting: ~10 s at 25/s, from the rows
    # written by the real path and read in a read-only transaction.
    add_leads(engine, 500)
    for k in range(11):
        finish(engine, 25, T0 + k * S)
    now = T0 + 10.5 * S
    with read_transaction(engine) as conn:
        body = status.backlog(conn, ["lead"], at=now)
    (row,) = body["objects"]
    assert row["total"] == 500 - 275
    assert row["drain"] == drain.ESTIMATE
    # 250 after the first batch in 10.5 s: 23.8/s (weighted, a little more); 225 waiting.
    assert 8 <= row["eta_seconds"] <= 10


def test_upkeep_prunes_old_minutes(engine: sa.Engine) -> None:
    now = datetime.fromisoformat("2026-11-25T13:20:00+00:00")
    with write_transaction(engine) as conn:
        for ago in (61, 59, 1):
            at = now - timedelta(minutes=ago)
            queue.count_synced(conn, {("lead", "to_crm", "insert"): ago}, at)
    done = maintenance.maintain(engine, now)
    assert done.pruned_rows == 1
    assert [r[3] for r in rate_rows(engine)] == [59, 1]
    # The minutes of the last hour stay; older ones go at the next round.
    later = now + timedelta(minutes=15)
    maintenance.maintain(engine, later)
    assert [r[3] for r in rate_rows(engine)] == [1]


@pytest.mark.parametrize("paused_scope", [("lead", "*"), ("lead", "to_crm"), ("*", "to_crm")])
def test_paused_says_paused_whatever_the_rate(
    engine: sa.Engine, paused_scope: tuple[str, str]
) -> None:
    add_leads(engine, 100)
    for k in range(4):
        finish(engine, 10, T0 + k * S)
    obj, direction = paused_scope
    with write_transaction(engine) as conn:
        status.pause(conn, obj, direction)
    with read_transaction(engine) as conn:
        (row,) = status.backlog(conn, ["lead"], at=T0 + 4 * S)["objects"]
    assert (row["drain"], row["eta_seconds"]) == (drain.PAUSED, None)
