"""``/healthz``, the Dynamics probe and the alert webhook, on SQLite and PostgreSQL.

The webhook receiver is a real HTTP server on a free loopback port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import test_status_api as status_fixture
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from crmsync import alerts
from crmsync.config import load_settings
from crmsync.errors import CrmsyncError
from crmsync.observability import CRM_REQUESTS
from crmsync.store.schema import sync_error, sync_queue
from crmsync.web import health
from crmsync.web.app import create_app

TOKEN = "health-token"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """Records every POSTed JSON body; answers the queued statuses, then 204."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "BACKOFF_SECONDS", 0.01)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def queue_lead(engine: Engine, age: timedelta, key: str = "1") -> None:
    row = status_fixture.entry("lead", "to_crm", key, "insert", "00:00", record_id=int(key))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue).values(**row | {"first_queued_at": datetime.now(UTC) - age})
        )


# -- /healthz -----------------------------------------------------------------------------


async def test_healthz_reports_the_oldest_waiting_change(db_url: str, engine: Engine):
    app = create_app(load_settings(database_url=db_url), engine=engine)
    async with client_for(app) as c:
        body = (await c.get("/healthz")).json()
        assert body == {
            "status": "ok",
            "store": "ok",
            "dynamics": "not_configured",
            "oldest_waiting": None,
            "dynamics_throttled_until": None,
            "alerting": False,
            "alerts": [],
        }
        queue_lead(engine, timedelta(minutes=30))
        parked = status_fixture.entry("contact", "to_crm", "9", "insert", "00:00", state="parked")
        recent = status_fixture.entry("opportunity", "from_crm", "ab", "update", "00:00")
        with engine.begin() as conn:  # an older parked entry does not count
            conn.execute(
                sa.insert(sync_queue),
                [
                    parked | {"first_queued_at": datetime.now(UTC) - timedelta(hours=10)},
                    recent | {"first_queued_at": datetime.now(UTC) - timedelta(minutes=10)},
                ],
            )
        body = (await c.get("/healthz")).json()
    oldest = body["oldest_waiting"]
    assert oldest["object"] == "lead"
    assert 1800 <= oldest["age_seconds"] < 1800 + 60


async def test_dynamics_probe_ok_unreachable_and_cached(emulator_url: str, monkeypatch):
    assert await health.DynamicsProbe(emulator_url).status() == "ok"
    closed = f"http://127.0.0.1:{free_port()}"
    probe = health.DynamicsProbe(closed)
    assert await probe.status() == "unreachable"
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401)  # Dynamics without a token: reachable all the same

    cached = health.DynamicsProbe("https://org.crm.dynamics.com", httpx.MockTransport(handler))
    assert [await cached.status() for _ in range(3)] == ["ok"] * 3
    assert len(calls) == 1 and "Authorization" not in calls[0].headers
    monkeypatch.setattr(health, "PROBE_CACHE_SECONDS", 0.0)
    await cached.status()
    assert len(calls) == 2


async def test_healthz_shows_dynamics_without_leaking_settings(db_url: str, engine: Engine):
    settings = load_settings(
        database_url=db_url,
        dynamics_url=f"http://127.0.0.1:{free_port()}",
        client_secret="very-secret",
        alert_webhook_url="http://127.0.0.1:9/hooks/secret-token",
    )
    app = create_app(settings, engine=engine)
    async with client_for(app) as c:
        response = await c.get("/healthz")
    assert response.status_code == 200
    assert response.json()["dynamics"] == "unreachable"
    assert "very-secret" not in response.text and "secret-token" not in response.text


# -- alerts -------------------------------------------------------------------------------


async def test_oldest_age_alert_once_per_breach_then_recovery(
    db_url: str, engine: Engine, receiver: Receiver
):
    settings = load_settings(
        database_url=db_url,
        api_token=TOKEN,
        alert_oldest_age_seconds=600,
        alert_webhook_url=receiver.url,
    )
    app = create_app(settings, engine=engine)
    monitor: alerts.AlertMonitor = app.state.alerts
    assert await monitor.check() == []
    queue_lead(engine, timedelta(minutes=5))
    assert await monitor.check() == [] and receiver.bodies == []
    queue_lead(engine, timedelta(minutes=20), key="2")
    await monitor.check()
    await monitor.check()  # still breached: not sent again
    assert len(receiver.bodies) == 1
    sent = receiver.bodies[0]
    assert (sent["event"], sent["alert"], sent["object"]) == ("alert", "oldest_waiting_age", "lead")
    assert 1200 <= sent["value"] < 1260 and sent["threshold"] == 600
    async with client_for(app) as c:
        health_body = (await c.get("/healthz")).json()
        page = (await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    assert health_body["alerting"] is True
    assert health_body["alerts"][0]["alert"] == "oldest_waiting_age"
    active = _samples(page, "crmsync_alert_active")
    assert active == {(("alert", "oldest_waiting_age"), ("object", "lead")): 1.0}
    with engine.begin() as conn:  # the old entry syncs
        conn.execute(sa.delete(sync_queue).where(sync_queue.c.record_key == "2"))
    await monitor.check()
    await monitor.check()
    assert [b["event"] for b in receiver.bodies] == ["alert", "recovered"]
    assert monitor.incidents() == []


async def test_webhook_retries_and_a_failed_delivery_is_sent_later(
    db_url: str, engine: Engine, receiver: Receiver
):
    settings = load_settings(
        database_url=db_url, alert_errors_per_hour=1, alert_webhook_url=receiver.url
    )
    monitor = create_app(settings, engine=engine).state.alerts
    now = datetime.now(UTC)
    error = {
        "object": "contact",
        "direction": "to_crm",
        "operation": "insert",
        "error_code": "0x80040333",
        "error_message": "duplicate",
        "first_failed_at": now - timedelta(minutes=10),
        "last_failed_at": now - timedelta(minutes=5),
    }
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_error),
            [error | {"record_key": str(i)} for i in range(3)]
            + [  # first failed two hours ago: not new
                error | {"record_key": "old", "first_failed_at": now - timedelta(hours=2)}
            ],
        )
    receiver.statuses = [500, 503]  # two failures, then the third attempt succeeds
    events = await monitor.check()
    assert [(e.kind, e.object, e.value) for e in events] == [("alert", "contact", 3.0)]
    assert len(receiver.bodies) == 3
    receiver.statuses = [500, 500, 500]  # recovery undeliverable this round
    with engine.begin() as conn:
        conn.execute(sa.update(sync_error).values(status="resolved"))
    assert await monitor.check() == []
    assert monitor.incidents() != []  # still open until the recovery is delivered
    events = await monitor.check()
    assert [e.kind for e in events] == ["recovered"]
    assert [b["event"] for b in receiver.bodies] == ["alert"] * 3 + ["recovered"] * 4


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_crm_requests_are_counted_and_exposed(db_url: str, engine: Engine):
    from crmsync.dynamics.auth import StaticTokenProvider
    from crmsync.dynamics.client import DataverseClient

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("missing"):
            return httpx.Response(404, json={"error": {"code": "0x0", "message": "gone"}})
        return httpx.Response(200, json={"value": []})

    def count(status: str) -> float:
        return CRM_REQUESTS.labels(status=status)._value.get()

    before = {s: count(s) for s in ("200", "404")}
    async with DataverseClient(
        "https://org.crm.dynamics.com",
        StaticTokenProvider("t"),
        transport=httpx.MockTransport(handler),
    ) as dv:
        await dv._send("GET", "https://org.crm.dynamics.com/api/data/v9.2/leads")
        await dv._send("GET", "https://org.crm.dynamics.com/api/data/v9.2/leads")
        with pytest.raises(CrmsyncError):
            await dv._send("GET", "https://org.crm.dynamics.com/api/data/v9.2/missing")
    assert count("200") - before["200"] == 2 and count("404") - before["404"] == 1
    app = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)
    async with client_for(app) as c:
        page = (await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    exposed = _samples(page, "crmsync_crm_requests_total")
    assert exposed[(("status", "200"),)] == count("200")
    assert exposed[(("status", "404"),)] == count("404")


async def test_serve_runs_upkeep_and_alerts_in_the_background(
    db_url: str, engine: Engine, receiver: Receiver
):
    import asyncio

    from crmsync.store.schema import sync_backlog_sample

    queue_lead(engine, timedelta(minutes=20))
    settings = load_settings(
        database_url=db_url,
        alert_oldest_age_seconds=60,
        alert_webhook_url=receiver.url,
        ops_interval_seconds=1,
    )
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        for _ in range(200):
            if receiver.bodies:
                break
            await asyncio.sleep(0.05)
    assert [b["event"] for b in receiver.bodies] == ["alert"]
    with engine.connect() as conn:
        samples = conn.execute(
            sa.select(sync_backlog_sample.c.backlog).where(
                sync_backlog_sample.c.object == "lead",
                sync_backlog_sample.c.direction == "to_crm",
            )
        ).scalars()
        assert list(samples) == [1]
