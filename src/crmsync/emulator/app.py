"""The emulator's ASGI application: routing, bearer tokens, limits, faults, control API.

A plain ASGI callable rather than a framework: it keeps per-request overhead low under
benchmark load, and it holds uvicorn's ``send`` so that ``cut_rate`` can close the
socket after a write is applied, before any response byte is sent. An httpx client then
sees ``httpx.RemoteProtocolError("Server disconnected without sending a response.")``;
in-process (``httpx.ASGITransport``) the app raises ``ConnectionCut`` instead.

Control API (not part of Dataverse): ``POST /_emulator/reset`` (all records and
counters; settings back to defaults; issued tokens stay valid), ``GET /_emulator/stats``,
``GET``/``PUT /_emulator/config`` (see ``settings.CHECKS``), and ``GET /_emulator/requests``:
the last ``REQUEST_LOG_SIZE`` requests (Web API and token endpoint) with when each
arrived, so a test can tell when the emulator heard nothing (a shared 429 wait).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from crmsync.domain import ObjectSpec
from crmsync.emulator import costs, faults
from crmsync.emulator.api import Api
from crmsync.emulator.auth import (
    AuthError,
    TokenIssuer,
    basic_credentials,
    openid_configuration,
)
from crmsync.emulator.batch import BatchRunner
from crmsync.emulator.http import API_PREFIX, Call, Reply, dumps, split_api_path
from crmsync.emulator.limits import Limiter
from crmsync.emulator.mapped import serve_mapping
from crmsync.emulator.settings import Settings, SettingsError, validate
from crmsync.emulator.store import Store

Scope = dict[str, Any]
Message = dict[str, Any]

REQUEST_LOG_SIZE = 10_000


class ConnectionCut(Exception):
    """Raised in-process where no socket can be closed: the response was dropped."""


class Emulator:
    def __init__(self, db: Path | None = None, specs: Iterable[ObjectSpec] = ()) -> None:
        # Before the store: it keeps one table per emulated entity set.
        self.mapped = serve_mapping(specs)
        self.settings = Settings()
        self.store = Store(db)
        self.api = Api(self.store, self.settings)
        self.batch = BatchRunner(self.api)
        self.limiter = Limiter(self.settings)
        self.tokens = TokenIssuer(self.store, self.settings)
        self.by_status: Counter[str] = Counter()
        self.total = 0
        self.cuts = 0
        self.execution_ms: dict[str, float] = dict.fromkeys(costs.MESSAGES, 0.0)
        # (arrived at, wall clock seconds; method; path; status)
        self.log: deque[tuple[float, str, str, int]] = deque(maxlen=REQUEST_LOG_SIZE)

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if path.startswith("/_emulator/"):
            await _respond(send, self._control(scope["method"], path, body))
            return
        arrived = time.time()
        if split_api_path(path) is not None:
            reply, cut = await self._api(scope, headers, body)
        else:
            reply, cut = self._identity(scope, headers, body), False
        self.total += 1
        self.by_status[str(reply.status)] += 1
        self.log.append((arrived, scope["method"], path, reply.status))
        if cut:
            self.cuts += 1
            await _cut(send)
            return
        await _respond(send, reply)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the Web API -----------------------------------------------------------------

    async def _api(self, scope: Scope, headers: dict[str, str], body: bytes) -> tuple[Reply, bool]:
        grant = self.tokens.check(headers.get("authorization"))
        if grant is None:
            # Dataverse answers a missing, unknown or expired token with an empty 401
            # and a Bearer challenge naming the authority (authenticate-oauth.md).
            authority = f"{_origin(scope, headers)}/common/oauth2/authorize"
            challenge = f'Bearer authorization_uri={authority}, error="invalid_token"'
            return Reply(401, {"WWW-Authenticate": challenge}, b""), False
        user = grant.user_id
        try:
            self.limiter.admit(user)
        except faults.DataverseFault as fault:
            return self._remaining(Reply.fault(fault), user), False
        charged = 0.0
        try:
            injected = self.limiter.injected()
            if injected is not None:
                reply, cut = Reply.fault(injected), False  # never ran: nothing charged
            else:
                call = _call(scope, headers, body, user)
                reply = self._run(call)
                delay = self.limiter.delay_s(reply.records)
                if delay > 0:
                    await asyncio.sleep(delay)
                where, charged = costs.charge(call, reply, self.settings)
                self.execution_ms[where] += charged
                cut = self.limiter.cut()
        finally:
            self.limiter.release(user, charged)
        # After the charge, so that the headers count this request too.
        return self._remaining(reply, user), cut

    def _run(self, call: Call) -> Reply:
        if call.path == "$batch" and call.method == "POST":
            try:
                return self.batch.run(call)
            except faults.DataverseFault as fault:
                return Reply.fault(fault)
        return self.api.handle(call)

    def _remaining(self, reply: Reply, user: str) -> Reply:
        reply.headers.update(self.limiter.remaining_headers(user))
        return reply

    # -- identity provider -----------------------------------------------------------

    def _identity(self, scope: Scope, headers: dict[str, str], body: bytes) -> Reply:
        parts = scope["path"].strip("/").split("/")
        method = scope["method"]
        origin = _origin(scope, headers)
        v2 = len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]
        v1 = len(parts) == 3 and parts[1:] == ["oauth2", "token"]
        if method == "POST" and (v1 or v2):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            try:
                form = basic_credentials(headers.get("authorization"), form)
                # issue(form) stays callable with one argument (tests wrap it).
                token = self.tokens.issue(form, v1=True) if v1 else self.tokens.issue(form)
                return _plain_json(200, token)
            except AuthError as exc:
                return _plain_json(exc.status, exc.body)
        if method == "GET" and parts[1:] in (
            ["v2.0", ".well-known", "openid-configuration"],
            [".well-known", "openid-configuration"],
        ):
            return _plain_json(200, openid_configuration(origin, parts[0]))
        return _plain_json(
            404, {"error": {"code": "", "message": f"No resource at '{scope['path']}'."}}
        )

    # -- control API -----------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/_emulator/reset" and method == "POST":
            self.reset()
            return _plain_json(200, {"status": "reset"})
        if path == "/_emulator/stats" and method == "GET":
            return _plain_json(200, self.stats())
        if path == "/_emulator/requests" and method == "GET":
            return _plain_json(200, {"requests": self.requests()})
        if path == "/_emulator/config" and method == "GET":
            return _plain_json(200, self.settings.public())
        if path == "/_emulator/config" and method in ("PUT", "PATCH"):
            try:
                update = validate(json.loads(body or b"null"))
            except ValueError as exc:  # SettingsError and JSONDecodeError
                message = str(exc) if isinstance(exc, SettingsError) else f"malformed JSON: {exc}"
                return _plain_json(400, {"error": {"code": "bad_config", "message": message}})
            self.configure(update)
            return _plain_json(200, self.settings.public())
        return _plain_json(404, {"error": {"code": "", "message": f"No resource at '{path}'."}})

    def configure(self, update: dict[str, Any]) -> None:
        for key, value in update.items():
            if key == "expire_delta_tokens":
                if value:
                    self.api.reader.expire_tokens()
            elif key == "costs":  # the operations named change; the others keep theirs
                self.settings.costs = {**self.settings.costs, **value}
            else:
                setattr(self.settings, key, value)
        if "seed" in update:
            self.limiter.reseed()

    def reset(self) -> None:
        self.store.reset()
        fresh = Settings()
        for key, value in fresh.as_dict().items():
            setattr(self.settings, key, value)
        self.limiter.reset()
        self.api.reader.delta_floor = 0
        self.api.jobs.clear()
        self.by_status.clear()
        self.total = self.cuts = 0
        self.execution_ms = dict.fromkeys(costs.MESSAGES, 0.0)
        self.log.clear()
        self.tokens.restore_users()

    def stats(self) -> dict[str, Any]:
        return {
            "records": {name: self.store.count(name) for name in self.store.tables},
            "requests": {"total": self.total, "by_status": dict(self.by_status), "cut": self.cuts},
            "execution_ms": {
                "total": round(sum(self.execution_ms.values()), 3),
                "by_message": {m: round(self.execution_ms[m], 3) for m in costs.MESSAGES},
            },
        }

    def requests(self) -> list[dict[str, Any]]:
        return [
            {
                "at": datetime.fromtimestamp(at, UTC).isoformat(),
                "method": method,
                "path": path,
                "status": status,
            }
            for at, method, path, status in self.log
        ]


def create_app(db: Path | None = None, specs: Iterable[ObjectSpec] = ()) -> Emulator:
    """A fresh emulator as an ASGI app; ``db`` persists records to a SQLite file;
    ``specs`` are the mapping's objects, served besides the standard tables."""
    return Emulator(db, specs)


def _call(scope: Scope, headers: dict[str, str], body: bytes, user: str) -> Call:
    raw_query = scope.get("query_string", b"").decode("latin-1")
    root, rest = split_api_path(scope["path"]) or (API_PREFIX, "")
    return Call(
        method=scope["method"],
        path=rest,
        query=dict(parse_qsl(raw_query, keep_blank_values=True)),
        headers=headers,
        body=body,
        user_id=user,
        base=f"{_origin(scope, headers)}{root}",
        raw_query=raw_query,
    )


def _origin(scope: Scope, headers: dict[str, str]) -> str:
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _plain_json(status: int, payload: Any) -> Reply:
    return Reply(status, {"Content-Type": "application/json; charset=utf-8"}, dumps(payload))


async def _respond(send: Any, reply: Reply) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    if reply.status not in (204, 304):
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send(
        {"type": "http.response.body", "body": b"" if reply.status in (204, 304) else reply.body}
    )


async def _cut(send: Any) -> None:
    # uvicorn passes the bound method of its per-request cycle, which owns the
    # transport; closing it sends FIN without a status line, like a dropped link.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionCut("response dropped after the request was applied (cut_rate)")
    transport.close()
    # Let connection_lost run so uvicorn sees the disconnect and sends nothing more.
    for _ in range(3):
        await asyncio.sleep(0)
