"""A running worker keeps the status tables up: backlog samples for the trend, without
any console process (``store.maintenance.maintain`` from the pull loop)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.store.schema import sync_backlog_sample


def test_a_running_worker_samples_the_backlog(
    sync_settings: Settings, store: sa.Engine, sql: Any, start_worker: Any
) -> None:
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('up@example.com', 'Keep')")
    worker = start_worker()
    deadline = time.monotonic() + 30
    samples: list[Any] = []
    while time.monotonic() < deadline and not samples:
        with store.connect() as conn:
            samples = conn.execute(sa.select(sync_backlog_sample)).all()
        time.sleep(0.2)
    assert worker.poll() is None, "the worker exited"
    # One row per (object, direction), zeros included.
    assert {(s.object, s.direction) for s in samples} == {
        (o, d)
        for o in ("lead", "contact", "account", "opportunity")
        for d in ("to_crm", "from_crm")
    }
