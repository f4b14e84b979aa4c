"""The HTTP server of ``crmsync serve`` (and of ``run`` and ``demo``): uvicorn, guarded.

uvicorn (0.54) sets no deadline for a request's headers: a client sending one header
line a minute (slowloris) holds a connection and a file descriptor for ever, and enough
of them take the server down (``OSError: Too many open files``). ``GuardedH11Protocol``
adds, before any application code runs:

- ``header_timeout`` seconds from a request's first byte (or from connecting) to finish
  its headers; past it, a 408 and the connection closed;
- at most ``max_connections`` kept: over that, the one waiting longest for its headers
  is closed, one that sent part of them before one not read yet (a health check the
  busy server has not read must not go for a slowloris that came before it). While
  every other one is busy with a request, a new one may wait in a reserve (1% of the
  cap, at least 8), so a burst at the cap does not cut off the next health check.
Slow and large bodies are the ASGI middleware's (``web/limits.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from crmsync.config import Settings

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
    b"request headers took too long\r\n"
)
# uvicorn's own default for idle keep-alive connections, stated here as ours.
KEEP_ALIVE_SECONDS = 5


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on connections."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None  # waiting for headers since (loop time)
        self.partial = False  # part of the headers read, not the rest

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._awaiting_headers():
            self.partial = True
            self._await_headers()
        else:
            self._headers_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next request's first byte: uvicorn's keep-alive timeout rules.
        self._headers_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_headers(self) -> None:
        if self._header_timer is None:
            self.waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _headers_done(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = None
        self.waiting_since = None
        self.partial = False

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    @property
    def reserve(self) -> int:
        """New connections kept over the cap while every other one is busy."""
        return max(8, self.max_connections // 100)

    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c.waiting_since is not None and c is not self
        ]
        if not waiting and len(self.connections) <= self.max_connections + self.reserve:
            return  # every other one is busy with a request: this one waits in the reserve
        victim = min(waiting, key=eviction_order, default=self)
        victim._headers_done()
        victim.transport.close()


def eviction_order(c: GuardedH11Protocol) -> tuple[bool, float]:
    """Who is closed first to make room: a connection that sent part of its headers
    before one not read yet, and the longer waiting before the shorter."""
    return (not c.partial, c.waiting_since or 0.0)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class with these limits (uvicorn takes a class, not an instance)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config options that apply the settings' limits."""
    return {
        "http": guarded_protocol(settings.header_timeout_seconds, settings.max_connections),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # X-Forwarded-* are believed only from CRMSYNC_TRUSTED_PROXIES (none by default).
        "proxy_headers": bool(settings.proxy_networks),
        # Normalised ("10.1.2.3/8" is 10.0.0.0/8): uvicorn would refuse host bits.
        "forwarded_allow_ips": ",".join(str(n) for n in settings.proxy_networks) or None,
    }
