"""Several services on one event loop, started together and stopped together.

``crmsync run`` (console + workers) and ``crmsync demo`` (emulator + console + workers +
generator) are the same shape: uvicorn servers plus long-running coroutines. uvicorn's
own signal capture is for a process that runs one server; here SIGINT/SIGTERM are the
group's, and every member is asked to stop. A second Ctrl-C stops without waiting.

Clients stop before servers: the tasks (the worker finishing its in-flight batches
against the emulator, the generator calling the console) are stopped and awaited
first, and only then are the servers asked to exit, so that no request of our own is
still running when a server's graceful shutdown runs out and cancels it (which uvicorn
reports as an ERROR with a CancelledError traceback).

Sockets are bound before anything starts, so a port already in use is a clear error
(``PortInUse``) rather than uvicorn's ``sys.exit`` from inside a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from crmsync.errors import ConfigError

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15.0


class PortInUse(ConfigError):
    """The address asked for cannot be listened on."""


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the group it belongs to."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int, what: str) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"{what}: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@dataclass
class Task:
    """A long-running coroutine and how to ask it to stop."""

    name: str
    start: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], None]


@dataclass
class Group:
    """Servers (each on its own bound socket) and tasks, run until a signal or a failure."""

    servers: list[tuple[EmbeddedServer, socket.socket]] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: int = 0

    def add_server(self, config: uvicorn.Config, sock: socket.socket) -> EmbeddedServer:
        server = EmbeddedServer(config)
        self.servers.append((server, sock))
        return server

    def add_task(self, task: Task) -> None:
        self.tasks.append(task)

    def stop(self) -> None:
        """Ask the tasks to stop (the servers follow once they have: see ``run``)."""
        self.stopping.set()
        for task in self.tasks:
            task.stop()

    def stop_servers(self) -> None:
        for server, _ in self.servers:
            server.should_exit = True

    def _on_signal(self) -> None:
        self.interrupted += 1
        if self.interrupted > 1:
            # A second Ctrl-C: do not wait for in-flight work.
            self.stop_servers()
            for server, _ in self.servers:
                server.force_exit = True
        self.stop()

    async def started(self, timeout: float = 30.0) -> None:
        """Wait until every server accepts connections."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(server.started for server, _ in self.servers):
            if self.stopping.is_set():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the servers did not start")
            await asyncio.sleep(0.02)

    async def run(self, after_start: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run everything until stopped; the first failure stops the rest, then re-raises."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        servers: list[asyncio.Task[None]] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for server, sock in self.servers:
                servers.append(asyncio.create_task(server.serve(sockets=[sock])))
            for task in self.tasks:
                tasks.append(asyncio.create_task(task.start(), name=task.name))
            if after_start is not None:
                await self.started()
                if not self.stopping.is_set():
                    await after_start()
            await _until_first_done([*servers, *tasks], self.stopping)
            self.stop()
            done = await _finish(tasks, STOP_GRACE_SECONDS)
            self.stop_servers()
            done |= await _finish(servers, STOP_GRACE_SECONDS)
            _raise_first(done)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for _, sock in self.servers:
                sock.close()


async def _until_first_done(running: Sequence[asyncio.Task[None]], stopping: asyncio.Event) -> None:
    waiter = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait([*running, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


async def _finish(running: Sequence[asyncio.Task[None]], grace: float) -> set[asyncio.Task[None]]:
    """Wait up to ``grace`` seconds for ``running`` to end, then cancel what has not."""
    if not running:
        return set()
    done, pending = await asyncio.wait(running, timeout=grace)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return done


def _raise_first(done: set[asyncio.Task[None]]) -> None:
    for t in done:
        if t.cancelled():
            continue
        exc = t.exception()
        if exc is not None and not isinstance(exc, SystemExit | KeyboardInterrupt):
            raise exc


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn settings for a server in a group: quiet, no lifespan surprises, and its
    logs through the process's logging (``logs.configure``), not uvicorn's own format."""
    options.setdefault("log_config", None)
    options.setdefault("log_level", "warning")
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "on")
    options.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, **options)
