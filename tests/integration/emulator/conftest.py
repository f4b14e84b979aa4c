"""Fixtures for the emulator's protocol tests: a fresh in-process emulator per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from dvclient import Dv, token

from crmsync.emulator import create_app
from crmsync.emulator.app import Emulator


@pytest.fixture
def emulator() -> Emulator:
    return create_app()


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator), base_url="https://org.test"
    ) as c:
        yield c


@pytest.fixture
async def dv(client: httpx.AsyncClient) -> Dv:
    return Dv(client, await token(client))
