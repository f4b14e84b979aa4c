"""A resync job in a worker process killed with ``kill -9`` finishes after a restart.

Dynamics answers slowly (``latency_ms``), so the job is still running when the worker
is killed. The next worker claims it once its lease runs out and resumes it at its saved
position: every record ends as Dynamics has it, once (one local row per Dynamics record,
nothing queued twice, no error), and the job's count of records done is exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pull_support import Sales, count, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.domain import Direction, JobKind, JobState
from crmsync.store import jobs
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_error, sync_queue

LEADS = 400


def _job(store: sa.Engine, job_id: int) -> Any:
    with store.connect() as conn:
        return jobs.get(conn, job_id)


def _wait(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


def test_a_resync_killed_mid_way_finishes_after_restart(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    drain: Any,
    configure: Any,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    url = sync_settings.dynamics_url or ""
    made = {
        sales.create("leads", {"emailaddress1": f"r{i}@x.org", "lastname": f"R{i}"})
        for i in range(LEADS)
    }
    drain(sync_settings, store)
    # The local side drifts unseen: the resync from Dynamics must put every row back.
    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(sa.text("UPDATE lead SET last_name = 'Stale'"))
        ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM lead ORDER BY id"))]
        job = jobs.create(conn, JobKind.RESYNC, "lead", Direction.FROM_CRM, {"ids": ids})
    assert len(ids) == LEADS
    configure(url, latency_ms=250)  # 8 requests of 50 ids: about 2 s of reading

    first = start_worker(LEASE_SECONDS=3)
    _wait(lambda: _job(store, job.id).done >= 100, 60, "the job did not start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed = _job(store, job.id)
    assert killed.state is JobState.RUNNING and killed.done < LEADS, killed

    configure(url, latency_ms=0)
    start_worker(LEASE_SECONDS=3)
    _wait(lambda: _job(store, job.id).state.finished, 90, "the job did not finish")
    _wait(lambda: count(store, sync_queue) == 0, 60, "the resync's entries were not applied")
    ended = _job(store, job.id)
    assert ended.state is JobState.DONE and ended.done == ended.total == LEADS, ended
    assert ended.result == {"queued": LEADS}  # the chunks before the kill counted too
    with store.connect() as conn:
        rows = conn.execute(sa.text("SELECT crm_id, email, last_name FROM lead")).all()
    assert len(rows) == LEADS and {r.crm_id for r in rows} == made
    assert all(r.last_name == f"R{r.email[1:].split('@')[0]}" for r in rows)
    assert count(store, sync_error) == 0
