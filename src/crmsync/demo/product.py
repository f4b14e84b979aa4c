"""``crmsync run``: the console/API and the sync workers in one process.

The demo builds on the same pieces (``add_console``, ``add_worker``), so what a
newcomer sees in the demo is the product as ``crmsync run`` would run it.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from contextlib import AsyncExitStack
from typing import TextIO

from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.demo.services import Group, Task, bind, port_of, server_config
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker


def add_console(group: Group, settings: Settings, engine: Engine, sock: socket.socket) -> str:
    """Serve the console and API on the bound ``sock``; returns its base URL."""
    from crmsync.web.app import create_app
    from crmsync.web.server import server_options

    app = create_app(settings, engine=engine)
    group.add_server(server_config(app, **server_options(settings)), sock)
    host = sock.getsockname()[0]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port_of(sock)}"


def add_worker(group: Group, worker: Worker) -> None:
    group.add_task(Task("worker", worker.run, worker.stop))


async def _run(settings: Settings, host: str, port: int, concurrency: int, out: TextIO) -> None:
    from crmsync.store.db import create_store_engine

    engine = create_store_engine(settings.database_url)
    try:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(DataverseClient.from_settings(settings))
            group = Group()
            url = add_console(group, settings, engine, bind(host, port, "console"))
            add_worker(group, Worker(engine, client, settings, concurrency=concurrency))

            async def announce() -> None:
                print(f"crmsync: console and API on {url}, workers running", file=out, flush=True)

            await group.run(after_start=announce)
    finally:
        engine.dispose()


def run_product(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    concurrency: int = 4,
    out: TextIO = sys.stderr,
) -> None:
    """Run until SIGINT/SIGTERM; in-flight batches finish and claims are released."""
    asyncio.run(_run(settings, host, port, concurrency, out))
