"""Outages, throttling and server faults of Dynamics are logged once when they begin and
once when they end, with their reason, never per request and never with a secret."""

from __future__ import annotations

import logging

import httpx
import pytest

from crmsync.dynamics.auth import StaticTokenProvider
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.limiter import Limiter
from crmsync.errors import Retriable

ORG = "https://org.crm.dynamics.com"
GUID = "00000000-0000-0000-0000-000000000001"
TOKEN = "tok-canary-123456"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.event) for r in caplog.records if hasattr(r, "event")]


async def test_each_condition_is_logged_when_it_begins_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = ["down"] * 5 + ["503"] * 4 + ["429"] * 2 + ["ok"] * 3 + ["down"] + ["ok"]

    def handler(request: httpx.Request) -> httpx.Response:
        what = script.pop(0)
        if what == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if what == "503":
            return httpx.Response(503, json={"error": {"code": "", "message": "busy"}})
        if what == "429":
            return httpx.Response(
                429,
                json={"error": {"code": "0x80072322", "message": "x"}},
                headers={"Retry-After": "1"},
            )
        return httpx.Response(200, json={"leadid": GUID})

    clock = FakeClock()
    dv = DataverseClient(
        ORG,
        StaticTokenProvider(TOKEN),
        transport=httpx.MockTransport(handler),
        limiter=Limiter(clock=clock, sleep=clock.sleep),
    )
    caplog.set_level(logging.INFO, logger="crmsync.dynamics")
    async with dv:
        for _ in range(9):  # five refused connections, four 503s: each raised to the caller
            with pytest.raises(Retriable):
                await dv.get("leads", GUID)
        for _ in range(3):  # two 429s resent inside the client, then answers
            assert await dv.get("leads", GUID) is not None
        with pytest.raises(Retriable):
            await dv.get("leads", GUID)
        assert await dv.get("leads", GUID) is not None
    assert events(caplog) == [
        ("WARNING", "dataverse.unreachable"),
        ("WARNING", "dataverse.failing"),
        ("WARNING", "dataverse.throttled"),
        ("INFO", "dataverse.unreachable.over"),
        ("INFO", "dataverse.failing.over"),
        ("INFO", "dataverse.throttled.over"),
        ("WARNING", "dataverse.unreachable"),
        ("INFO", "dataverse.unreachable.over"),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert "ConnectError" in messages[0] and "HTTP 503" in messages[1]
    assert "Retry-After 1 s" in messages[2]
    assert all(TOKEN not in f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_bulk_fallback_logs_at_info_without_breaking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its ``message`` field clashed with LogRecord's own: KeyError once INFO was on."""
    from test_dv_client import batch_server

    from crmsync.dynamics.writes import Write

    batch = batch_server({}, [])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("UpsertMultiple"):
            return httpx.Response(400, json={"error": {"code": "0x80044331", "message": "long"}})
        return batch(request)

    caplog.set_level(logging.INFO, logger="crmsync.dynamics")
    writes = [Write("upsert", "leads", GUID, {})]
    tokens = StaticTokenProvider(TOKEN)
    async with DataverseClient(ORG, tokens, transport=httpx.MockTransport(handler)) as dv:
        results = await dv.write_multiple("UpsertMultiple", "leads", "lead", "leadid", writes)
    assert [r.ok for r in results] == [True]
    assert ("INFO", "dataverse.bulk_fallback") in events(caplog)
