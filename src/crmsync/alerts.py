"""Alerts: a JSON webhook when the sync falls behind, once per breach and once on recovery.

Thresholds per object, all optional: ``oldest_waiting_age`` (the age in seconds of the
oldest waiting change, parked errors excluded), ``errors_per_hour`` (sync errors that
first failed in the last hour), ``drift_records`` (what the last audit found).

``decide`` is the whole policy, without I/O: a value above its threshold opens an
incident and sends ``alert``; while it stays above, nothing more is sent; once it is back
at or below, ``recovered`` is sent and the incident closes. ``AlertMonitor.check``
observes the store, decides and posts to ``alert_webhook_url`` with retries. An incident
opens or closes only once its message was delivered, so a webhook that is down gets it
on a later check. Incidents live in the memory of the process that runs the checks
(``crmsync serve``): a restart during an incident sends its ``alert`` again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from crmsync.config import Settings
from crmsync.domain import ErrorStatus
from crmsync.store.audit import last_results
from crmsync.store.db import read_transaction
from crmsync.store.params import iso
from crmsync.store.schema import sync_error, sync_pause
from crmsync.store.status import oldest_waiting
from crmsync.store.types import utcnow

log = logging.getLogger(__name__)

OLDEST_AGE = "oldest_waiting_age"
ERRORS_PER_HOUR = "errors_per_hour"
# The records the last drift audit found on one side only or different (store/audit.py).
DRIFT = "drift_records"
# An object crmsync paused because Dynamics no longer matches its mapping: always on.
MAPPING_MISMATCH = "mapping_mismatch"
ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 1.0

Key = tuple[str, str]  # (alert, object)


@dataclass(frozen=True)
class Event:
    """One webhook message."""

    kind: str  # "alert" or "recovered"
    alert: str
    object: str
    value: float
    threshold: float
    at: datetime

    def payload(self) -> dict[str, Any]:
        verb = "is above" if self.kind == "alert" else "is back within"
        message = (
            f"crmsync: {self.object} {self.alert} {self.value:g} {verb} the threshold "
            f"{self.threshold:g}"
        )
        if self.alert == MAPPING_MISMATCH:
            message = (
                f"crmsync: {self.object} is paused: Dynamics no longer matches its mapping"
                if self.kind == "alert"
                else f"crmsync: {self.object} is no longer paused for its mapping"
            )
        return {
            "event": self.kind,
            "alert": self.alert,
            "object": self.object,
            "value": self.value,
            "threshold": self.threshold,
            "at": iso(self.at),
            "message": message,
        }


def thresholds(settings: Settings) -> dict[str, float]:
    """The configured thresholds by alert name (unset ones left out)."""
    out: dict[str, float] = {MAPPING_MISMATCH: 0.0}
    if settings.alert_oldest_age_seconds is not None:
        out[OLDEST_AGE] = settings.alert_oldest_age_seconds
    if settings.alert_errors_per_hour is not None:
        out[ERRORS_PER_HOUR] = float(settings.alert_errors_per_hour)
    if settings.alert_drift_records is not None:
        out[DRIFT] = float(settings.alert_drift_records)
    return out


def decide(
    active: frozenset[Key],
    observed: Mapping[Key, float],
    limits: Mapping[str, float],
    now: datetime,
) -> list[Event]:
    """The messages to send: ``alert`` for a new breach, ``recovered`` for an ended one.

    A key not observed counts as 0 (no waiting change, no error): an incident on it ends.
    """
    events = []
    for key in sorted(set(observed) | active):
        alert, obj = key
        if alert not in limits:
            continue
        value, limit = observed.get(key, 0.0), limits[alert]
        if value > limit and key not in active:
            events.append(Event("alert", alert, obj, value, limit, now))
        elif value <= limit and key in active:
            events.append(Event("recovered", alert, obj, value, limit, now))
    return events


def observe(
    conn: Connection, objects: Iterable[str], limits: Mapping[str, float], now: datetime
) -> dict[Key, float]:
    """The current value of each configured alert, per object."""
    names = list(objects)
    observed: dict[Key, float] = {}
    if OLDEST_AGE in limits:
        for obj, first in oldest_waiting(conn, names).items():
            observed[(OLDEST_AGE, obj)] = max(0.0, round((now - first).total_seconds()))
    if ERRORS_PER_HOUR in limits:
        e = sync_error.c
        since = now - timedelta(hours=1)
        # An error that first failed in the last hour also last failed in it: the range
        # on (status, last_failed_at) keeps this an index range, not a table scan.
        rows = conn.execute(
            sa.select(e.object, sa.func.count())
            .where(
                e.status == ErrorStatus.OPEN, e.last_failed_at >= since, e.first_failed_at >= since
            )
            .group_by(e.object)
        )
        for obj, n in rows:
            if obj in names:
                observed[(ERRORS_PER_HOUR, obj)] = float(n)
    if DRIFT in limits:
        for found in last_results(conn, names):
            drifted = found["only_local"] + found["only_dynamics"] + found["different"]
            observed[(DRIFT, found["object"])] = float(drifted)
    if MAPPING_MISMATCH in limits:
        p = sync_pause.c
        for (obj,) in conn.execute(sa.select(p.object).where(p.reason.is_not(None)).distinct()):
            if obj in names:
                observed[(MAPPING_MISMATCH, obj)] = 1.0
    return observed


async def post(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> bool:
    """POST ``payload``, retrying ``ATTEMPTS`` times on failure; whether it got a 2xx."""
    for attempt in range(ATTEMPTS):
        try:
            response = await client.post(url, json=payload, timeout=TIMEOUT_SECONDS)
            if response.is_success:
                return True
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        # The URL may carry a token (Slack, Teams): it is never logged.
        log.warning(
            "alert webhook failed",
            extra={"event": "alerts.webhook_failed", "attempt": attempt + 1, "reason": reason},
        )
        if attempt + 1 < ATTEMPTS:
            await asyncio.sleep(BACKOFF_SECONDS * 2**attempt)
    return False


class AlertMonitor:
    """Checks the thresholds and keeps the open incidents."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        objects: Iterable[str],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.objects = list(objects)
        self.limits = thresholds(settings)
        url = settings.alert_webhook_url
        self.url = url.get_secret_value() if url is not None else None
        self.client = client
        self.active: frozenset[Key] = frozenset()
        self.values: dict[Key, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.limits)

    def _observe(self, now: datetime) -> dict[Key, float]:
        with read_transaction(self.engine) as conn:
            return observe(conn, self.objects, self.limits, now)

    async def check(self, now: datetime | None = None) -> list[Event]:
        """Observe, decide, send; the events delivered (all of them without a webhook)."""
        if not self.enabled:
            return []
        now = now or utcnow()
        self.values = await run_in_threadpool(self._observe, now)
        delivered = []
        for event in decide(self.active, self.values, self.limits, now):
            if self.url is not None and not await self._send(event):
                continue  # tried again at the next check
            key = (event.alert, event.object)
            self.active = self.active | {key} if event.kind == "alert" else self.active - {key}
            log.warning(
                "alert %s: %s %s",
                event.kind,
                event.object,
                event.alert,
                extra={"event": f"alerts.{event.kind}", "alert": event.alert, "value": event.value},
            )
            delivered.append(event)
        return delivered

    async def _send(self, event: Event) -> bool:
        assert self.url is not None
        if self.client is not None:
            return await post(self.client, self.url, event.payload())
        async with httpx.AsyncClient() as client:
            return await post(client, self.url, event.payload())

    def incidents(self) -> list[dict[str, Any]]:
        """The open incidents, for /healthz and /metrics."""
        return [
            {
                "alert": alert,
                "object": obj,
                "value": self.values.get((alert, obj), 0.0),
                "threshold": self.limits[alert],
            }
            for alert, obj in sorted(self.active)
            if alert in self.limits
        ]
