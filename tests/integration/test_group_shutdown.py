"""Stopping a group of services (``crmsync demo``, ``crmsync run``) over real sockets:
the clients finish their requests before the servers go, so nothing is cancelled."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from crmsync.demo.services import Group, Task, bind, port_of, server_config

SLOW = 0.5


async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})  # lifespan.startup/shutdown.complete
            if kind == "lifespan.shutdown":
                return
    await asyncio.sleep(SLOW)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


async def test_a_request_in_flight_at_stop_completes_and_nothing_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = bind("127.0.0.1", 0, "emulator")
    group = Group()
    # A graceful shutdown shorter than the request: stopping the server first cancels it.
    group.add_server(server_config(slow_app, timeout_graceful_shutdown=0.1), sock)
    answers: list[str] = []
    in_flight = asyncio.Event()
    stop = asyncio.Event()

    async def client() -> None:
        await group.started()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_of(sock)}") as http:
            request = asyncio.create_task(http.get("/"))
            in_flight.set()
            await stop.wait()
            answers.append((await request).text)  # a worker finishes its batch

    group.add_task(Task("worker", client, stop.set))

    async def stop_soon() -> None:
        await in_flight.wait()
        await asyncio.sleep(0.1)
        group.stop()

    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(group.run(after_start=stop_soon), timeout=10)
    assert answers == ["done"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
