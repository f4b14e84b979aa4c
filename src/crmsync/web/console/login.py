"""``/login`` and ``/logout``, and the dependency every console page takes.

A console page asked for without a session redirects to the login form (a script's
``fetch`` of a page fragment gets a 401 instead, so it can reload into the form).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from crmsync.web.console.render import notify, redirect, render
from crmsync.web.session import (
    ADMIN_USER,
    LoginThrottle,
    Passwords,
    end_session,
    logged_in,
    start_session,
)

log = logging.getLogger(__name__)

HOME = "/admin/microsoft-dynamics/sync-status"
LOGIN = "/login"
MAX_FIELD = 1024
MAX_ACCOUNT = 64  # of a user name, as a throttling key


class LoginRequired(Exception):
    """Raised by ``require_login``; answered with a redirect to the login form."""

    def __init__(self, next_path: str, fragment: bool) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.fragment = fragment


def require_login(request: Request) -> None:
    """Dependency of every console page and form."""
    if logged_in(request):
        return
    # After logging in, go back to the page asked for; a form post is not repeated.
    target = HOME
    if request.method == "GET":
        target = request.url.path + ("?" + request.url.query if request.url.query else "")
    raise LoginRequired(target, fragment="partial" in request.query_params)


async def login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if exc.fragment:
        return Response("login required", status_code=401, media_type="text/plain")
    return redirect(LOGIN, {"next": exc.next_path if exc.next_path != HOME else ""})


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 for c in value)
    ):
        return HOME
    return value


def passwords_of(request: Request) -> Passwords:
    passwords: Passwords = request.app.state.passwords
    return passwords


def throttle_of(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


def client_of(request: Request) -> str:
    """The client's address. X-Forwarded-For is never read here: the server puts a
    trusted proxy's value in its place (CRMSYNC_TRUSTED_PROXIES, web/server.py)."""
    return request.client.host if request.client else "unknown"


router = APIRouter(include_in_schema=False)


@router.get(LOGIN, response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    if logged_in(request):
        return RedirectResponse(safe_next(next), status_code=303)
    return render(
        request,
        "login.html",
        {"next": safe_next(next), "enabled": passwords_of(request).enabled, "error": None},
    )


@router.post(LOGIN, response_class=HTMLResponse)
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=MAX_FIELD)] = "",
    password: Annotated[str, Form(max_length=MAX_FIELD)] = "",
    next: Annotated[str, Form(max_length=MAX_FIELD)] = "",
) -> Response:
    passwords, throttle, client = passwords_of(request), throttle_of(request), client_of(request)
    context = {"next": safe_next(next), "enabled": passwords.enabled, "username": username}
    account = username.strip()[:MAX_ACCOUNT]
    wait = throttle.retry_after(client, account)
    if wait:
        log.warning(
            "login throttled",
            extra={"event": "console.login_throttled", "client": client, "wait": wait},
        )
        return _refused(
            request,
            context,
            429,
            f"Too many failed logins. Try again in {wait} seconds.",
            {"Retry-After": str(wait)},
        )
    # argon2 takes tens of milliseconds of CPU on purpose: keep it off the event loop.
    if not await run_in_threadpool(passwords.check, username.strip(), password):
        throttle.failed(client, account)
        log.warning("login failed", extra={"event": "console.login_failed", "client": client})
        return _refused(request, context, 401, "Wrong user name or password.")
    throttle.succeeded(client, account)
    start_session(request)
    log.info("login", extra={"event": "console.login", "client": client, "user": ADMIN_USER})
    return RedirectResponse(safe_next(next), status_code=303)


def _refused(
    request: Request,
    context: dict[str, object],
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    response = render(request, "login.html", {**context, "error": message}, status_code=status)
    response.headers.update(headers or {})
    return response


@router.post("/logout", dependencies=[Depends(require_login)])
def logout(request: Request) -> Response:
    end_session(request)
    notify(request, "You are logged out.")
    return redirect(LOGIN)
