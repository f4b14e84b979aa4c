"""One process, several services: a failure stops the rest and surfaces; ports in use
are clear errors."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from crmsync.demo.services import Group, PortInUse, Task, bind, port_of


def looping(name: str, log: list[str]) -> Task:
    stop = asyncio.Event()

    async def run() -> None:
        await stop.wait()
        log.append(f"{name} stopped")

    return Task(name, run, stop.set)


async def test_a_failing_member_stops_the_others_and_its_error_surfaces() -> None:
    log: list[str] = []

    async def boom() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("worker failed")

    group = Group()
    group.add_task(looping("generator", log))
    group.add_task(Task("worker", boom, lambda: None))
    with pytest.raises(RuntimeError, match="worker failed"):
        await asyncio.wait_for(group.run(), timeout=5)
    assert log == ["generator stopped"]


async def test_sigint_stops_every_member_and_returns_normally() -> None:
    log: list[str] = []
    group = Group()
    group.add_task(looping("a", log))
    group.add_task(looping("b", log))

    async def interrupt() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    await asyncio.wait_for(group.run(after_start=interrupt), timeout=5)
    assert sorted(log) == ["a stopped", "b stopped"]
    assert group.interrupted == 1
    # The group's handler is gone: Python's default is back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bind_any_free_port_and_refuse_a_busy_one() -> None:
    first = bind("127.0.0.1", 0, "console")
    try:
        first.listen()
        assert port_of(first) > 0
        with pytest.raises(PortInUse, match=r"console: cannot listen on 127\.0\.0\.1:\d+"):
            bind("127.0.0.1", port_of(first), "console")
    finally:
        first.close()


def test_bind_refuses_an_address_that_is_not_ours() -> None:
    with pytest.raises(PortInUse, match="emulator"):
        bind("192.0.2.1", 0, "emulator")  # TEST-NET-1: never a local address
