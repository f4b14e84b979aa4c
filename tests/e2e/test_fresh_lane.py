"""The fresh lane against a real ``crmsync worker``: behind a backlog older than the
fresh window, a change made now is synced within seconds, long before the backlog has
drained (the lanes send oldest first, so without the fresh lane it would wait for all
of it); a backlog that is itself fresh is the lanes' own (its drain rate stays steady).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.store.db import read_transaction
from crmsync.store.schema import sync_record

BACKLOG = 600


def synced(store: sa.Engine, prefix: str) -> int:
    """How many of the leads whose email starts with ``prefix`` have been synced."""
    lead = sa.table("lead", sa.column("id"), sa.column("email"))
    with read_transaction(store) as conn:
        query = (
            sa.select(sa.func.count())
            .select_from(lead.join(sync_record, sync_record.c.record_id == lead.c.id))
            .where(sync_record.c.object == "lead", lead.c.email.like(f"{prefix}%"))
        )
        return int(conn.execute(query).scalar_one())


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_change_made_behind_an_old_backlog_does_not_wait_for_it(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    insert_leads: Any,
    start_worker: Any,
) -> None:
    # One lane of 20 records a request at 100 ms + 10 ms each (bulk: with its read-back):
    # ~40 records/s, so the backlog takes ~15 s.
    configure(sync_settings.dynamics_url or "", latency_ms=100, per_record_ms=10)
    insert_leads(store, BACKLOG, "old")
    worker = start_worker("--concurrency", "1", batch_size=20)
    wait_for(lambda: synced(store, "old") > 0, 30, "the drain to start")
    # The lanes now work on changes older than the fresh window (5 s).
    time.sleep(6)
    insert_leads(store, 3, "new")
    started = time.monotonic()
    wait_for(lambda: synced(store, "new") == 3, 30, "the new leads")
    took = time.monotonic() - started
    done_old = synced(store, "old")
    assert worker.poll() is None, "the worker exited"
    # Most of the backlog was still waiting: the new leads went past it.
    assert done_old < BACKLOG * 0.75, (done_old, took)
    assert took < 5, took
    configure(sync_settings.dynamics_url or "", latency_ms=0, per_record_ms=0)
    wait_for(lambda: synced(store, "old") == BACKLOG, 90, "the backlog")
