"""DataverseClient against httpx.MockTransport fakes: headers, auth, throttling, paging,
change tracking, single writes, $batch and bulk messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from crmsync.config import Settings
from crmsync.dynamics import batch as wire
from crmsync.dynamics.auth import CachingTokenProvider, StaticTokenProvider
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.faults import DeltaTokenExpired, PreconditionFailed, Throttled, TokenRejected
from crmsync.dynamics.limiter import AdaptiveLimit, Limiter
from crmsync.dynamics.writes import Write
from crmsync.errors import Fatal, RecordRejected, Retriable

ORG = "https://org.crm.dynamics.com"
API = ORG + "/api/data/v9.2/"
GUID1 = "00000000-0000-0000-0000-000000000001"
GUID2 = "00000000-0000-0000-0000-000000000002"
GUID3 = "00000000-0000-0000-0000-000000000003"

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, **kwargs: Any) -> DataverseClient:
    tokens = kwargs.pop("tokens", StaticTokenProvider("tok"))
    return DataverseClient(ORG, tokens, transport=httpx.MockTransport(handler), **kwargs)


def err(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


async def test_odata_headers_and_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"leadid": GUID1, "@odata.etag": 'W/"1"'})
        return httpx.Response(204, headers={"OData-EntityId": f"{API}leads({GUID2})"})

    async with client_for(handler) as dv:
        assert await dv.get("leads", GUID1, select=["lastname", "firstname"]) == {
            "leadid": GUID1,
            "@odata.etag": 'W/"1"',
        }
        result = await dv.create("leads", {"lastname": "X"})
    get, post = seen
    assert str(get.url) == f"{API}leads({GUID1})?$select=lastname,firstname"
    for r in (get, post):
        assert r.headers["Accept"] == "application/json"
        assert r.headers["OData-MaxVersion"] == "4.0"
        assert r.headers["OData-Version"] == "4.0"
        assert r.headers["Authorization"] == "Bearer tok"
    assert "Content-Type" not in get.headers
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.content) == {"lastname": "X"}
    assert "MSCRM.SuppressDuplicateDetection" not in post.headers
    assert result.ok and result.crm_id == GUID2 and result.created


async def test_get_missing_record_is_none() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return err(404, "0x80040217", f"lead With Id = {GUID1} Does Not Exist")

    async with client_for(handler) as dv:
        assert await dv.get("leads", GUID1) is None


async def test_upsert_headers_and_result() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"leadid": GUID1}, headers={"ETag": 'W/"42"'})

    async with client_for(handler) as dv:
        res = await dv.upsert(
            "leads",
            GUID1,
            {"lastname": "Y"},
            if_none_match="*",
            detect_duplicates=True,
            return_representation=True,
        )
    req = seen[0]
    assert req.method == "PATCH" and req.url.path.endswith(f"/leads({GUID1})")
    assert req.headers["If-None-Match"] == "*"
    assert req.headers["MSCRM.SuppressDuplicateDetection"] == "false"
    assert req.headers["Prefer"] == "return=representation"
    assert (res.crm_id, res.etag, res.created) == (GUID1, 'W/"42"', True)


async def test_update_is_if_match_star_and_delete() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with client_for(handler) as dv:
        await dv.update("leads", GUID1, {"lastname": "Z"})
        await dv.delete("leads", GUID1, if_match='W/"7"')
    assert seen[0].method == "PATCH" and seen[0].headers["If-Match"] == "*"
    assert seen[1].method == "DELETE" and seen[1].headers["If-Match"] == 'W/"7"'
    assert "Content-Type" not in seen[1].headers


async def test_record_errors_raise_their_family() -> None:
    responses = iter(
        [
            err(412, "", "The version of the existing record doesn't match the RowVersion"),
            err(500, "0x80040333", "A record was not created or updated because a duplicate"),
            err(503, "", "Service Unavailable"),
        ]
    )

    async with client_for(lambda r: next(responses)) as dv:
        with pytest.raises(PreconditionFailed):
            await dv.update("leads", GUID1, {"a": 1}, if_match='W/"1"')
        with pytest.raises(RecordRejected) as info:
            await dv.upsert("leads", GUID1, {"a": 1}, detect_duplicates=True)
        assert info.value.code == "0x80040333"
        with pytest.raises(Retriable):
            await dv.upsert("leads", GUID1, {"a": 1})


async def test_cut_connection_is_retriable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    async with client_for(handler) as dv:
        with pytest.raises(Retriable):
            await dv.upsert("leads", GUID1, {"a": 1})
    assert dv.limiter.in_flight == 0


class Source:
    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self) -> tuple[str, float]:
        self.calls += 1
        return f"tok-{self.calls}", 3600.0


async def test_401_refreshes_once_then_succeeds() -> None:
    source = Source()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer tok-1":
            return err(401, "", "ExpiredAuthTicket")
        return httpx.Response(200, json={"value": []})

    async with client_for(handler, tokens=CachingTokenProvider(source)) as dv:
        pages = [p async for p in dv.query("leads")]
    assert pages[0].rows == [] and source.calls == 2


async def test_401_after_refresh_is_fatal() -> None:
    source = Source()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return err(401, "", "")

    async with client_for(handler, tokens=CachingTokenProvider(source)) as dv:
        with pytest.raises(TokenRejected) as info:
            await dv.get("leads", GUID1)
    assert isinstance(info.value, Fatal)
    assert calls == 2 and source.calls == 2


async def test_concurrent_401s_share_one_refresh() -> None:
    source = Source()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.005)
        if request.headers["Authorization"] == "Bearer tok-1":
            return err(401, "", "")
        return httpx.Response(200, json={"leadid": GUID1})

    async with client_for(handler, tokens=CachingTokenProvider(source)) as dv:
        results = await asyncio.gather(*(dv.get("leads", GUID1) for _ in range(20)))
    assert all(r == {"leadid": GUID1} for r in results)
    assert source.calls == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_retry_after_gates_every_request() -> None:
    clock = FakeClock()
    sent: list[tuple[str, float]] = []
    throttled_once = False

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal throttled_once
        sent.append((request.url.path, clock.now))
        if not throttled_once:
            throttled_once = True
            return err(429, "0x80072322", "Number of requests exceeded", **{"Retry-After": "10"})
        return httpx.Response(200, json={"ok": 1})

    limiter = Limiter(AdaptiveLimit(current=40), clock=clock, sleep=clock.sleep)
    async with client_for(handler, limiter=limiter) as dv:
        first = asyncio.create_task(dv.get("leads", GUID1))
        while not throttled_once:
            await asyncio.sleep(0)
        others = [dv.get("leads", g) for g in (GUID2, GUID3)]
        assert all(r is not None for r in await asyncio.gather(first, *others))
    assert sent[0][1] == 0.0
    assert all(t >= 10.0 for _, t in sent[1:])  # nobody went before Retry-After ran out
    assert len(sent) == 4  # the throttled request was resent once
    assert limiter.limit.slots == 20  # halved


async def test_throttle_beyond_retries_raises_with_retry_after() -> None:
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        return err(
            429,
            "0x80072326",
            "Number of concurrent requests exceeded the limit of 52.",
            **{"Retry-After": "3"},
        )

    limiter = Limiter(clock=clock, sleep=clock.sleep)
    async with client_for(handler, limiter=limiter, throttle_retries=2) as dv:
        with pytest.raises(Throttled) as info:
            await dv.get("leads", GUID1)
    assert info.value.retry_after == 3 and info.value.status == 429
    assert clock.now == 6.0


async def test_dop_hint_caps_concurrency() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={}, headers={"x-ms-dop-hint": "4"})

    async with client_for(handler) as dv:
        await dv.get("leads", GUID1)
    assert dv.limiter.limit.slots == 4


async def test_paging_follows_next_link_until_none() -> None:
    seen: list[httpx.Request] = []
    link2 = f"{API}leads?$select=lastname&$skiptoken=%3Ccookie%20pagenumber=%222%22%20/%3E"
    link3 = f"{API}leads?$select=lastname&$skiptoken=%3Ccookie%20pagenumber=%223%22%20/%3E"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(seen)
        body: dict[str, Any] = {"value": [{"leadid": str(n)}]}
        if n == 1:
            body["@odata.nextLink"] = link2
        elif n == 2:
            body["@odata.nextLink"] = link3
        return httpx.Response(200, json=body)

    async with client_for(handler) as dv:
        pages = [p async for p in dv.query("leads", select=["lastname"], page_size=2)]
    assert [p.rows[0]["leadid"] for p in pages] == ["1", "2", "3"]
    assert str(seen[0].url) == f"{API}leads?$select=lastname"
    assert str(seen[1].url) == link2 and str(seen[2].url) == link3
    assert all(r.headers["Prefer"] == "odata.maxpagesize=2" for r in seen)


async def test_change_tracking_initial_then_delta_with_deletes() -> None:
    delta1 = f"{API}leads?$select=lastname&$deltatoken=919042%2108%2f22%2f2017%2008%3a10%3a44"
    delta2 = f"{API}leads?$select=lastname&$deltatoken=919050%2108%2f22%2f2017%2008%3a11%3a00"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "$deltatoken" not in str(request.url):
            return httpx.Response(
                200,
                json={"value": [{"leadid": GUID1, "lastname": "A"}], "@odata.deltaLink": delta1},
                headers={"Preference-Applied": "odata.track-changes"},
            )
        return httpx.Response(
            200,
            json={
                "@odata.context": f"{API}$metadata#leads(lastname)/$delta",
                "value": [
                    {"leadid": GUID2, "lastname": "B"},
                    {
                        "@odata.context": f"{API}$metadata#leads/$deletedEntity",
                        "id": GUID1.upper(),
                        "reason": "deleted",
                    },
                ],
                "@odata.deltaLink": delta2,
            },
        )

    async with client_for(handler) as dv:
        first = [p async for p in dv.changes("leads", select=["lastname"])]
        second = [p async for p in dv.changes("leads", delta_link=first[-1].delta_link)]
    assert first[-1].rows == [{"leadid": GUID1, "lastname": "A"}]
    assert first[-1].delta_link == delta1
    assert "odata.track-changes" in seen[0].headers["Prefer"]
    assert str(seen[1].url) == delta1
    assert second[-1].rows == [{"leadid": GUID2, "lastname": "B"}]
    assert second[-1].deleted_ids == [GUID1]
    assert second[-1].delta_link == delta2


async def test_expired_delta_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return err(
            400,
            "0x80044352",
            "Version stamp associated with the client has expired. Please perform a full sync.",
        )

    async with client_for(handler) as dv:
        with pytest.raises(DeltaTokenExpired):
            async for _ in dv.changes("leads", delta_link=f"{API}leads?$deltatoken=1%2101"):
                pass


def batch_server(outcomes: dict[str, httpx.Response], seen: list[httpx.Request]) -> Handler:
    """A $batch fake: answers each inner request by the record id in its URL or body."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path.endswith("/$batch")
        parts = wire.decode_requests(request.headers["Content-Type"], request.content)
        answers = []
        for req, _ in parts:
            key = next((k for k in outcomes if k in req.url or k in json.dumps(req.body)), None)
            r = outcomes.get(key or "", httpx.Response(204))
            answers.append(wire.BatchResponse(r.status_code, dict(r.headers), r.content))
        ctype, body = wire.encode_responses(answers)
        return httpx.Response(200, content=body, headers={"Content-Type": ctype})

    return handler


async def test_batch_continue_on_error_maps_per_item_in_order() -> None:
    seen: list[httpx.Request] = []
    outcomes = {
        GUID2: err(400, "0x80044331", "A validation error occurred.  The length ..."),
        "newlead": httpx.Response(204, headers={"OData-EntityId": f"{API}leads({GUID3})"}),
    }
    writes = [
        Write("upsert", "leads", GUID1, {"lastname": "ok"}, detect_duplicates=True),
        Write("upsert", "leads", GUID2, {"lastname": "x" * 300}),
        Write("create", "leads", body={"lastname": "newlead"}),
        Write("delete", "leads", GUID1),
    ]
    async with client_for(batch_server(outcomes, seen)) as dv:
        results = await dv.write_batch(writes)
    assert seen[0].headers["Prefer"] == "odata.continue-on-error"
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].crm_id == GUID1
    bad = results[1].error
    assert isinstance(bad, RecordRejected) and bad.code == "0x80044331"
    assert results[2].crm_id == GUID3
    sent = wire.decode_requests(seen[0].headers["Content-Type"], seen[0].content)
    assert sent[0][0].headers["mscrm.suppressduplicatedetection"] == "false"


async def test_batch_whole_failure_lands_on_every_item() -> None:
    async with client_for(lambda r: err(503, "", "unavailable")) as dv:
        results = await dv.write_batch([Write("upsert", "leads", g, {}) for g in (GUID1, GUID2)])
    assert all(isinstance(r.error, Retriable) for r in results)


async def test_batch_short_response_marks_rest_not_executed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ctype, body = wire.encode_responses([wire.BatchResponse(204)])
        return httpx.Response(200, content=body, headers={"Content-Type": ctype})

    async with client_for(handler) as dv:
        results = await dv.write_batch([Write("upsert", "leads", g, {}) for g in (GUID1, GUID2)])
    assert results[0].ok and isinstance(results[1].error, Retriable)


async def test_bulk_message_success() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    writes = [Write("upsert", "leads", g, {"lastname": g[-1]}) for g in (GUID1, GUID2)]
    async with client_for(handler) as dv:
        results = await dv.write_multiple("UpsertMultiple", "leads", "lead", "leadid", writes)
    assert seen[0].url.path.endswith("/leads/Microsoft.Dynamics.CRM.UpsertMultiple")
    targets = json.loads(seen[0].content)["Targets"]
    assert targets[0]["@odata.type"] == "Microsoft.Dynamics.CRM.lead"
    assert targets[1]["@odata.id"] == f"leads({GUID2})"
    assert "leadid" not in targets[1]
    assert [r.crm_id for r in results] == [GUID1, GUID2]


async def test_create_multiple_takes_ids_from_response() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"Ids": [GUID1.upper(), GUID2]})

    writes = [Write("create", "leads", body={"lastname": "a"}, detect_duplicates=True)] * 2
    async with client_for(handler) as dv:
        results = await dv.write_multiple("CreateMultiple", "leads", "lead", "leadid", writes)
    assert seen[0].headers["MSCRM.SuppressDuplicateDetection"] == "false"
    assert [r.crm_id for r in results] == [GUID1, GUID2]
    assert all(r.created for r in results)


async def test_throttled_part_in_batch_closes_the_gate() -> None:
    clock = FakeClock()
    seen: list[httpx.Request] = []
    throttle = err(429, "0x80072322", "Number of requests exceeded", **{"Retry-After": "4"})
    limiter = Limiter(clock=clock, sleep=clock.sleep)
    async with client_for(batch_server({GUID2: throttle}, seen), limiter=limiter) as dv:
        results = await dv.write_batch([Write("upsert", "leads", g, {}) for g in (GUID1, GUID2)])
    assert results[0].ok and isinstance(results[1].error, Throttled)
    assert limiter.gate.wait(clock.now) == 4.0


async def test_bulk_rollback_falls_back_to_batch_per_item() -> None:
    seen: list[httpx.Request] = []
    batch = batch_server({GUID2: err(400, "0x80044331", "too long")}, seen)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("UpsertMultiple"):
            return err(400, "0x80044331", "too long")
        return batch(request)

    writes = [Write("upsert", "leads", g, {}) for g in (GUID1, GUID2, GUID3)]
    async with client_for(handler) as dv:
        results = await dv.write_multiple("UpsertMultiple", "leads", "lead", "leadid", writes)
    assert [r.ok for r in results] == [True, False, True]
    assert len(seen) == 1


async def test_from_settings_uses_direct_oauth_for_http_authority() -> None:
    settings = Settings(
        dynamics_url="http://127.0.0.1:8001",
        authority_url="http://127.0.0.1:8001",
        tenant_id="t",
        client_id="c",
        client_secret="hush-CANARY",
        max_concurrency=10,
    )
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/t/oauth2/v2.0/token":
            return httpx.Response(200, json={"access_token": "a", "expires_in": 3600})
        return httpx.Response(200, json={"leadid": GUID1})

    async with DataverseClient.from_settings(settings, httpx.MockTransport(handler)) as dv:
        assert dv.limiter.limit.slots == 10
        assert await dv.get("leads", GUID1) == {"leadid": GUID1}
        assert "CANARY" not in repr(dv)
    assert seen == ["/t/oauth2/v2.0/token", f"/api/data/v9.2/leads({GUID1})"]
