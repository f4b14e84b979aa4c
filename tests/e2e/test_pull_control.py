"""Operator control of the pull, end to end over HTTP against the emulator: pausing
``from_crm`` stops the reads themselves, and resuming continues from the saved delta link.

The worker runs in process (as ``worker --once`` does) so that its pull statistics can
be read; the emulator's request counter shows what reached Dynamics.
"""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa
from pull_support import Sales, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store import status
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_cursor


def run_once(settings: Settings, engine: sa.Engine) -> Worker:
    """One in-process ``worker --once``; returns the worker, for its statistics."""

    async def go() -> Worker:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(engine, client, settings, concurrency=2)
            await worker.run(once=True)
            return worker

    return asyncio.run(asyncio.wait_for(go(), timeout=60))


def requests_made(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/stats", timeout=10).json()["requests"]["total"])


def cursor(engine: sa.Engine, obj: str) -> str | None:
    with engine.connect() as conn:
        link = conn.execute(
            sa.select(sync_cursor.c.delta_link).where(sync_cursor.c.object == obj)
        ).scalar()
    return str(link) if link else None


def test_pausing_from_crm_stops_reading_and_resume_continues_from_the_delta_link(
    sync_settings: Settings, store: sa.Engine, sales: Sales
) -> None:
    url = sync_settings.dynamics_url or ""
    first = sales.create("leads", {"lastname": "First"})
    run_once(sync_settings, store)
    link = cursor(store, "lead")
    assert link and first in rows(store, "lead")

    with write_transaction(store) as conn:
        status.pause(conn, "*", "from_crm")
    second = sales.create("leads", {"lastname": "Second"})
    sales.update("leads", first, {"lastname": "First, changed"})
    account = sales.create("accounts", {"name": "Acme"})
    before = requests_made(url)
    worker = run_once(sync_settings, store)
    # Paused everywhere: not one request reached Dynamics, nothing was read or staged.
    assert requests_made(url) == before
    assert worker.puller.stats.read == 0
    assert set(rows(store, "lead")) == {first} and rows(store, "account") == {}

    # Paused for leads only: the other objects pull, leads keep their delta link.
    with write_transaction(store) as conn:
        status.resume(conn, "*", "*")
        status.pause(conn, "lead", "from_crm")
    worker = run_once(sync_settings, store)
    assert set(rows(store, "account")) == {account}
    assert "lead" not in worker.puller.stats.by_object
    assert set(rows(store, "lead")) == {first} and cursor(store, "lead") == link

    # Resumed: the changes made while paused arrive from the saved link, no full read.
    with write_transaction(store) as conn:
        status.resume(conn, "lead", "from_crm")
    worker = run_once(sync_settings, store)
    assert worker.puller.stats.full_reads == 0
    assert worker.puller.stats.by_object["lead"] == 2
    local = rows(store, "lead")
    assert set(local) == {first, second}
    assert local[first]["last_name"] == "First, changed"
    assert cursor(store, "lead") != link
