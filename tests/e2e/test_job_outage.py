"""A resync job whose Dynamics goes away mid-way backs off, keeps its progress, and
resumes where it stopped once Dynamics answers, on both backends.

Between the emulator and the client sits a transport that lets the first read of the
job through and then fails every read (a 503 with ``Retry-After``, a refused
connection, or a 429 whose ``Retry-After`` is over at once) until the test brings
Dynamics back. Each run that finds Dynamics down gives the job back with a not-before
time (never sooner than ``Retry-After``) and counts as no failure; the time passing is
the test moving that time to the past, so no run depends on a sleep.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pull_support import Sales, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.domain import Direction, JobKind, JobState
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.jobs import JobRunner
from crmsync.engine.pull import Puller
from crmsync.store import jobs
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.types import utcnow
from crmsync.values import Job

LEADS = 120  # three reads of 50 ids


class Outage(httpx.AsyncBaseTransport):
    """Lets ``allow`` reads of leads through, then fails them (``fault``) until ``up``."""

    def __init__(self, fault: str, allow: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fault = fault
        self.allow = allow
        self.up = False
        self.reads = 0  # reads of leads answered by Dynamics
        self.failed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/api/data/" in request.url.path and request.url.path.endswith("/leads"):
            if not self.up and self.reads >= self.allow:
                self.failed += 1
                if self.fault == "refused":
                    raise httpx.ConnectError("connection refused", request=request)
                status, wait = (503, "7") if self.fault == "503" else (429, "0")
                return httpx.Response(
                    status,
                    headers={"Retry-After": wait, "Content-Type": "application/json"},
                    json={"error": {"code": "0x80040216", "message": "unavailable"}},
                    request=request,
                )
            self.reads += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _job(store: sa.Engine, job_id: int) -> Job:
    with store.connect() as conn:
        return jobs.get(conn, job_id)


def _time_passes(store: sa.Engine, job_id: int) -> None:
    with write_transaction(store) as conn:
        conn.execute(
            sa.text("UPDATE sync_job SET claimed_until = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": job_id},
        )


@pytest.mark.parametrize("fault", ["503", "refused", "429"])
def test_a_resync_backs_off_while_dynamics_is_down_and_resumes_where_it_stopped(
    fault: str, sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    for i in range(LEADS):
        sales.create("leads", {"emailaddress1": f"o{i}@x.org", "lastname": f"O{i}"})
    drain(sync_settings, store)
    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(sa.text("UPDATE lead SET last_name = 'Stale'"))
        ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM lead ORDER BY id"))]
        job = jobs.create(conn, JobKind.RESYNC, "lead", Direction.FROM_CRM, {"ids": ids})
    assert len(ids) == LEADS
    outage = Outage(fault, allow=1)

    async def run() -> Job | None:
        async with DataverseClient.from_settings(sync_settings, transport=outage) as client:
            return await JobRunner(store, Puller(store, client, sync_settings), "w1").run_one()

    for n in (1, 2):
        started = utcnow()
        left = asyncio.run(run())
        assert left is not None and left.id == job.id
        assert left.state is JobState.RUNNING and left.claimed_by is None, left
        assert left.done == 50 and (left.position or {})["index"] == 50  # progress kept
        assert left.position[jobs.OUTAGES] == n and jobs.FAILED_RUNS not in left.position
        assert left.error is not None and left.error.startswith("Dynamics unreachable")
        assert left.retry_at is not None
        backoff = (left.retry_at - started).total_seconds()
        if fault == "503":
            assert backoff >= 7, backoff  # its Retry-After, over the settings' 0.5 s cap
        else:
            assert 0 < backoff <= 1, backoff  # the retry settings' capped backoff
        if (left.retry_at - utcnow()).total_seconds() > 0.5:  # a sub-second backoff may be over
            assert asyncio.run(run()) is None  # not before its time: no request at all
        _time_passes(store, job.id)
    failed_reads = outage.failed
    outage.up = True
    ended = asyncio.run(run())
    assert ended is not None and ended.state is JobState.DONE, ended
    assert ended.done == ended.total == LEADS and ended.error is None
    assert ended.result == {"queued": LEADS}
    # One read before the outage, the other two after: the first chunk was not read again.
    assert outage.reads == 3 and outage.failed == failed_reads
    drain(sync_settings, store)
    with store.connect() as conn:
        stale = conn.execute(sa.text("SELECT count(*) FROM lead WHERE last_name = 'Stale'"))
        assert stale.scalar_one() == 0
