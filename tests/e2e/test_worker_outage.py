"""A worker rides out a store outage of any length (issue 16 item 3).

The store "goes away" through the engine the worker uses: while it is down, opening a
connection and running a statement both fail with the driver's own
``OperationalError`` (as a PostgreSQL restart or a vanished SQLite file does); on
PostgreSQL the worker's open connections are also terminated
(``pg_terminate_backend``). The application keeps writing through its own engine. The
worker must keep running, log the outage once, and sync what was written meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.db import create_store_engine
from crmsync.store.schema import sync_queue


class FlakyStore:
    """An engine on the test store whose connections fail while ``down``. With
    ``fail_at_next_due``, the store goes down just as a lane asks when work is due
    next (after a batch found nothing): the statement that ended the worker before."""

    def __init__(self, url: str) -> None:
        real = sa.create_engine(url)
        cargs, cparams = real.dialect.create_connect_args(real.url)
        self.dbapi = real.dialect.loaded_dbapi
        self.down = False
        self.fail_at_next_due = False
        self.url = url

        def connect() -> Any:
            if self.down:
                raise self.dbapi.OperationalError("the database system is shutting down")
            return real.dialect.connect(*cargs, **cparams)

        self.engine = create_store_engine(url, creator=connect)

        @event.listens_for(self.engine, "before_cursor_execute")
        def _fail(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if self.fail_at_next_due and "min(CASE" in statement and "sync_queue" in statement:
                self.fail_at_next_due = False
                self.go_down()
            if self.down:
                raise self.dbapi.OperationalError("server closed the connection unexpectedly")

    def go_down(self) -> None:
        self.down = True
        if self.engine.dialect.name == "postgresql":
            admin = sa.create_engine(self.url)
            with admin.connect() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            admin.dispose()


@pytest.fixture
def flaky(sync_settings: Settings) -> Iterator[FlakyStore]:
    store = FlakyStore(sync_settings.database_url)
    yield store
    store.engine.dispose()


def backlog(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar_one())


def insert_lead(engine: sa.Engine, email: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES (:e)"), {"e": email})


async def until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def synced(store: sa.Engine, email: str) -> Any:
    def check() -> bool:
        with store.connect() as conn:
            crm_id = conn.execute(
                sa.text("SELECT crm_id FROM lead WHERE email = :e"), {"e": email}
            ).scalar()
        return crm_id is not None and backlog(store) == 0

    return check


@pytest.mark.parametrize("at", ["start", "next_due", "any_statement"])
def test_a_worker_rides_out_a_store_outage_and_syncs_afterwards(
    sync_settings: Settings,
    store: sa.Engine,
    flaky: FlakyStore,
    caplog: pytest.LogCaptureFixture,
    at: str,
) -> None:
    settings = load_settings(
        **{**sync_settings.model_dump(exclude_unset=True), "poll_seconds": 0.2}
    )
    caplog.set_level(logging.WARNING, logger="crmsync.engine.worker")

    async def scenario() -> None:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(flaky.engine, client, settings, concurrency=2)
            if at == "start":
                flaky.down = True  # ``crmsync worker`` started before its database
            task = asyncio.create_task(worker.run())
            try:
                if at != "start":
                    insert_lead(store, "before@example.com")
                    await until(synced(store, "before@example.com"))
                    if at == "next_due":
                        flaky.fail_at_next_due = True
                        await until(lambda: flaky.down)
                    else:
                        flaky.go_down()
                insert_lead(store, "during@example.com")
                await asyncio.sleep(2.5)  # several backoffs long
                assert not task.done(), "the worker exited"
                flaky.down = False
                await until(synced(store, "during@example.com"))
                assert not task.done(), "the worker exited"
            finally:
                worker.stop()
                await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("worker.store_unavailable") == 1
    assert events.count("worker.store_available") == 1


def test_worker_once_rides_out_a_store_outage_during_its_pull(
    sync_settings: Settings, store: sa.Engine, flaky: FlakyStore
) -> None:
    """``worker --once``: the store goes away as the pull reads its first delta link;
    the pull starts again when it is back, and the run drains as usual."""
    insert_lead(store, "once@example.com")
    hit = False

    @event.listens_for(flaky.engine, "before_cursor_execute")
    def _at_pull(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal hit
        if "sync_cursor" in statement and not hit:
            hit = True
            flaky.go_down()
            raise flaky.dbapi.OperationalError("server closed the connection unexpectedly")

    async def scenario() -> None:
        async with DataverseClient.from_settings(sync_settings) as client:
            worker = Worker(flaky.engine, client, sync_settings, concurrency=2)
            task = asyncio.create_task(worker.run(once=True))
            await until(lambda: flaky.down)
            await asyncio.sleep(1.5)
            assert not task.done(), "the worker exited"
            flaky.down = False
            await asyncio.wait_for(task, 60)

    asyncio.run(scenario())
    assert synced(store, "once@example.com")()
