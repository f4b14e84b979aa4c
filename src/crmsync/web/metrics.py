"""``GET /metrics``: Prometheus text format, from the same indexed queries as Sync Status.

The page is computed at most once per ``CACHE_SECONDS`` per app, so scrapers hitting it
often cost the store nothing extra. It needs the API's credentials (a Prometheus job
sends them with ``authorization: {credentials: <CRMSYNC_API_TOKEN>}``).

Series (the first five are the contract's; what each means is beside its family):
``crmsync_backlog_records{object,direction,operation}``,
``crmsync_backlog_oldest_age_seconds{object,direction}``,
``crmsync_synced_records_total{object,direction,operation}``,
``crmsync_sync_errors_total{object,direction,code}``, ``crmsync_crm_requests_total{status}``
(HTTP responses from Dynamics to this process's client, ``observability``),
``crmsync_dynamics_throttled_until_timestamp_seconds``, ``crmsync_alert_active{alert,
object}``, ``crmsync_drift_records{object,kind}`` and the ``observability`` gauges
``crmsync_dynamics_ratelimit_remaining_*``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from crmsync.alerts import AlertMonitor
from crmsync.domain import DriftKind, ErrorStatus
from crmsync.observability import CRM_REQUESTS, RATELIMIT_EXECUTION, RATELIMIT_REQUESTS
from crmsync.store.audit import last_results
from crmsync.store.backlog import Group
from crmsync.store.db import read_transaction
from crmsync.store.schema import sync_error, sync_throughput
from crmsync.store.status import DIRECTIONS, OPERATIONS, backlog_groups
from crmsync.store.types import utcnow
from crmsync.web.auth import require_api_auth
from crmsync.web.errors import error_responses
from crmsync.web.health import shared_throttle

CACHE_SECONDS = 5.0

router = APIRouter(
    tags=["operations"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 503),
)


class StoreCollector(Collector):
    """Reads every series from the store when collected."""

    def __init__(
        self, engine: Engine, objects: Iterable[str], alerts: AlertMonitor | None = None
    ) -> None:
        self.engine = engine
        self.objects = list(objects)
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with read_transaction(self.engine) as conn:
            groups = backlog_groups(conn)
            t = sync_throughput.c
            synced = conn.execute(
                sa.select(t.object, t.direction, t.operation, sa.func.sum(t.synced)).group_by(
                    t.object, t.direction, t.operation
                )
            ).all()
            e = sync_error.c
            errors = conn.execute(
                sa.select(e.object, e.direction, e.error_code, sa.func.count())
                .where(e.status == ErrorStatus.OPEN)
                .group_by(e.object, e.direction, e.error_code)
            ).all()
            drift = last_results(conn, self.objects)
        throttled = shared_throttle(self.engine)
        yield from self._backlog(groups, now)
        # The sum of the kept throughput buckets: it would step down if old buckets are
        # ever pruned, which Prometheus treats as a counter reset.
        total = CounterMetricFamily(
            "crmsync_synced_records",
            "Records synced, from the kept throughput buckets",
            labels=["object", "direction", "operation"],
        )
        for obj, direction, operation, n in synced:
            total.add_metric([obj, direction, operation], float(n or 0))
        yield total
        # A gauge despite ``_total`` (the name is the contract's): an error resolved or
        # dismissed leaves the count.
        open_errors = GaugeMetricFamily(
            "crmsync_sync_errors_total",
            "Open sync errors",
            labels=["object", "direction", "code"],
        )
        for obj, direction, code, n in errors:
            open_errors.add_metric([obj, direction, code], float(n))
        yield open_errors
        # The latest 429 ``Retry-After`` of any credential, shared through the store; 0
        # when none was ever recorded.
        yield GaugeMetricFamily(
            "crmsync_dynamics_throttled_until_timestamp_seconds",
            "Unix time until which Dynamics told the workers to wait (429 Retry-After)",
            value=throttled.timestamp() if throttled is not None else 0.0,
        )
        # 1 for each open incident (``alerts``); no sample when nothing is breached.
        active = GaugeMetricFamily(
            "crmsync_alert_active", "Open alert incidents", labels=["alert", "object"]
        )
        for incident in self.alerts.incidents() if self.alerts is not None else []:
            active.add_metric([incident["alert"], incident["object"]], 1.0)
        yield active
        # The last audit's findings per object (engine/audit.py); no sample for an object
        # never audited.
        found = GaugeMetricFamily(
            "crmsync_drift_records",
            "Records the last audit found on one side only or different",
            labels=["object", "kind"],
        )
        for result in drift:
            for kind in DriftKind:
                found.add_metric([result["object"], kind], float(result[kind]))
        yield found

    def _backlog(self, groups: list[Group], now: datetime) -> Iterator[Metric]:
        counts = {(o, d, op): 0 for o in self.objects for d in DIRECTIONS for op in OPERATIONS}
        oldest: dict[tuple[str, str], datetime] = {}
        for g in groups:
            key = (g.object, g.direction, g.operation)
            counts[key] = counts.get(key, 0) + g.count
            first = g.oldest_queued_at
            pair = (g.object, g.direction)
            if first is not None and (pair not in oldest or first < oldest[pair]):
                oldest[pair] = first
        records = GaugeMetricFamily(
            "crmsync_backlog_records",
            "Changes waiting to sync (parked errors excluded)",
            labels=["object", "direction", "operation"],
        )
        for (obj, direction, operation), n in counts.items():
            records.add_metric([obj, direction, operation], float(n))
        yield records
        # 0 when nothing is pending.
        age = GaugeMetricFamily(
            "crmsync_backlog_oldest_age_seconds",
            "Age of the oldest waiting change",
            labels=["object", "direction"],
        )
        for obj in self.objects:
            for direction in DIRECTIONS:
                first = oldest.get((obj, direction))
                seconds = max(0.0, (now - first).total_seconds()) if first else 0.0
                age.add_metric([obj, direction], seconds)
        yield age


class MetricsPage:
    """The rendered page, recomputed when older than ``CACHE_SECONDS``."""

    def __init__(
        self, engine: Engine, objects: Iterable[str], alerts: AlertMonitor | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(engine, objects, alerts))
        self.registry.register(CRM_REQUESTS)
        self.registry.register(RATELIMIT_REQUESTS)
        self.registry.register(RATELIMIT_EXECUTION)
        self._lock = threading.Lock()
        self._page = b""
        self._at = float("-inf")

    def render(self) -> bytes:
        with self._lock:
            if time.monotonic() - self._at >= CACHE_SECONDS:
                self._page = generate_latest(self.registry)
                self._at = time.monotonic()
            return self._page


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text format 0.0.4)."""
    page: MetricsPage = request.app.state.metrics
    return Response(page.render(), media_type=CONTENT_TYPE_LATEST)
