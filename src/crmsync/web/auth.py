"""Who may call ``/api/v1``.

A request is let in when any of the app's *credential checks* accepts it. ``create_app``
installs the bearer-token check (``CRMSYNC_API_TOKEN``); the console's session login is
meant to be appended to ``app.state.credential_checks`` the same way (a function of the
request, e.g. reading ``request.session``), with nothing here to change.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from crmsync.web.session import SESSION_USER, session_check

CredentialCheck = Callable[[Request], bool]

API_PREFIX = "/api/v1"
"""Where the JSON API lives: everything under it needs a credential check to pass."""

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="crmsync"'}


def bearer_token_check(token: SecretStr) -> CredentialCheck:
    """Accepts ``Authorization: Bearer <token>``, compared in constant time."""
    expected = token.get_secret_value().encode("utf-8")

    def check(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        # compare_digest takes as long whatever prefix matches: no timing oracle.
        # Starlette decodes header bytes as latin-1; encoding back gives the bytes sent,
        # so a non-ASCII token sent as UTF-8 matches.
        return hmac.compare_digest(given.strip().encode("latin-1"), expected)

    return check


# Declared so that the OpenAPI document and Swagger UI know the scheme; the checking is
# done by the credential checks below.
bearer_scheme = HTTPBearer(auto_error=False, description="CRMSYNC_API_TOKEN")


def require_api_auth(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """FastAPI dependency: 401 unless one of the app's credential checks accepts."""
    checks: list[CredentialCheck] = request.app.state.credential_checks
    if not checks:
        raise HTTPException(
            401,
            "the API is disabled: no credentials are configured (set CRMSYNC_API_TOKEN)",
            headers=CHALLENGE,
        )
    if any(check(request) for check in checks):
        return
    if "authorization" not in request.headers:
        raise HTTPException(
            401, "missing credentials: send Authorization: Bearer <token>", headers=CHALLENGE
        )
    raise HTTPException(401, "invalid credentials", headers=CHALLENGE)


def actor_of(request: Request) -> str:
    """Who makes this request, as the history records it: ``api:CRMSYNC_API_TOKEN``
    for the bearer token, ``console:<user>`` for the console's session."""
    checks: list[CredentialCheck] = request.app.state.credential_checks
    if any(check(request) for check in checks if check is not session_check):
        return "api:CRMSYNC_API_TOKEN"
    user = request.session.get(SESSION_USER) if "session" in request.scope else None
    return f"console:{user}" if isinstance(user, str) else "api"
