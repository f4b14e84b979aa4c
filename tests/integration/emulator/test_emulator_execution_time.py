"""Execution time: what each message is charged, the budget's 429, the sliding window,
the ``x-ms-ratelimit-*`` headers, the stats and the config's validation."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from dvclient import Dv, batch_body, error, http_part, send_batch, token
from prometheus_client import CollectorRegistry

from crmsync import observability
from crmsync.dynamics.auth import StaticTokenProvider
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.faults import Throttled
from crmsync.dynamics.limiter import READ_ROW_MS, RateLimitRemaining, estimate_ms
from crmsync.emulator.app import Emulator
from crmsync.emulator.costs import DEFAULT_COSTS

LEAD = "Microsoft.Dynamics.CRM.lead"
BURST = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME = "x-ms-ratelimit-time-remaining-xrm-requests"
# Distinct round figures, so that each charge below can only come from its own cost.
COSTS = {
    "create": 10,
    "update": 20,
    "upsert": 30,
    "delete": 40,
    "batch": 5,
    "multiple_request": 7,
    "create_multiple_record": 1,
    "update_multiple_record": 2,
    "upsert_multiple_record": 3,
    "read_page": 11,
    "read_row": 0.5,
}


async def configure(client: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    r = await client.put("/_emulator/config", json=settings)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def spent(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/_emulator/stats")).json()["execution_ms"])


class Meter:
    """The execution time charged since the last look, total and by message."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.seen: dict[str, float] = {}

    async def start(self) -> None:
        self.seen = (await spent(self.client))["by_message"]

    async def delta(self) -> dict[str, float]:
        now = (await spent(self.client))["by_message"]
        out = {m: round(now[m] - self.seen[m], 6) for m in now if now[m] != self.seen[m]}
        self.seen = now
        return out


def targets(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"@odata.type": LEAD, "lastname": f"T{i}", **extra} for i in range(n)]


def changeset(boundary: str, parts: list[str]) -> str:
    return (
        f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
        + batch_body(boundary, parts).decode()
        + "\r\n"
    )


@pytest.fixture
async def meter(client: httpx.AsyncClient, dv: Dv) -> Meter:
    await configure(client, cost_model="dataverse", costs=COSTS)
    m = Meter(client)
    await m.start()
    return m


async def test_single_operations_are_charged_by_message(dv: Dv, meter: Meter) -> None:
    lead = await dv.create("leads", {"lastname": "A"})
    assert await meter.delta() == {"single": 10}
    lead_id = lead["leadid"]
    r = await dv.req("PATCH", f"leads({lead_id})", {"If-Match": "*"}, json={"firstname": "B"})
    assert r.status_code == 204 and await meter.delta() == {"single": 20}
    r = await dv.req("PATCH", f"leads({uuid.uuid4()})", json={"lastname": "C"})
    assert r.status_code == 204 and await meter.delta() == {"single": 30}  # an upsert
    r = await dv.req(
        "PATCH", f"leads({uuid.uuid4()})", {"If-None-Match": "*"}, json={"lastname": "D"}
    )
    assert r.status_code == 204 and await meter.delta() == {"single": 10}  # create only
    r = await dv.req("PUT", f"leads({lead_id})/lastname", json={"value": "E"})
    assert r.status_code == 204 and await meter.delta() == {"single": 20}  # a write
    r = await dv.req("DELETE", f"leads({lead_id})")
    assert r.status_code == 204 and await meter.delta() == {"single": 40}
    # Refused, but attempted: Dataverse spent the time before answering.
    r = await dv.req("DELETE", f"leads({lead_id})")
    assert r.status_code == 404 and await meter.delta() == {"single": 40}


async def test_bulk_messages_are_charged_per_request_and_per_target(dv: Dv, meter: Meter) -> None:
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(4)}
    )
    assert r.status_code == 200 and await meter.delta() == {"CreateMultiple": 7 + 4 * 1}
    ids = r.json()["Ids"]
    update = [{"@odata.type": LEAD, "leadid": i, "firstname": "U"} for i in ids[:3]]
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": update}
    )
    assert r.status_code == 204 and await meter.delta() == {"UpdateMultiple": 7 + 3 * 2}
    upsert = [
        {"@odata.type": LEAD, "leadid": ids[0], "firstname": "V"},
        {"@odata.type": LEAD, "@odata.id": f"leads({uuid.uuid4()})", "lastname": "N"},
    ]
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": upsert}
    )
    assert r.status_code == 200 and await meter.delta() == {"UpsertMultiple": 7 + 2 * 3}
    # A standard table fails the whole request on one bad target; all 5 were worked on
    # (the bad one last).
    bad = [*targets(4), {"@odata.type": LEAD, "lastname": "x" * 51}]
    r = await dv.req("POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": bad})
    assert error(r)[:2] == (400, "0x80044331")
    assert await meter.delta() == {"CreateMultiple": 7 + 5 * 1}
    # It stops at the bad target: one refused first is charged as one target.
    bad = [{"@odata.type": LEAD, "lastname": "x" * 51}, *targets(4)]
    r = await dv.req("POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": bad})
    assert error(r)[:2] == (400, "0x80044331")
    assert await meter.delta() == {"CreateMultiple": 7 + 1 * 1}


async def test_reads_are_charged_per_page_and_per_row(dv: Dv, meter: Meter) -> None:
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(6)}
    )
    assert r.status_code == 200
    await meter.delta()
    r = await dv.get("leads?$select=lastname", Prefer="odata.maxpagesize=4")
    assert len(r.json()["value"]) == 4 and await meter.delta() == {"read": 11 + 4 * 0.5}
    r = await dv.get(r.json()["@odata.nextLink"], Prefer="odata.maxpagesize=4")
    assert len(r.json()["value"]) == 2 and await meter.delta() == {"read": 11 + 2 * 0.5}
    r = await dv.get(f"leads({r.json()['value'][0]['leadid']})")
    assert r.status_code == 200 and await meter.delta() == {"read": 11 + 0.5}
    r = await dv.get("leads?$filter=lastname eq 'nobody'")
    assert r.json()["value"] == [] and await meter.delta() == {"read": 11}


async def test_batch_is_charged_its_overhead_plus_each_part_that_ran(dv: Dv, meter: Meter) -> None:
    body = batch_body(
        "batch_1",
        [
            http_part("POST", "leads", '{"lastname":"one"}'),
            http_part("POST", "leads", '{"lastname":"two"}'),
            http_part("GET", "leads?$select=lastname"),
        ],
    )
    r = await send_batch(dv, body)
    assert r.status_code == 200
    assert await meter.delta() == {"$batch": 5 + 10 + 10 + (11 + 2 * 0.5)}
    # A changeset that fails on its second part: both ran (then rolled back); the
    # batch stops there, so the part after it never ran and is not charged.
    cs = changeset(
        "changeset_1",
        [
            http_part("POST", "leads", '{"lastname":"kept?"}'),
            http_part("POST", "leads", '{"lastname":"' + "x" * 51 + '"}'),
        ],
    )
    r = await send_batch(dv, batch_body("batch_1", [cs, http_part("DELETE", "leads(x)")]))
    assert r.status_code == 400
    assert await meter.delta() == {"$batch": 5 + 10 + 10}
    # The same records as a single CreateMultiple cost a fraction of it.
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(2)}
    )
    assert await meter.delta() == {"CreateMultiple": 7 + 2}


async def test_flat_model_is_unchanged_and_the_default(client: httpx.AsyncClient, dv: Dv) -> None:
    config = (await client.get("/_emulator/config")).json()
    assert config["cost_model"] == "flat" and config["costs"] == DEFAULT_COSTS
    assert config["max_execution_ms"] == 1_200_000 and config["window_s"] == 300
    await dv.create("leads", {"lastname": "free"})  # latency 0: nothing charged
    assert (await spent(client))["total"] == 0
    await configure(client, latency_ms=3, per_record_ms=2, costs=COSTS)
    meter = Meter(client)
    await meter.start()
    await dv.create("leads", {"lastname": "A"})
    assert await meter.delta() == {"single": 3 + 2}
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(10)}
    )
    assert r.status_code == 200 and await meter.delta() == {"CreateMultiple": 3 + 2 * 10}
    await dv.get("leads")
    assert await meter.delta() == {"read": 3 + 2 * 12}
    body = batch_body("batch_1", [http_part("POST", "leads", '{"lastname":"b"}')] * 2)
    assert (await send_batch(dv, body)).status_code == 200
    assert await meter.delta() == {"$batch": 3 + 2 * 2}


async def test_spent_budget_answers_429_with_code_message_and_retry_after(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    await configure(
        client,
        cost_model="dataverse",
        costs={"create": 400, "read_page": 100, "read_row": 0},
        max_execution_ms=1000,
        window_s=60,
    )
    for _ in range(2):
        await dv.create("leads", {"lastname": "x"})
    r = await dv.get("leads")
    assert r.status_code == 200 and r.headers[TIME] == "0.10"
    await dv.create("leads", {"lastname": "over"})  # admitted: 900 < 1000, then 1300
    r = await dv.get("leads")
    assert error(r) == (
        429,
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of 1,000  milliseconds "
        "over time window of 60 seconds. Decrease number of concurrent requests or reduce "
        "the duration of requests and try again later.",
    )
    # Under the budget again once the first charge (400 ms) slides out: 1300 - 400 < 1000.
    assert 59 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers[TIME] == "0.00"
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["requests"]["by_status"]["429"] == 1
    assert stats["execution_ms"]["total"] == 1300  # the refused request was not charged
    other = Dv(client, await token(client, "someone-else"))  # the budget is per user
    r = await other.get("leads")
    assert r.status_code == 200 and r.headers[TIME] == "0.90"


async def test_retry_after_waits_for_enough_of_the_window_to_pass(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    """Concurrent requests overshoot the budget; Retry-After covers the overshoot."""
    await configure(
        client,
        cost_model="dataverse",
        costs={"create": 500},
        max_execution_ms=1000,
        window_s=4,
        latency_ms=50,
    )
    first = await dv.create("leads", {"lastname": "early"})
    assert first
    await asyncio.sleep(2.1)
    # Three at once are all admitted (500 < 1000) and bring the total to 2000 ms.
    results = await asyncio.gather(
        *(dv.req("POST", "leads", json={"lastname": f"c{i}"}) for i in range(3))
    )
    assert [r.status_code for r in results] == [204, 204, 204]
    r = await dv.get("leads")
    assert r.status_code == 429
    # 1500 ms left after the early charge slides out (~1.9 s), still over: the wait is
    # until the concurrent ones slide out too (~4 s), not the ~2 s of the oldest.
    assert int(r.headers["Retry-After"]) in (3, 4)


async def test_the_window_slides(client: httpx.AsyncClient, dv: Dv) -> None:
    await configure(
        client, cost_model="dataverse", costs={"create": 600}, max_execution_ms=1000, window_s=2
    )
    await dv.create("leads", {"lastname": "a"})
    await dv.create("leads", {"lastname": "b"})
    r = await dv.req("POST", "leads", json={"lastname": "c"})
    assert error(r)[:2] == (429, "0x80072321") and r.headers["Retry-After"] in ("1", "2")
    await asyncio.sleep(2.05)
    r = await dv.req("POST", "leads", json={"lastname": "d"})
    assert r.status_code == 204 and r.headers[TIME] == "0.40"


async def test_headers_count_requests_and_execution_time_left(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    r = await dv.get("leads")
    # Defaults: no request limit (so no burst header), Dataverse's execution budget.
    assert BURST not in r.headers and r.headers[TIME] == "1,200.00"
    await configure(
        client,
        cost_model="dataverse",
        max_requests=6000,
        window_s=300,
        max_execution_ms=1_200_000,
    )
    r = await dv.get("leads")
    assert r.headers[BURST] == "5998"  # this request and the one before
    assert r.headers[TIME] == "1,199.90"  # one empty page: 100 ms
    r = await dv.req(
        "POST", "leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(1000)}
    )
    assert r.status_code == 200
    # 100 + 1000 x 10.9 ms: the 11.00 s Gaszewski measured for 1,000 records.
    assert r.headers[BURST] == "5997" and r.headers[TIME] == "1,188.90"
    stats = (await client.get("/_emulator/stats")).json()["execution_ms"]
    assert stats["by_message"]["CreateMultiple"] == pytest.approx(11_000)
    await configure(client, max_requests=4)  # three in the window so far
    r = await dv.get("leads?$top=1")
    assert r.status_code == 200 and r.headers[BURST] == "0"
    r = await dv.get("leads")
    assert error(r)[:2] == (429, "0x80072322") and r.headers[BURST] == "0"
    assert TIME in r.headers


async def test_stats_list_every_message_and_reset_clears_them(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    stats = (await client.get("/_emulator/stats")).json()["execution_ms"]
    assert stats == {
        "total": 0,
        "by_message": {
            "$batch": 0,
            "CreateMultiple": 0,
            "UpdateMultiple": 0,
            "UpsertMultiple": 0,
            "single": 0,
            "read": 0,
        },
    }
    await configure(client, cost_model="dataverse")
    await dv.create("leads", {"lastname": "A"})
    await dv.get("leads")
    stats = (await client.get("/_emulator/stats")).json()["execution_ms"]
    assert stats["by_message"]["single"] == DEFAULT_COSTS["create"]
    assert stats["by_message"]["read"] == DEFAULT_COSTS["read_page"] + DEFAULT_COSTS["read_row"]
    assert stats["total"] == stats["by_message"]["single"] + stats["by_message"]["read"]
    await client.post("/_emulator/reset")
    assert (await client.get("/_emulator/stats")).json()["execution_ms"]["total"] == 0
    assert (await client.get("/_emulator/config")).json()["cost_model"] == "flat"


async def test_costs_merge_and_bad_settings_are_refused(client: httpx.AsyncClient) -> None:
    config = await configure(client, costs={"create": 50})
    assert config["costs"] == {**DEFAULT_COSTS, "create": 50}
    config = await configure(client, costs={"read_row": 0.2})
    assert config["costs"]["create"] == 50 and config["costs"]["read_row"] == 0.2
    bad: list[dict[str, Any]] = [
        {"cost_model": "elastic"},
        {"cost_model": None},
        {"costs": {"creat": 10}},
        {"costs": {"create": -1}},
        {"costs": {"create": "10"}},
        {"costs": {"create": True}},
        {"costs": {"create": 600_001}},
        {"costs": [10]},
        {"max_execution_ms": 0},
    ]
    for body in bad:
        r = await client.put("/_emulator/config", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["code"] == "bad_config"
        assert next(iter(body)) in r.json()["error"]["message"]
    r = await client.put("/_emulator/config", json={"costs": {"creat": 10}})
    assert "create_multiple_record" in r.json()["error"]["message"]  # names the known keys
    config = (await client.get("/_emulator/config")).json()
    assert config["cost_model"] == "flat" and config["costs"]["create"] == 50


async def test_the_client_reads_what_is_left(client: httpx.AsyncClient, emulator: Emulator) -> None:
    await configure(
        client, cost_model="dataverse", costs={"create": 250}, max_requests=10, window_s=60
    )
    tokens = StaticTokenProvider(await token(client))
    transport = httpx.ASGITransport(app=emulator)
    client_ = DataverseClient("https://org.test", tokens, transport=transport, throttle_retries=0)
    async with client_ as dv:
        assert dv.ratelimit is None
        await dv.create("leads", {"lastname": "A"})
        assert dv.ratelimit == RateLimitRemaining(requests=9, execution_s=1199.75)
        await configure(client, max_execution_ms=250)
        with pytest.raises(Throttled):
            await dv.create("leads", {"lastname": "B"})
    # The 429 carries them too: nothing left of the budget, the request not counted.
    assert dv.ratelimit == RateLimitRemaining(requests=9, execution_s=0.0)
    # For operators on /metrics (web.metrics registers the same gauges).
    registry = CollectorRegistry()
    registry.register(observability.RATELIMIT_REQUESTS)
    registry.register(observability.RATELIMIT_EXECUTION)
    assert registry.get_sample_value("crmsync_dynamics_ratelimit_remaining_requests") == 9
    left = registry.get_sample_value("crmsync_dynamics_ratelimit_remaining_execution_seconds")
    assert left == 0.0


async def test_the_clients_estimate_of_reads_is_what_the_emulator_charged(
    client: httpx.AsyncClient, emulator: Emulator, dv: Dv
) -> None:
    """Reads are charged per row: the client's budget, estimated before each page and set
    to the rows it held after, equals the charge (it was 0.1 s a page of changes, which
    left up to 5,000 rows' worth out and let the pacing overshoot the budget)."""
    for i in range(250):
        await dv.create("leads", {"lastname": f"R{i}"})
    await configure(client, cost_model="dataverse", costs=COSTS)
    tokens = StaticTokenProvider(await token(client))
    transport = httpx.ASGITransport(app=emulator)
    async with DataverseClient("https://org.test", tokens, transport=transport) as crm:
        before = (await spent(client))["total"]
        pages = [p async for p in crm.changes("leads", select=["lastname"], page_size=100)]
        assert sum(len(p.rows) for p in pages) == 250 and len(pages) == 3
        rows = [
            r async for p in crm.query("leads", select=["lastname"], page_size=200) for r in p.rows
        ]
        assert len(rows) == 250
        charged = (await spent(client))["total"] - before
        assert charged == pytest.approx(5 * COSTS["read_page"] + 500 * COSTS["read_row"])
        estimated = crm.limiter.budget.spent(time.monotonic())
    # The client's figures are Dataverse's defaults (it cannot read the emulator's):
    # each page at its rows.
    assert estimated == pytest.approx(5 * estimate_ms("read", 0) + 500 * READ_ROW_MS)
