"""CSRF protection for every state-changing request made with the console's session.

A cookie is sent by the browser whatever page made the request, so a POST that is
authenticated by the session must also prove it came from one of our pages: it carries
the session's random token, in the ``X-CSRF-Token`` header (``fetch``) or a
``csrf_token`` form field (HTML forms). ``SameSite=Lax`` already keeps the cookie off
cross-site POSTs in current browsers; the token does not rely on that.

``protect`` is installed once, as an app-wide dependency, so every route (today's and any
added later) is covered. It only acts where the session would be what lets the request
in: a bearer-token call (no cookie involved) and an unauthenticated one (refused by the
auth dependency anyway) pass through. The login form is checked too (login CSRF), with
the token the form page put in the anonymous session.
"""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from crmsync.web.auth import CredentialCheck
from crmsync.web.session import logged_in, session_check

SESSION_KEY = "csrf"
HEADER = "x-csrf-token"
FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
LOGIN_PATH = "/login"


def token(conn: HTTPConnection) -> str:
    """The session's CSRF token, made on first use (pages embed it in forms and meta)."""
    value = conn.session.get(SESSION_KEY)
    if not isinstance(value, str) or not value:
        value = secrets.token_urlsafe(32)
        conn.session[SESSION_KEY] = value
    return value


def _token_checks(request: Request) -> list[CredentialCheck]:
    checks: list[CredentialCheck] = request.app.state.credential_checks
    return [check for check in checks if check is not session_check]


async def _given_token(request: Request) -> str:
    given = request.headers.get(HEADER, "")
    if given:
        return given
    if request.headers.get("content-type", "").startswith(FORM_TYPES):
        # Starlette caches the parsed form on the request: the route reads the same one.
        value = (await request.form()).get(FIELD)
        return value if isinstance(value, str) else ""
    return ""


def needs_token(request: Request) -> bool:
    """Whether this request must carry the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return False
    if request.url.path == LOGIN_PATH:
        return True
    if not logged_in(request):
        return False  # not the session letting it in: the auth dependency decides
    # Credentials sent explicitly (a bearer token) cannot be forged by another site.
    return not any(check(request) for check in _token_checks(request))


class CsrfRejected(HTTPException):
    """A session-authenticated change without a valid token (403)."""

    def __init__(self) -> None:
        super().__init__(403, "missing or invalid CSRF token: reload the page and try again")


async def protect(request: Request) -> None:
    """App-wide dependency: 403 for a session-authenticated change without the token."""
    if not needs_token(request):
        return
    expected = request.session.get(SESSION_KEY)
    given = await _given_token(request)
    if (
        not isinstance(expected, str)
        or not expected
        or not given
        or not secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    ):
        raise CsrfRejected()
