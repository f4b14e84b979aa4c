"""``web/limits.py``'s Admission over an in-process ASGI app: a burst waits its turn,
``/healthz`` never waits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx

from crmsync.web.limits import Admission
from crmsync.web.server import eviction_order


async def test_a_burst_is_admitted_a_few_at_a_time_and_healthz_goes_first() -> None:
    inside, most = 0, 0
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        if scope["path"] != "/healthz":
            await release.wait()
        inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=Admission(app, limit=3))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        burst = [asyncio.create_task(http.get("/api/v1/sync/status")) for _ in range(10)]
        while inside < 3:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert inside == 3  # the other seven wait at the gate
        health = await asyncio.wait_for(http.get("/healthz"), timeout=1)
        assert health.status_code == 200
        release.set()
        assert [r.status_code for r in await asyncio.gather(*burst)] == [200] * 10
    assert most == 4  # three admitted, plus /healthz beside them


def test_server_options_trust_no_proxy_by_default_and_normalise_networks() -> None:
    from crmsync.config import load_settings
    from crmsync.web.server import GuardedH11Protocol, server_options

    default = server_options(load_settings(database_url="sqlite:///x.db"))
    assert default["proxy_headers"] is False  # uvicorn's own default trusts 127.0.0.1
    assert issubclass(default["http"], GuardedH11Protocol)
    proxied = server_options(
        load_settings(database_url="sqlite:///x.db", trusted_proxies="10.1.2.3/8, 192.0.2.7")
    )
    assert proxied["proxy_headers"] is True
    # uvicorn takes "10.1.2.3/8" (host bits set) for a hostname, silently: never given it.
    assert proxied["forwarded_allow_ips"] == "10.0.0.0/8,192.0.2.7/32"
    limits = server_options(
        load_settings(database_url="sqlite:///x.db", header_timeout_seconds=3, max_connections=7)
    )["http"]
    assert (limits.header_timeout, limits.max_connections) == (3, 7)


def test_room_is_made_first_from_connections_that_sent_part_of_their_headers() -> None:
    """A connection not read yet (a probe's request still in the kernel's buffer while
    the server accepts a flood) goes after every one that sent part of its headers,
    however much older they are; among each kind the longest waiting goes first."""
    fresh_old = SimpleNamespace(partial=False, waiting_since=1.0)
    slow_new = SimpleNamespace(partial=True, waiting_since=9.0)
    slow_old = SimpleNamespace(partial=True, waiting_since=5.0)
    fresh_new = SimpleNamespace(partial=False, waiting_since=8.0)
    conns = [fresh_old, slow_new, slow_old, fresh_new]
    ordered = sorted(conns, key=eviction_order)  # type: ignore[arg-type]
    assert ordered == [slow_old, slow_new, fresh_old, fresh_new]
