"""Several ``crmsync worker --once`` processes draining one backlog on PostgreSQL.

``FOR UPDATE SKIP LOCKED`` must hand every entry to exactly one worker: no record is
sent twice, none is missed. "Sent twice" is checked on the emulator's write counter:
every write raises one global ``versionnumber``, so if each lead was written exactly
once the leads' versionnumbers are one contiguous run right after the application
user's registration; a second write of any lead would leave a hole (its first version
is gone) or push the run past that start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings

LEADS = 3000


@pytest.fixture
def pg_sync_settings(sync_settings: Settings) -> Settings:
    if not sync_settings.database_url.startswith("postgresql"):
        pytest.skip("many worker processes share one backlog only on PostgreSQL")
    return sync_settings


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [2, 4])
def test_worker_processes_send_every_record_exactly_once(
    workers: int,
    pg_sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    crm_rows: Any,
    insert_leads: Any,
    start_worker: Callable[..., Any],
    check_exactly_once: Any,
) -> None:
    url = pg_sync_settings.dynamics_url or ""
    # A little latency per request so the workers overlap instead of one taking it all.
    configure(url, latency_ms=20, per_record_ms=0.2)
    insert_leads(store, LEADS)
    procs = [start_worker("--once", "--concurrency", "2", batch_size=100) for _ in range(workers)]
    started = time.monotonic()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    elapsed = time.monotonic() - started

    result = check_exactly_once(store, url)
    assert result["leads"] == LEADS and result["synced"] == LEADS
    stats = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    assert stats["records"]["leads"] == LEADS
    assert set(stats["requests"]["by_status"]) == {"200"}

    versions = sorted(int(r["versionnumber"]) for r in result["crm"].values())
    assert versions == list(range(versions[0], versions[0] + LEADS)), "a lead written twice"
    users = {int(r["versionnumber"]) for r in crm_rows(url, "systemusers", "versionnumber")}
    assert versions[0] - 1 in users, "a lead's first write was overwritten by a second"
    assert elapsed < 120
