"""``GET /healthz`` and the background upkeep of ``crmsync serve``.

``/healthz`` needs no credentials (load balancers and uptime checks call it), so it
says only what an outsider may know: whether the store and Dynamics answer, how old the
oldest waiting change is, until when Dynamics told the workers to wait
(``dynamics_throttled_until``, null when no wait is in force), and which alerts are
open. It answers 503 when the store is unreachable (nothing works then), and 200
otherwise: Dynamics being down is reported, not failed, because the API and the console
still work and the backlog will drain once it is back. Dynamics is probed without
credentials (``DynamicsProbe``), at most once per ``PROBE_CACHE_SECONDS``.

``ops_loop`` runs while the app serves: every ``ops_interval_seconds`` it runs
``store.maintenance.maintain`` (backlog samples, throughput retention) and the alert
checks, and in between it folds the backlog counts every ``COMPACT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from crmsync.alerts import AlertMonitor
from crmsync.config import Settings
from crmsync.logs import Conditions
from crmsync.memory import release_free_memory
from crmsync.store.db import read_transaction
from crmsync.store.maintenance import COMPACT_SECONDS, compact_counts, maintain
from crmsync.store.params import iso
from crmsync.store.status import oldest_waiting
from crmsync.store.throttle import latest as throttled_until
from crmsync.store.types import utcnow

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 2.0
PROBE_CACHE_SECONDS = 30.0
WEB_API_ROOT = "/api/data/v9.2/"

router = APIRouter(tags=["operations"])


class DynamicsProbe:
    """Whether Dynamics answers HTTP, checked at most once per ``PROBE_CACHE_SECONDS``."""

    def __init__(self, url: str | None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/") + WEB_API_ROOT if url else None
        self.transport = transport
        self._lock = asyncio.Lock()
        self._result = "unknown"
        self._at = float("-inf")

    async def status(self) -> str:
        """``ok``, ``unreachable`` or ``not_configured``."""
        if self.url is None:
            return "not_configured"
        async with self._lock:  # one probe in flight; the others wait for its answer
            if time.monotonic() - self._at >= PROBE_CACHE_SECONDS:
                self._result = await self._probe(self.url)
                self._at = time.monotonic()
            return self._result

    async def _probe(self, url: str) -> str:
        # One unauthenticated GET of the Web API root: any HTTP answer (a 401 included)
        # proves the network path and the service are up, without spending a token
        # request or exposing a credential. A request of no user does not count against
        # the workers' service protection limits, so it needs no pause while they are
        # throttled.
        try:
            async with httpx.AsyncClient(
                transport=self.transport, timeout=PROBE_TIMEOUT_SECONDS
            ) as client:
                await client.get(url)
        except httpx.HTTPError as exc:
            log.warning(
                "dynamics unreachable",
                extra={"event": "health.dynamics_unreachable", "reason": type(exc).__name__},
            )
            return "unreachable"
        return "ok"


def shared_throttle(engine: Engine) -> datetime | None:
    """The latest shared 429 wait, or None also when it cannot be read: a store not yet
    upgraded to migration 0003 must not make the health check (or metrics) fail."""
    try:
        with engine.connect() as conn:
            return throttled_until(conn)
    except SQLAlchemyError:
        return None


def _store_check(engine: Engine, objects: list[str]) -> tuple[str | None, Any, Any]:
    with read_transaction(engine) as conn:
        conn.execute(text("SELECT 1"))
        oldest = oldest_waiting(conn, objects)
    throttled = shared_throttle(engine)
    if not oldest:
        return None, None, throttled
    obj = min(oldest, key=lambda name: oldest[name])
    return obj, oldest[obj], throttled


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Store and Dynamics reachability and the oldest waiting change, without credentials."""
    state = request.app.state
    objects = list(state.specs)
    try:
        obj, first, throttled = await run_in_threadpool(_store_check, state.engine, objects)
    except SQLAlchemyError:
        body = {"status": "error", "store": "unreachable", "message": "the store is unreachable"}
        return JSONResponse(body, status_code=503)
    now = utcnow()
    probe: DynamicsProbe = state.dynamics_probe
    alerts: AlertMonitor = state.alerts
    incidents = alerts.incidents()
    return JSONResponse(
        {
            "status": "ok",
            "store": "ok",
            "dynamics": await probe.status(),
            "oldest_waiting": None
            if first is None
            else {
                "object": obj,
                "queued_at": iso(first),
                "age_seconds": max(0, int((now - first).total_seconds())),
            },
            "dynamics_throttled_until": iso(throttled)
            if throttled is not None and throttled > now
            else None,
            "alerting": bool(incidents),
            "alerts": incidents,
        }
    )


async def refresh_revoked_sessions(app: FastAPI) -> None:
    """Read the console sessions other processes logged out; a store that cannot answer
    (down, or not yet at migration 0006) leaves this process with its own logouts only."""
    try:
        await run_in_threadpool(app.state.revoked_sessions.refresh, app.state.engine)
    except SQLAlchemyError:
        if getattr(app.state, "sessions_readable", True):  # said once, not every 5 s
            log.warning(
                "cannot read logged-out sessions (is the store upgraded? crmsync db upgrade)",
                extra={"event": "console.sessions_unreadable"},
            )
        app.state.sessions_readable = False
    else:
        app.state.sessions_readable = True


async def ops_loop(app: FastAPI) -> None:
    """Status upkeep and alert checks every ``ops_interval_seconds``; the backlog counts
    folded and other processes' console logouts read every ``COMPACT_SECONDS`` in
    between; until cancelled."""
    settings: Settings = app.state.settings
    alerts: AlertMonitor = app.state.alerts
    next_round = time.monotonic()
    outage = Conditions(log)
    while True:
        await refresh_revoked_sessions(app)
        try:
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + settings.ops_interval_seconds
                await run_in_threadpool(maintain, app.state.engine)
                await run_in_threadpool(release_free_memory)
                await alerts.check()
            else:
                await run_in_threadpool(compact_counts, app.state.engine)
        except OperationalError as exc:  # the store is down: said once, not every round
            reason = str(exc.orig or exc).strip().splitlines()[0]
            outage.begin(
                "store.unreachable",
                f"the store does not answer ({reason}); upkeep waits for it",
                event="store.unreachable",
                now=time.monotonic(),
            )
        except Exception:  # a bad round must not end the loop; the next one retries
            log.exception("ops round failed", extra={"event": "ops.round_failed"})
        else:
            if outage.active:
                outage.end_all("{name}: over, the store answers again", now=time.monotonic())
        wait = min(COMPACT_SECONDS, next_round - time.monotonic())
        await asyncio.sleep(max(0.0, wait))


def install(app: FastAPI, settings: Settings) -> None:
    """Register /healthz and the state it and ``ops_loop`` use."""
    app.state.dynamics_probe = DynamicsProbe(settings.dynamics_url)
    app.state.alerts = AlertMonitor(app.state.engine, settings, app.state.specs)
    app.include_router(router)
