"""Console and API security, on SQLite and PostgreSQL, in-process over ASGI:

- every route refuses an unauthenticated caller, found by walking ``app.routes`` (a new
  route left open fails here), statically and by calling it;
- every state-changing route refuses a session-authenticated call without the CSRF token;
- labels and error messages carrying markup render as text;
- login: throttled after repeated failures, cookie flags, tampered and expired sessions,
  no open redirect, the password never in a log line.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import itsdangerous
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Engine
from starlette.routing import Mount

from crmsync.config import load_settings
from crmsync.store import sessions
from crmsync.store.db import write_transaction
from crmsync.store.schema import console_session_revoked, sync_error, sync_pause
from crmsync.web import csrf, health
from crmsync.web.app import create_app
from crmsync.web.auth import require_api_auth
from crmsync.web.console.login import require_login
from crmsync.web.session import COOKIE, MAX_AGE_SECONDS

PASSWORD = "s3cret-Admin-pw"
TOKEN = "security-token"
# Open on purpose: the login form, the health check, static assets, and the API's own
# description (public documentation of the routes; it holds no data).
PUBLIC = {
    "/login",
    "/healthz",
    "/api/v1/openapi.json",
    "/api/v1/docs",
    "/docs/oauth2-redirect",
    "/favicon.ico",  # the login page's icon
    "/swagger-ui/{name}",  # the API docs page's assets (web/api_docs.py)
}
PUBLIC_MOUNTS = {"/static"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
XSS = '<script>alert("x")</script>'
XSS_MESSAGE = '<img src=x onerror="alert(1)"> failed'


@pytest.fixture
def app(db_url: str, engine: Engine) -> FastAPI:
    settings = load_settings(database_url=db_url, admin_password=PASSWORD, api_token=TOKEN)
    return create_app(settings, engine=engine)


def client_for(app: FastAPI, host: str = "203.0.113.7", scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(host, 5555)),
        base_url=f"{scheme}://console.test",
    )


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


def page_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def log_in(c: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    form = await c.get("/login")
    return await c.post(
        "/login",
        data={"username": "admin", "password": password, "csrf_token": page_token(form.text)},
    )


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A logged-in client and its session's CSRF token."""
    async with client_for(app) as c:
        assert (await log_in(c)).status_code == 303
        page = await c.get("/admin/microsoft-dynamics/sync-status")
        assert page.status_code == 200
        yield c, page_token(page.text)


def routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """Every (method, path, route context) the app serves, through included routers."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            continue
        assert route.path, f"unexpected route {route!r}"
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                yield method, route.path, route


def concrete(path: str) -> str:
    return path.replace("{object}", "lead").replace("{id}", "1")


def dependency_calls(route: Any) -> set[Any]:
    calls: set[Any] = set()
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        calls.add(dep.call)
        stack.extend(dep.dependencies)
    return calls


# -- authentication -----------------------------------------------------------------------


def test_every_route_declares_authentication(app: FastAPI) -> None:
    open_routes = []
    for method, path, route in routes(app):
        if path in PUBLIC:
            continue
        assert isinstance(route.original_route, APIRoute), f"{method} {path}: not an APIRoute"
        calls = dependency_calls(route)
        if not calls & {require_api_auth, require_login}:
            open_routes.append(f"{method} {path}")
        if method in UNSAFE:
            assert csrf.protect in calls, f"{method} {path} has no CSRF check"
    assert not open_routes, f"routes without authentication: {open_routes}"
    mounts = {r.path for r in app.routes if isinstance(r, Mount)}
    assert mounts <= PUBLIC_MOUNTS, f"unexpected mounts: {mounts - PUBLIC_MOUNTS}"


async def test_every_route_refuses_an_unauthenticated_call(
    app: FastAPI, anon: httpx.AsyncClient, engine: Engine
) -> None:
    checked = 0
    for method, path, _route in routes(app):
        if path in PUBLIC:
            continue
        url = concrete(path)
        bodies: list[dict[str, Any]] = [{"json": {}}]
        if method != "GET" and path.startswith("/api/"):
            # Auth comes before the body: no 400/422 telling an anonymous caller what
            # the route expects.
            bodies += [
                {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
                {"json": ["a", "list"]},
            ]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for body in bodies:
                sent = {**body.get("headers", {}), **headers}
                rest = {k: v for k, v in body.items() if k != "headers"}
                r = await anon.request(method, url, headers=sent, **rest)
                if path.startswith("/api/") or path == "/metrics":
                    assert r.status_code == 401, (method, url, r.status_code, body)
                    assert r.json()["error"]["code"] == "unauthenticated"
                else:
                    assert r.status_code in (303, 403), (method, url, r.status_code)
                    if r.status_code == 303:
                        assert r.headers["location"].startswith("/login")
        checked += 1
    assert checked > 20
    with engine.connect() as conn:  # nothing happened
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_pause)).scalar() == 0


async def test_public_routes_answer_without_credentials(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/healthz")).status_code == 200
    assert (await anon.get("/login")).status_code == 200
    css = await anon.get("/static/console.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert (await anon.get("/static/../templates/base.html")).status_code == 404


async def test_a_session_authenticates_the_api(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = admin
    r = await c.get("/api/v1/sync/status")
    assert r.status_code == 200 and r.json()["view"] == "backlog"
    assert (await c.get("/metrics")).status_code == 200


# -- CSRF -----------------------------------------------------------------------------


async def test_every_state_changing_route_needs_the_csrf_token_with_a_session(
    app: FastAPI, admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, token = admin
    unsafe = [(m, p) for m, p, _ in routes(app) if m in UNSAFE and p != "/login"]
    assert len(unsafe) >= 10
    for method, path in unsafe:
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": token + "x"}):
            r = await c.request(method, concrete(path), headers=headers, json={})
            assert r.status_code == 403, (method, path, headers, r.status_code)
            if path.startswith("/api/"):
                assert "CSRF" in r.json()["error"]["message"]
            else:  # a console form: a page saying what to do
                assert "This form has expired" in r.text and "Nothing was changed" in r.text
        r = await c.request(method, concrete(path), data={"csrf_token": "forged"})
        assert r.status_code == 403, (method, path)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_pause)).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 0
    # Still logged in: the refusals did not end the session.
    assert (await c.get("/api/v1/sync/status")).status_code == 200


async def test_the_token_lets_session_calls_through(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, token = admin
    r = await c.post("/api/v1/sync/pause", json={"object": "lead"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    r = await c.post(
        "/admin/microsoft-dynamics/sync-status/resume",
        data={"object": "lead", "direction": "*", "csrf_token": token},
    )
    assert r.status_code == 303
    r = await c.post(
        "/api/v1/records/lead", json={"email": "a@example.com"}, headers={"X-CSRF-Token": token}
    )
    assert r.status_code == 201
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_pause)).scalar() == 0


async def test_bearer_calls_need_no_csrf_token(anon: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = await anon.post("/api/v1/sync/pause", json={"object": "lead"}, headers=auth)
    assert r.status_code == 200
    r = await anon.post("/api/v1/records/lead", json={"email": "b@example.com"}, headers=auth)
    assert r.status_code == 201


async def test_login_form_needs_its_csrf_token(anon: httpx.AsyncClient) -> None:
    r = await anon.post("/login", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 403
    assert "This form has expired" in r.text
    assert (await anon.get("/api/v1/sync/status")).status_code == 401


# -- XSS --------------------------------------------------------------------------------


def seed_markup(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES (:e, 'X')"), {"e": XSS})
        conn.execute(
            sa.insert(sync_error).values(
                object="lead",
                direction="to_crm",
                record_key="1",
                record_id=1,
                crm_id=None,
                record_label=XSS,
                operation="insert",
                error_code="<b>0x1</b>",
                error_message=XSS_MESSAGE,
                first_failed_at=sa.func.now(),
                last_failed_at=sa.func.now(),
                attempts=1,
                status="open",
            )
        )


async def test_markup_in_labels_and_messages_renders_as_text(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    seed_markup(engine)
    c, token = admin
    pages = [
        "/admin/microsoft-dynamics/sync-status/lead",
        "/admin/microsoft-dynamics/sync-status/lead?partial=1",
        "/admin/microsoft-dynamics/sync-errors",
        "/admin/microsoft-dynamics/sync-errors?q=" + XSS,
    ]
    for url in pages:
        r = await c.get(url)
        assert r.status_code == 200, url
        assert XSS not in r.text and "<img src=x" not in r.text and "<b>0x1" not in r.text, url
        assert "default-src 'self'" in r.headers["content-security-policy"]
    errors_page = (await c.get(pages[2])).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in errors_page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; failed" in errors_page
    # A notice echoing user input is escaped too.
    r = await c.post(
        "/admin/microsoft-dynamics/sync-errors/retry",
        data={"csrf_token": token, "ids": XSS, "scope": "selected"},
    )
    assert r.status_code == 303
    page = await c.get(r.headers["location"])
    assert "is not an error id" in page.text and XSS not in page.text


# -- login --------------------------------------------------------------------------------


async def test_login_is_throttled_per_client(app: FastAPI) -> None:
    async with client_for(app, host="198.51.100.1") as attacker:
        for _ in range(5):
            r = await log_in(attacker, "wrong")
            assert r.status_code == 401
            assert "Wrong user name or password" in r.text
        r = await log_in(attacker, PASSWORD)  # even the right password, for now
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        assert (await attacker.get("/api/v1/sync/status")).status_code == 401
    async with client_for(app, host="198.51.100.2") as other:
        assert (await log_in(other)).status_code == 303


async def test_session_cookie_flags(app: FastAPI) -> None:
    async with client_for(app) as c:
        r = await log_in(c)
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith(COOKIE) and "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie
        assert PASSWORD.lower() not in cookie
    async with client_for(app, scheme="https") as c:
        r = await log_in(c)
        assert "secure" in r.headers["set-cookie"].lower()


async def test_tampered_foreign_and_expired_sessions_are_refused(app: FastAPI, db_url: str) -> None:
    async with client_for(app) as c:
        await log_in(c)
        good = c.cookies[COOKIE]
        c.cookies.set(COOKIE, good[:-2] + ("AA" if not good.endswith("AA") else "BB"))
        assert (await c.get("/api/v1/sync/status")).status_code == 401
    # The store's engine is the fixture's: an app that made its own would leave its
    # connection to the garbage collector (ASGITransport runs no lifespan to dispose it).
    other = create_app(
        load_settings(database_url=db_url, admin_password="another password"),
        engine=app.state.engine,
    )
    async with client_for(other) as c:
        c.cookies.set(COOKIE, good)
        assert (await c.get("/api/v1/sync/status")).status_code == 401
    signer = itsdangerous.TimestampSigner(app.state.passwords.signing_key)
    import base64
    import json

    stale = {"user": "admin", "since": int(time.time()) - MAX_AGE_SECONDS - 5}
    value = signer.sign(base64.b64encode(json.dumps(stale).encode())).decode()
    async with client_for(app) as c:
        c.cookies.set(COOKIE, value)
        assert (await c.get("/api/v1/sync/status")).status_code == 401
        r = await c.get("/admin/microsoft-dynamics/sync-status")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_logout_ends_the_session(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, token = admin
    r = await c.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert (await c.get("/api/v1/sync/status")).status_code == 401
    r = await c.get("/admin/microsoft-dynamics/sync-errors")
    assert r.status_code == 303


async def test_a_copy_of_the_cookie_is_refused_after_logout_by_every_process(
    app: FastAPI, admin: tuple[httpx.AsyncClient, str], db_url: str, engine: Engine
) -> None:
    """Logout revokes the session id in the store: the process that logged out refuses
    a copy of the cookie at once, another console process on the same store from its
    next refresh; the revocation is pruned once the cookie would have expired."""
    c, token = admin
    copied = c.cookies[COOKIE]
    settings = load_settings(database_url=db_url, admin_password=PASSWORD, api_token=TOKEN)
    other = create_app(settings, engine=engine)  # the same password signs the same cookies
    async with client_for(other) as thief:
        thief.cookies.set(COOKIE, copied)
        assert (await thief.get("/api/v1/sync/status")).status_code == 200

    assert (await c.post("/logout", data={"csrf_token": token})).status_code == 303

    async with client_for(app) as thief:
        thief.cookies.set(COOKIE, copied)
        assert (await thief.get("/api/v1/sync/status")).status_code == 401
        r = await thief.get("/admin/microsoft-dynamics/sync-status")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    other.state.revoked_sessions.refresh(engine)  # what its upkeep loop does every 5 s
    async with client_for(other) as thief:
        thief.cookies.set(COOKIE, copied)
        assert (await thief.get("/api/v1/sync/status")).status_code == 401
    async with client_for(app) as c2:  # a new login is a new session
        assert (await log_in(c2)).status_code == 303
        assert (await c2.get("/api/v1/sync/status")).status_code == 200

    with engine.connect() as conn:
        [expires] = conn.execute(sa.select(console_session_revoked.c.expires_at)).scalars()
    with write_transaction(engine) as conn:
        assert sessions.prune(conn, expires - timedelta(seconds=1)) == 0
        assert sessions.prune(conn, expires) == 1


async def test_a_store_without_the_sessions_table_still_serves_and_says_so_once(
    db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """New code in front of a store not yet upgraded to migration 0006: start-up and the
    upkeep's refreshes warn once; the console still logs in and out (this process's own
    logout is still refused at once)."""
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE console_session_revoked"))
    settings = load_settings(database_url=db_url, admin_password=PASSWORD, api_token=TOKEN)
    app = create_app(settings, engine=engine)
    with caplog.at_level(logging.WARNING, logger="crmsync.web"):
        async with app.router.lifespan_context(app):
            await health.refresh_revoked_sessions(app)  # the upkeep loop's next round
            async with client_for(app) as c:
                assert (await log_in(c)).status_code == 303
                page = await c.get("/admin/microsoft-dynamics/sync-status")
                copied = c.cookies[COOKIE]
                r = await c.post("/logout", data={"csrf_token": page_token(page.text)})
                assert r.status_code == 303
            async with client_for(app) as thief:
                thief.cookies.set(COOKIE, copied)
                assert (await thief.get("/api/v1/sync/status")).status_code == 401
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("console.sessions_unreadable") == 1
    assert events.count("console.logout_unshared") == 1


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"]
)
async def test_no_open_redirect_after_login(anon: httpx.AsyncClient, target: str) -> None:
    form = await anon.get("/login", params={"next": target})
    r = await anon.post(
        "/login",
        data={
            "username": "admin",
            "password": PASSWORD,
            "next": target,
            "csrf_token": page_token(form.text),
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/microsoft-dynamics/sync-status"


async def test_login_returns_to_the_page_asked_for(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/admin/microsoft-dynamics/sync-errors?object=lead")
    assert r.status_code == 303
    form = await anon.get(r.headers["location"])
    nxt = re.search(r'name="next" value="([^"]+)"', form.text)
    assert nxt and nxt.group(1) == "/admin/microsoft-dynamics/sync-errors?object=lead"
    r = await anon.post(
        "/login",
        data={
            "password": PASSWORD,
            "username": "admin",
            "next": nxt.group(1),
            "csrf_token": page_token(form.text),
        },
    )
    assert r.headers["location"] == "/admin/microsoft-dynamics/sync-errors?object=lead"


async def test_the_password_is_never_logged_or_kept_plain(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(app) as c:
        await log_in(c, "wrong-" + PASSWORD)
        await log_in(c)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "console.login_failed" in logged and "console.login" in logged
    assert PASSWORD not in logged
    passwords = app.state.passwords
    assert PASSWORD not in repr(vars(passwords)) and PASSWORD not in passwords.signing_key
    assert PASSWORD not in repr(app.state.settings)


async def test_without_a_password_nobody_logs_in(db_url: str, engine: Engine) -> None:
    app = create_app(load_settings(database_url=db_url), engine=engine)
    async with client_for(app) as c:
        form = await c.get("/login")
        assert "CRMSYNC_ADMIN_PASSWORD" in form.text
        r = await log_in(c, "")
        assert r.status_code in (401, 422)
        assert (await c.get("/admin/microsoft-dynamics/sync-status")).status_code == 303
