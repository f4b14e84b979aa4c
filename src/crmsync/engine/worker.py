"""The worker loop: pull Dynamics' changes, apply them, push local ones, until told to stop.

One Dataverse client serves a pull loop (every ``poll_seconds``, parents first), apply
lanes (``from_crm``) and push lanes (``to_crm``); several batches are in flight at once.
The client's limiter keeps requests within Dynamics' limits, and ``SharedThrottle`` makes
a 429 seen by any process on the credential pause all. ``run(once=True)`` pulls each
object once, then drains both directions.

An object whose pull fails as a whole (``ObjectUnusable``, a refusal, retries used up)
becomes that object's ``from_crm`` sync error; the other objects go on. At start the
worker refuses a store that is not upgraded and brings the capture triggers to the
configured flows. A store that cannot be reached is waited for with backoff and logged
once (``StoreOutage``). On SIGINT/SIGTERM the loop stops claiming, lets in-flight batches
record their outcomes and gives back its claims; a worker killed outright leaves claims
that expire with their lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from crmsync.config import Settings
from crmsync.domain import Direction, ObjectSpec
from crmsync.dynamics.client import DataverseClient
from crmsync.engine import choices, drift, retry
from crmsync.engine.apply import Applier
from crmsync.engine.jobs import JobRunner
from crmsync.engine.pull import Progress, Puller
from crmsync.engine.push import Pusher
from crmsync.engine.throttle import SharedThrottle
from crmsync.errors import (
    Fatal,
    ObjectUnusable,
    RecordRejected,
    Refusal,
    Retriable,
    StaleRecord,
)
from crmsync.mapping import activate as activate_mapping
from crmsync.mapping import active as active_mapping
from crmsync.mapping import options
from crmsync.memory import release_free_memory
from crmsync.store import jobs, migrate, queue
from crmsync.store.db import is_sqlite, store_unavailable, write_transaction
from crmsync.store.history import configure as configure_history
from crmsync.store.maintenance import COMPACT_SECONDS, compact_counts, maintain, retry_due
from crmsync.store.queue import next_due
from crmsync.store.status import pause_unusable
from crmsync.store.types import utcnow

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5
# How often a worker looks for resync and audit jobs to run.
JOB_POLL_SECONDS = 2.0
# ``audit_daily``: how often the drift audit is asked for.
AUDIT_EVERY = timedelta(days=1)
MAX_WAIT_SECONDS = 5.0
# How often the fresh lane looks for changes made in the last seconds (Pusher.push_fresh).
FRESH_POLL_SECONDS = 0.25


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class StoreOutage:
    """Backoff and logging for a store that stops answering, shared by a worker's lanes.

    An outage is logged once when it begins (``worker.store_unavailable``, with the
    driver's first line) and once when the store answers again
    (``worker.store_available``); meanwhile each failing caller waits a backoff that
    doubles from ``IDLE_SECONDS`` to ``MAX_WAIT_SECONDS``. Any other failure is logged
    each time with its traceback, and waits ``IDLE_SECONDS``.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException, event: str, **extra: Any) -> float:
        """Note a failure; returns how long the caller waits before trying again.
        ``event`` (and ``extra``) name what failed, in the log of any other failure."""
        if not store_unavailable(exc):
            log.exception("%s", event, extra={"event": event, **extra}, exc_info=exc)
            return IDLE_SECONDS
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            # The driver's first line says what is wrong; the rest may quote statements.
            text = str(getattr(exc, "orig", None) or exc).strip()
            log.warning(
                "store unavailable; waiting for it",
                extra={
                    "event": "worker.store_unavailable",
                    "error": text.splitlines()[0][:300] if text else type(exc).__name__,
                },
            )
        return float(min(MAX_WAIT_SECONDS, IDLE_SECONDS * 2.0 ** min(self.failures - 1, 10)))

    def answered(self) -> None:
        if self.down_since is None:
            return
        log.warning(
            "store available again",
            extra={
                "event": "worker.store_available",
                "seconds": round(time.monotonic() - self.down_since, 1),
            },
        )
        self.down_since, self.failures = None, 0


class Worker:
    def __init__(
        self,
        engine: Engine,
        client: DataverseClient,
        settings: Settings,
        *,
        concurrency: int = 4,
        progress: Progress | None = None,
    ) -> None:
        configure_history(enabled=settings.history, retention_days=settings.history_retention_days)
        self.engine = engine
        self.client = client
        self.id = worker_id()
        self.progress = progress
        self._assemble(settings)
        self.throttle = SharedThrottle.for_settings(engine, client.limiter, settings)
        self.concurrency = concurrency
        # SQLite has one writer: more than one apply lane there only queues for the lock.
        self.apply_lanes = 1 if is_sqlite(engine) else max(1, concurrency // 2)
        self.stopping = asyncio.Event()
        self.outage = StoreOutage()
        # Reads the choices' options again while the worker runs (``engine/choices.py``).
        self.options: choices.Refresher | None = None

    def _assemble(self, settings: Settings) -> None:
        """The lanes' parts, for ``settings``' mapping (again once a choice's options are
        read from Dynamics: ``engine/choices.py``)."""
        activate_mapping(settings.object_specs())
        self.settings = settings
        self.pusher = Pusher(self.engine, self.client, settings, self.id)
        self.puller = Puller(self.engine, self.client, settings, progress=self.progress)
        self.applier = Applier(self.engine, settings, self.id)
        self.pusher.on_stale = self.puller.refetch
        # A job's lease is renewed while it runs: the queue's lease is long enough.
        self.jobs = JobRunner(
            self.engine, self.puller, self.id, lease_seconds=settings.lease_seconds
        )

    def stop(self) -> None:
        self.stopping.set()

    def _laid_in(self, spec: ObjectSpec) -> None:
        """A choice's options read again and changed: in force for every lane (a batch
        planned already keeps the declaration it was planned with)."""
        for specs in (self.pusher.specs, self.applier.specs, self.puller.specs):
            specs[spec.name] = spec
        activate_mapping({**active_mapping(), spec.name: spec})

    async def _lane(self, direction: Direction, drain: bool) -> None:
        if direction == Direction.TO_CRM:
            step, objects = self.pusher.push_batch, self.pusher.objects
        else:
            step, objects = self.applier.apply_batch, self.applier.objects
        if not objects:
            return
        while not self.stopping.is_set():
            # Everything that reads the store is inside the try: a store that goes away
            # (a restart, a dropped connection, a lock timeout) must not end the worker.
            # The batch's claims expire with their lease and are sent again.
            try:
                handled = await step()
                if handled:
                    self.outage.answered()
                    continue
                due = await asyncio.to_thread(next_due, self.engine, direction, objects, self.id)
                self.outage.answered()
                if due is None and drain and not await self._may_get_more(direction):
                    return
            except Fatal:
                raise
            except Exception as exc:
                await self._wait(
                    self.outage.failed(exc, "worker.batch_failed", direction=direction)
                )
                continue
            wait = IDLE_SECONDS
            if due is not None:
                wait = min(MAX_WAIT_SECONDS, max(0.05, (due - utcnow()).total_seconds()))
            await self._wait(wait)

    async def _fresh_lane(self) -> None:
        """The push's lane for fresh changes (``Pusher.push_fresh``): it looks every
        ``FRESH_POLL_SECONDS`` while the other lanes work through the backlog in order."""
        if not self.pusher.objects:
            return
        while not self.stopping.is_set():
            if not self.pusher.behind:
                if self.pusher.keeping_up:
                    self.pusher.fresh.reset()  # the lanes take fresh changes themselves
                await self._wait(FRESH_POLL_SECONDS)  # nothing asked of the store
                continue
            try:
                handled = await self.pusher.push_fresh()
                self.outage.answered()
            except Fatal:
                raise
            except Exception as exc:
                await self._wait(self.outage.failed(exc, "worker.batch_failed", fresh=True))
                continue
            if not handled:
                await self._wait(FRESH_POLL_SECONDS)

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the worker is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _may_get_more(self, direction: Direction) -> bool:
        """Whether a draining lane with nothing due must stay, because the other
        direction's pending work may still queue some: a push refused because Dynamics
        changed the record (412) stages that change as a ``from_crm`` entry, and applying
        a record the sync filter includes again queues the push of its local changes."""
        other, objects = (
            (Direction.TO_CRM, self.pusher.objects)
            if direction == Direction.FROM_CRM
            else (Direction.FROM_CRM, self.applier.objects)
        )
        if not objects:
            return False
        pending = await asyncio.to_thread(next_due, self.engine, other, objects, self.id)
        return pending is not None

    async def pull_once(self) -> int:
        """Pull every pulling object once; a failing object does not stop the others."""
        staged = 0
        for obj in self.puller.objects:
            if self.stopping.is_set():
                break
            staged += await self._pull_object(obj)
        return staged

    async def _pull_once_through_outages(self) -> None:
        """``pull_once``, again from the start for as long as the store is unavailable
        (staging is idempotent: a page staged twice duplicates nothing)."""
        while not self.stopping.is_set():
            try:
                await self.pull_once()
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                await self._wait(self.outage.failed(exc, "worker.pull_failed"))
                continue
            self.outage.answered()
            return

    async def _pull_object(self, obj: str) -> int:
        attempts = 0
        while True:
            try:
                return await self.puller.pull(obj)
            except ObjectUnusable as exc:
                # Dynamics no longer matches this object's mapping (its table or a column
                # gone): it alone pauses, with the reason; the others go on.
                log.error(
                    "object paused: Dynamics no longer matches the mapping",
                    extra={"event": "pull.object_unusable", "object": obj, "error": str(exc)},
                )
                await self._pause_unusable(obj, exc)
                return 0
            except Fatal:
                raise
            except Retriable as exc:
                attempts += 1
                if retry.exhausted(attempts, self.settings.max_attempts):
                    log.error(
                        "pull gave up",
                        extra={"event": "pull.failed", "object": obj, "error": str(exc)},
                    )
                    code = f"http_{exc.status}" if exc.status else type(exc).__name__
                    await self._pull_failed(obj, code, f"gave up after {attempts} attempts: {exc}")
                    return 0
                when = retry.next_attempt(
                    utcnow(),
                    attempts,
                    self.settings.retry_base_seconds,
                    self.settings.retry_max_seconds,
                    exc.retry_after,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.stopping.wait(), timeout=(when - utcnow()).total_seconds()
                    )
                if self.stopping.is_set():
                    return 0
            except (RecordRejected, StaleRecord) as exc:
                # Dynamics refuses to let us read this table (privileges, a bad mapping):
                # nothing per record to park; say so and keep the other objects going.
                log.error(
                    "pull refused",
                    extra={"event": "pull.refused", "object": obj, "error": str(exc)},
                )
                await self._pull_failed(obj, exc.code or f"http_{exc.status}", exc.message)
                return 0

    async def _pause_unusable(self, obj: str, exc: Refusal) -> None:
        def write() -> None:
            with write_transaction(self.engine) as conn:
                code = exc.code or f"http_{exc.status}"
                pause_unusable(conn, obj, Direction.FROM_CRM, code, exc.message, utcnow())

        await asyncio.to_thread(write)

    async def _pull_failed(self, obj: str, code: str, message: str) -> None:
        """Show the operator a pull that failed as a whole, as the object's ``from_crm``
        sync error (Dynamics' code and message verbatim); the next complete pull of the
        object resolves it."""

        def write() -> None:
            with write_transaction(self.engine) as conn:
                queue.fail_object(conn, obj, Direction.FROM_CRM, code, message, utcnow())

        await asyncio.to_thread(write)

    async def _pull_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.pull_once()
            except Fatal:
                raise
            except Exception as exc:
                # The poll interval is the wait; an outage is logged once (``outage``).
                self.outage.failed(exc, "worker.pull_failed")
            try:
                # Backlog samples and throughput retention, at most once per 15-minute
                # bucket whoever calls it: a deployment with workers but no console
                # still keeps its trend and prunes old counters.
                await asyncio.to_thread(maintain, self.engine)
                await asyncio.to_thread(retry_due, self.engine)
                await asyncio.to_thread(release_free_memory)
                if self.settings.audit_daily:
                    # The daily drift audit (a job the jobs lane of some worker runs).
                    await asyncio.to_thread(jobs.schedule_audit, self.engine, AUDIT_EVERY)
            except Exception as exc:
                self.outage.failed(exc, "worker.upkeep_failed")
            await self._until_next_poll()

    async def _jobs_loop(self) -> None:
        """Run resync and audit jobs as they are asked for (one at a time per worker;
        a job another worker holds is left to it)."""
        while not self.stopping.is_set():
            try:
                await self.jobs.run_pending()
            except Fatal:
                raise
            except Exception as exc:
                self.outage.failed(exc, "worker.job_failed")
            await self._wait(JOB_POLL_SECONDS)

    async def _until_next_poll(self) -> None:
        """Wait ``poll_seconds``, folding the backlog counts every ``COMPACT_SECONDS``
        meanwhile: this worker's own outcomes append to them all the time."""
        deadline = time.monotonic() + self.settings.poll_seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=min(left, COMPACT_SECONDS))
            if self.stopping.is_set() or deadline - time.monotonic() <= 0:
                return
            try:
                await asyncio.to_thread(compact_counts, self.engine)
                await asyncio.to_thread(retry_due, self.engine)
            except Exception as exc:
                self.outage.failed(exc, "worker.upkeep_failed")

    async def run(self, *, once: bool = False) -> None:
        """Work until stopped; with ``once``, pull once, then work until nothing is left
        in either direction but parked errors."""

        def lanes() -> list[Coroutine[Any, Any, None]]:
            out = [self._lane(Direction.TO_CRM, once) for _ in range(self.concurrency)]
            if not once:  # a drain (--once) ends when the ordered lanes find nothing
                out.append(self._fresh_lane())
            return out + [self._lane(Direction.FROM_CRM, once) for _ in range(self.apply_lanes)]

        if not await self._wait_for_store():
            return
        specs = self.settings.object_specs()
        if options.wanted(specs):
            resolved = await choices.prepare(self.engine, self.client, specs, self.stopping)
            if self.stopping.is_set():
                return
            self._assemble(self.settings.with_specs(resolved))
            self.options = choices.Refresher(
                self.engine,
                self.client,
                resolved,
                self._laid_in,
                refresh_seconds=self.settings.choice_refresh_seconds,
                reread_seconds=self.settings.choice_reread_seconds,
            )
            self.pusher.options = self.applier.options = self.options
        # A throttle already in force when we start is honoured before the first send.
        await self.throttle.refresh()
        poll = asyncio.create_task(self.throttle.run())
        try:
            if once:
                await self._pull_once_through_outages()
                await self.jobs.run_pending()
                await asyncio.gather(*lanes())
            else:
                refresh = [self.options.run(self.stopping)] if self.options is not None else []
                await asyncio.gather(self._pull_loop(), self._jobs_loop(), *lanes(), *refresh)
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            await self.throttle.aclose()
            try:
                released = await asyncio.to_thread(queue.release, self.engine, self.id)
                await asyncio.to_thread(jobs.release, self.engine, self.id)
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                # Store down at exit: the claims expire with their lease instead.
                log.warning(
                    "claims not released: store unavailable",
                    extra={"event": "worker.release_failed"},
                )
                released = 0
            if released:
                log.info("released claims", extra={"event": "worker.release", "entries": released})

    async def _wait_for_store(self) -> bool:
        """Prepare the store (``_prepare_store``), waiting for as long as it cannot be
        reached (a worker started before its database); False if stopped meanwhile."""
        while not self.stopping.is_set():
            try:
                await asyncio.to_thread(self._prepare_store)
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                await self._wait(self.outage.failed(exc, "worker.start"))
                continue
            self.outage.answered()
            return True
        return False

    def _prepare_store(self) -> None:
        """Refuse a store that is not upgraded; bring the capture triggers to the
        configured flows (``migrate.ensure_current``)."""
        captured = migrate.ensure_current(self.engine, self.settings.object_specs().values())
        if captured is not None:
            log.warning(
                "capture triggers brought to the configured flows",
                extra={"event": "worker.triggers_installed", "objects": captured},
            )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)


async def _run(
    settings: Settings,
    engine: Engine,
    once: bool,
    concurrency: int,
    progress: Progress | None,
) -> None:
    async with DataverseClient.from_settings(settings) as client:
        worker = Worker(engine, client, settings, concurrency=concurrency, progress=progress)
        worker.install_signal_handlers()
        log.info("worker started", extra={"event": "worker.start", "worker": worker.id})
        # The objects Dynamics no longer matches pause before anything is sent.
        await drift.guard(engine, client, settings.object_specs())
        await worker.run(once=once)


def run_worker(
    settings: Settings,
    *,
    once: bool = False,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> None:
    """Run a worker until SIGINT/SIGTERM (or, with ``once``, until drained).

    ``progress(object, rows)`` is told of every page of a full read (the initial load)."""
    from crmsync.store.db import create_store_engine

    engine = create_store_engine(settings.database_url)
    try:
        asyncio.run(_run(settings, engine, once, concurrency, progress))
    finally:
        engine.dispose()
