"""The push's fresh lane on real databases: a claim with ``fresh_since`` takes only
changes due since then, newest first, so a person's edit is not queued behind a bulk
backlog; the ordered claim still takes the backlog oldest first."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from crmsync.store import capture, queue
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_queue
from crmsync.store.types import utcnow

LEASE = timedelta(seconds=30)


def test_a_fresh_claim_takes_the_newest_changes_and_leaves_the_backlog(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        for i in range(30):
            conn.execute(sa.text("INSERT INTO lead (email) VALUES (:e)"), {"e": f"b{i}@x.com"})
    capture.fold_pending(engine)
    now = utcnow()
    with write_transaction(engine) as conn:  # the backlog: queued a minute ago
        conn.execute(sa.update(sync_queue).values(next_attempt_at=now - timedelta(minutes=1)))
    with write_transaction(engine) as conn:
        for i in range(3):
            conn.execute(sa.text("INSERT INTO lead (email) VALUES (:e)"), {"e": f"f{i}@x.com"})
    capture.fold_pending(engine)
    since = utcnow() - timedelta(seconds=10)
    fresh = queue.claim(engine, "w", "to_crm", ["lead"], 2, LEASE, fresh_since=since)
    # The two newest of the three fresh ones; nothing of the backlog.
    assert sorted(e.record_id for e in fresh if e.record_id) == [32, 33]
    rest = queue.claim(engine, "w", "to_crm", ["lead"], 50, LEASE, fresh_since=since)
    assert [e.record_id for e in rest] == [31]
    assert queue.claim(engine, "w", "to_crm", ["lead"], 50, LEASE, fresh_since=since) == []
    ordered = queue.claim(engine, "w", "to_crm", ["lead"], 5, LEASE)
    assert [e.record_id for e in ordered] == [1, 2, 3, 4, 5]
