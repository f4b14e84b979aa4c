"""What makes a 429 pause every worker process sharing the credential, and makes them
share its execution time budget.

The client's ``Limiter`` gates one process's requests. ``SharedThrottle`` publishes each
429 it sees to the store (``store.throttle``), one write per burst, and polls the store
every ``POLL_SECONDS`` for the others' 429s, closing the local gate until the shared
instant (UTC wall time, converted to each process's clock and capped at ``MAX_WAIT``).
The same poll hears what the others spent over Dataverse's window and their shares,
which the ``ExecutionBudget`` leaves to them (down to its own floor); this process's
own figures are written by a task of their own when they moved (``SPEND_STEP``). Within
a poll's blindness a process may be answered 429 (Dataverse rejects before executing,
so resending is safe) or overspend, which the shared 429 pays for. A store outage never
stops sending: it is logged once, and the gate and budget work alone until it answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from crmsync.config import Settings
from crmsync.dynamics.limiter import Limiter
from crmsync.store import throttle as shared
from crmsync.store.types import utcnow

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# This process's execution time spent is written when it moved by this share of the
# budget (12 s of Dataverse's 1,200), and while there is any at least this often: well
# within ``store.throttle.SPEND_STALE``, after which the others forget it.
SPEND_STEP = 0.01
SPEND_HEARTBEAT = 5.0
# Dataverse's windows are 300 s (api-limits.md); a longer wait is a wrong clock somewhere.
MAX_WAIT = timedelta(seconds=300)


def shared_until(now: datetime, retry_after: float) -> datetime:
    """The wall-clock instant a ``Retry-After`` of ``retry_after`` seconds ends."""
    return now + min(timedelta(seconds=max(0.0, retry_after)), MAX_WAIT)


def remaining(until: datetime | None, now: datetime) -> float:
    """Seconds still to wait for a shared instant, 0 when past, at most ``MAX_WAIT``."""
    if until is None:
        return 0.0
    return max(0.0, min((until - now).total_seconds(), MAX_WAIT.total_seconds()))


class SharedThrottle:
    def __init__(
        self,
        engine: Engine,
        limiter: Limiter,
        credential: str,
        *,
        poll_seconds: float = POLL_SECONDS,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.credential = credential
        self.poll_seconds = poll_seconds
        self._now = now
        self._pending: datetime | None = None
        self._published: datetime | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._store_ok = True
        # This process's row of the shared spending (``store.throttle.tell``), and what
        # it last wrote there: (ms, share, limiter clock).
        self.process = uuid.uuid4().hex
        self._told = (0.0, limiter.budget.share, float("-inf"))
        self._teller: asyncio.Task[None] | None = None
        limiter.on_throttle(self._throttled)

    @classmethod
    def for_settings(cls, engine: Engine, limiter: Limiter, settings: Settings) -> SharedThrottle:
        key = shared.credential_key(settings.dynamics_url, settings.tenant_id, settings.client_id)
        return cls(engine, limiter, key)

    # --- our 429s, out to the store ------------------------------------------------------

    def _throttled(self, retry_after: float) -> None:
        """Limiter listener: remember the instant and make sure a publisher runs. A burst
        of 429s becomes one write of its latest instant."""
        if retry_after <= 0:
            return
        until = shared_until(self._now(), retry_after)
        if self._pending is None or until > self._pending:
            self._pending = until
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next publish or poll carries it
        if self._publisher is None or self._publisher.done():
            self._publisher = loop.create_task(self.publish())

    async def publish(self) -> None:
        """Write pending instants until none is left; one write at a time."""
        while self._pending is not None:
            until, self._pending = self._pending, None
            if self._published is not None and until <= self._published:
                continue
            try:
                await asyncio.to_thread(self._record, until)
            except Exception as exc:
                self._store_failed(exc)
                return
            self._published = until
            self._store_answered()

    def _record(self, until: datetime) -> None:
        shared.publish(self.engine, self.credential, until, self._now())

    # --- everyone's 429s, in from the store ----------------------------------------------

    async def refresh(self) -> float:
        """Read the shared instant once and close the local gate until it, and tell the
        execution budget what the other processes spent; the seconds held (0 when the
        store says nothing or cannot be read). This process's own spending is written
        by a task of its own when due (on SQLite it may wait for the write lock, which
        must not hold up the others' 429s)."""
        self._tell_spending()
        try:
            until, others = await asyncio.to_thread(
                shared.poll, self.engine, self.credential, self.process, self._now()
            )
        except Exception as exc:
            self._store_failed(exc)
            return 0.0
        self._store_answered()
        self.limiter.budget.hear(others, self.limiter.now())
        seconds = remaining(until, self._now())
        if seconds > 0:
            self.limiter.hold(seconds)
        return seconds

    def _tell_spending(self) -> None:
        budget, clock = self.limiter.budget, self.limiter.now()
        spent, share = budget.spent(clock), budget.share
        if not self._spend_due(spent, share, clock):
            return
        if self._teller is not None and not self._teller.done():
            return  # the last write still waits for the lock: the next poll tries again
        self._told = (spent, share, clock)
        self._teller = asyncio.get_running_loop().create_task(self._tell(spent, share))

    async def _tell(self, spent: float, share: float) -> None:
        try:
            await asyncio.to_thread(
                shared.tell, self.engine, self.credential, self.process, spent, share, self._now
            )
        except Exception as exc:
            self._told = (-1.0, share, float("-inf"))  # not told: due again next poll
            self._store_failed(exc)

    def _spend_due(self, spent: float, share: float, clock: float) -> bool:
        """Whether this poll writes the process's spending: when it moved by
        ``SPEND_STEP`` of the budget since last told, fell to nothing, or the share
        changed; and while there is any, every ``SPEND_HEARTBEAT`` (so the others know
        this process lives)."""
        told, told_share, at = self._told
        if spent == told and share == told_share:
            return spent > 0 and clock - at >= SPEND_HEARTBEAT
        moved = abs(spent - told) >= SPEND_STEP * self.limiter.budget.budget_ms
        return moved or spent == 0 or share != told_share or clock - at >= SPEND_HEARTBEAT

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_seconds)

    async def aclose(self) -> None:
        """Let a publish in progress finish, so a worker that exits right after its 429
        still tells the others; and a write of this process's spending."""
        for task in (self._publisher, self._teller):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task

    # --- a store outage is logged once ---------------------------------------------------

    def _store_failed(self, exc: Exception) -> None:
        if self._store_ok:
            self._store_ok = False
            log.warning(
                "shared throttle unavailable; honouring this process's 429s only",
                extra={"event": "throttle.store_unavailable", "error": type(exc).__name__},
            )

    def _store_answered(self) -> None:
        if not self._store_ok:
            self._store_ok = True
            log.info("shared throttle available again", extra={"event": "throttle.store_back"})


# Dataverse's service protection budget per user: 6,000 requests per 300 s (api-limits.md).
DATAVERSE_REQUESTS = 6000
DATAVERSE_WINDOW_SECONDS = 300.0


class Pacer:
    """Keeps a resync's or an audit's requests within ``share`` of Dataverse's request
    budget (``job_request_share``): no more than ``share`` of 6,000 in any 300 s,
    so the sync keeps the rest of every window.

    The share is of the window, not of the rate: a job that needs fewer requests than
    its part (an audit of 1,000,000 records reads 200 pages) goes as fast as Dynamics
    answers, as it would with the sync idle; one that needs more waits, once its part
    of the window is spent, for its oldest request to leave the window. Dataverse
    counts the same sliding window (api-limits.md), so the sync's part is there
    whatever the job did before."""

    def __init__(
        self,
        share: float,
        *,
        budget: int = DATAVERSE_REQUESTS,
        window: float = DATAVERSE_WINDOW_SECONDS,
    ) -> None:
        self.allowed = None if share >= 1 else max(1, int(budget * share))
        self.window = window
        self._sent: collections.deque[float] = collections.deque()

    async def __call__(self) -> None:
        if self.allowed is None:
            return
        loop = asyncio.get_running_loop()
        while True:  # callers may wait side by side: each looks again after its sleep
            now = loop.time()
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            if len(self._sent) < self.allowed:
                self._sent.append(now)
                return
            await asyncio.sleep(self._sent[0] + self.window - now)
