"""Request bodies: how large, and how slow, before anything else looks at them.

``BodyLimit`` is ASGI middleware around the whole application, so it runs before
routing, authentication and the body parsing FastAPI does ahead of a route's
dependencies: a ``Content-Length`` above ``max_bytes`` is answered 413 at once, the body
unread; a body without one (chunked) is counted as it streams and refused with 413 the
moment it passes ``max_bytes`` (at most that much is ever held); a body whose next part
does not arrive within ``body_timeout`` seconds gets 408; a malformed ``Content-Length``
is a 400. Either way the application is told the client went away (``http.disconnect``)
and whatever it still sends is dropped: the refusal is the one response.

``Admission`` lets at most ``ADMITTED`` requests into the application at once; the
others wait their turn, and ``/healthz`` never waits: under a burst the health check
still answers at once (a load balancer that saw it time out would take a busy but
healthy server out of service).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DISCONNECT: Message = {"type": "http.disconnect"}
# Below the 40 worker threads of anyio's default limiter, which runs the store queries of
# sync routes and of /healthz: a burst cannot take every thread.
ADMITTED = 32
EXEMPT = frozenset({"/healthz"})


class Admission:
    def __init__(self, app: ASGIApp, *, limit: int = ADMITTED) -> None:
        self.app = app
        self.limit = limit
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:  # one per event loop (tests run apps on several)
            self._gates = {loop: (gate := asyncio.Semaphore(self.limit))}
        async with gate:
            await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(send, 400, "bad_request", "Content-Length is not a number of bytes")
            return
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, send)
            return
        await _Exchange(self, scope, receive, send).run()

    async def _too_large(self, scope: Scope, send: Send) -> None:
        log.warning(
            "request body too large",
            extra={
                "event": "http.body_too_large",
                "path": scope.get("path", ""),
                "limit": self.max_bytes,
            },
        )
        await _refuse(
            send,
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_bytes} bytes (CRMSYNC_MAX_REQUEST_BYTES)",
        )


class _Exchange:
    """One request: its body counted and timed, and at most one response sent."""

    def __init__(self, limit: BodyLimit, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit, self.scope, self._receive, self._send = limit, scope, receive, send
        self.received = 0
        self.body_done = False
        self.started = False  # a response has begun (the app's or ours)
        self.refused = False

    async def run(self) -> None:
        try:
            await self.limit.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.refused:
                raise
            # The app failed on the disconnect it was given: the client has its answer.

    async def receive(self) -> Message:
        if self.refused:
            return DISCONNECT
        if self.body_done:
            return await self._receive()  # waiting for a disconnect: no deadline
        try:
            message = await asyncio.wait_for(self._receive(), self.limit.body_timeout)
        except TimeoutError:
            await self._refuse_once(408, "request_timeout", "the request body arrived too slowly")
            return DISCONNECT
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes:
                if not self.started:
                    self.refused = True
                    self.started = True
                    await self.limit._too_large(self.scope, self._send)
                return DISCONNECT
            self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _refuse_once(self, status: int, code: str, text: str) -> None:
        if self.started:
            self.refused = True
            return
        self.refused = self.started = True
        log.warning(
            "request body timed out",
            extra={"event": "http.body_timeout", "path": self.scope.get("path", "")},
        )
        await _refuse(self._send, status, code, text)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when not declared, -1 when not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdecimal() and len(text) <= 18 else -1
    return None


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
