"""The worker loop: keep pushing (and, once pulling lands, pulling) until told to stop.

Several batches are in flight at once so that the store's work on one batch overlaps
Dynamics' work on another; the client's limiter keeps requests within Dynamics' limits.
On SIGINT/SIGTERM the loop stops claiming, lets in-flight batches finish and record
their outcomes, and gives back any claim it still holds. A worker killed outright
leaves claims that expire with their lease and are picked up by any other worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.push import Pusher
from crmsync.errors import Fatal
from crmsync.store import queue
from crmsync.store.schema import sync_queue
from crmsync.store.types import utcnow

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5
MAX_WAIT_SECONDS = 5.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def next_due(engine: Engine, direction: str, objects: list[str], worker: str) -> datetime | None:
    """When the earliest waiting entry that this worker could send falls due.

    Entries this worker has in flight count as due now: their batch is about to finish
    (or fail and be rescheduled), so the caller should look again shortly.
    """
    with engine.connect() as conn:
        scopes = queue.paused_scopes(conn)
        wanted = [o for o in objects if not queue.is_paused(scopes, o, direction)]
        if not wanted:
            return None
        q = sync_queue.c
        return conn.execute(
            sa.select(
                sa.func.min(
                    sa.case(
                        (q.claimed_by == worker, q.next_attempt_at),
                        else_=sa.func.coalesce(q.claimed_until, q.next_attempt_at),
                    )
                )
            ).where(q.state == "pending", q.direction == direction, q.object.in_(wanted))
        ).scalar()


class Worker:
    def __init__(
        self,
        engine: Engine,
        client: DataverseClient,
        settings: Settings,
        *,
        concurrency: int = 4,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.id = worker_id()
        self.pusher = Pusher(engine, client, settings, self.id)
        self.concurrency = concurrency
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def _lane(self, drain: bool) -> None:
        while not self.stopping.is_set():
            try:
                handled = await self.pusher.push_batch()
            except Fatal:
                raise
            except Exception:
                # A store hiccup (a lock timeout, a dropped connection) must not end the
                # worker: the batch's claims expire with their lease and are sent again.
                log.exception("push batch failed", extra={"event": "worker.batch_failed"})
                await asyncio.sleep(IDLE_SECONDS)
                continue
            if handled:
                continue
            due = await asyncio.to_thread(
                next_due, self.engine, "to_crm", self.pusher.objects, self.id
            )
            if due is None and drain:
                return
            wait = IDLE_SECONDS
            if due is not None:
                wait = min(MAX_WAIT_SECONDS, max(0.05, (due - utcnow()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=wait)

    async def run(self, *, once: bool = False) -> None:
        """Work until stopped; with ``once``, until nothing is left to send but errors."""
        try:
            await asyncio.gather(*(self._lane(once) for _ in range(self.concurrency)))
        finally:
            released = await asyncio.to_thread(queue.release, self.engine, self.id)
            if released:
                log.info("released claims", extra={"event": "worker.release", "entries": released})

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)


async def _run(settings: Settings, engine: Engine, once: bool, concurrency: int) -> None:
    async with DataverseClient.from_settings(settings) as client:
        worker = Worker(engine, client, settings, concurrency=concurrency)
        worker.install_signal_handlers()
        log.info("worker started", extra={"event": "worker.start", "worker": worker.id})
        await worker.run(once=once)


def run_worker(settings: Settings, *, once: bool = False, concurrency: int = 4) -> None:
    """Run a worker until SIGINT/SIGTERM (or, with ``once``, until drained)."""
    from crmsync.store.db import create_store_engine

    engine = create_store_engine(settings.database_url)
    try:
        asyncio.run(_run(settings, engine, once, concurrency))
    finally:
        engine.dispose()
