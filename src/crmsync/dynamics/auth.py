"""Access tokens for Dynamics: client credentials, cached, refreshed in a single flight.

The client uses a ``TokenProvider`` (``token()``, ``invalidate()``): ``CachingTokenProvider``
caches what a ``TokenSource`` issues; concurrent callers await one refresh, on expiry
(with a margin) or after the client saw a 401. ``source_for`` picks the source:

- https: ``MsalTokenSource``, MSAL's ``acquire_token_for_client`` against
  ``{authority_url}/{tenant_id}``, scope ``{dynamics_url}/.default`` (authenticate-oauth),
  in a worker thread; its HTTP goes through httpx so tests can stand in for the network.
- http (the emulator): ``ClientCredentialsSource``, a direct POST to
  ``.../oauth2/v2.0/token``, because MSAL refuses http authorities.

Secrets never appear in reprs, logs or exception messages: errors carry the OAuth2 code
and Entra's description, and ``_redact`` strips the secret from any text defensively.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx

from crmsync.errors import CrmsyncError, Fatal, Retriable

# Refresh this long before expiry so a token never dies in flight (tokens last ~60 min).
EXPIRY_MARGIN = 300.0
TOKEN_TIMEOUT = 30.0

# RFC 6749 section 5.2 errors that only go away when the service recovers.
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})

# Entra hosts MSAL already knows; anything else skips instance discovery. For another
# https host MSAL would first ask Microsoft's instance-discovery endpoint at
# login.microsoftonline.com (needs the internet); with ``instance_discovery=False`` it
# reads ``{authority}/v2.0/.well-known/openid-configuration`` instead.
_MICROSOFT_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # on the provider's clock (time.monotonic by default)


@dataclass(frozen=True)
class Credentials:
    authority_url: str
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    resource: str  # the Dynamics URL; the scope is "<resource>/.default"

    @property
    def authority(self) -> str:
        return f"{self.authority_url.rstrip('/')}/{self.tenant_id}"

    @property
    def scope(self) -> str:
        return f"{self.resource.rstrip('/')}/.default"


class TokenSource(Protocol):
    async def fetch(self) -> tuple[str, float]:
        """A fresh ``(access token, lifetime in seconds)``; raises Fatal or Retriable."""
        ...


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    async def invalidate(self, token: str) -> None:
        """Forget ``token`` (the server refused it) unless a newer one replaced it."""
        ...


class StaticTokenProvider:
    """A fixed token (tests, or an emulator that accepts anything)."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.invalidations = 0

    def __repr__(self) -> str:
        return "StaticTokenProvider(token=***)"

    async def token(self) -> str:
        return self._token

    async def invalidate(self, token: str) -> None:
        self.invalidations += 1


class CachingTokenProvider:
    """Caches one token; concurrent callers share one fetch (single flight)."""

    def __init__(
        self,
        source: TokenSource,
        *,
        margin: float = EXPIRY_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._margin = margin
        self._clock = clock
        self._current: AccessToken | None = None
        self._lock: asyncio.Lock | None = None
        self.fetches = 0

    def __repr__(self) -> str:
        return f"CachingTokenProvider(source={type(self._source).__name__})"

    def _fresh(self) -> AccessToken | None:
        tok = self._current
        if tok is not None and self._clock() < tok.expires_at - self._margin:
            return tok
        return None

    async def token(self) -> str:
        if (tok := self._fresh()) is not None:
            return tok.value
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Whoever held the lock before us may have refreshed already.
            if (tok := self._fresh()) is not None:
                return tok.value
            self.fetches += 1
            value, lifetime = await self._source.fetch()
            self._current = AccessToken(value, self._clock() + lifetime)
            return value

    async def invalidate(self, token: str) -> None:
        if self._current is not None and self._current.value == token:
            self._current = None


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _oauth_error(payload: Mapping[str, Any], secret: str, status: int | None) -> CrmsyncError:
    code = str(payload.get("error") or "unknown_error")
    # Entra's description starts with "AADSTS<n>: <text>" and ends in trace ids.
    raw = str(payload.get("error_description") or "")
    desc = _redact(raw.splitlines()[0] if raw else "", secret)
    message = f"token request failed: {code}" + (f": {desc}" if desc else "")
    if code in _TRANSIENT_OAUTH_ERRORS or (status is not None and (status >= 500 or status == 429)):
        return Retriable(message, status=status)
    # invalid_client, unauthorized_client, invalid_request (bad tenant), invalid_scope...
    return Fatal(message)


class ClientCredentialsSource:
    """OAuth2 client credentials straight over httpx (for non-https authorities)."""

    def __init__(
        self, creds: Credentials, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._creds = creds
        self._transport = transport

    def __repr__(self) -> str:
        return f"ClientCredentialsSource(authority={self._creds.authority!r})"

    @property
    def token_url(self) -> str:
        return f"{self._creds.authority}/oauth2/v2.0/token"

    async def fetch(self) -> tuple[str, float]:
        c = self._creds
        form = {
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "scope": c.scope,
        }
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=TOKEN_TIMEOUT) as http:
                resp = await http.post(self.token_url, data=form)
        except httpx.HTTPError as exc:
            raise Retriable(f"token endpoint unreachable ({type(exc).__name__})") from exc
        try:
            payload = resp.json()
        except ValueError:
            payload = {}
        if resp.status_code == 200 and isinstance(payload, dict) and payload.get("access_token"):
            return str(payload["access_token"]), float(payload.get("expires_in", 3600))
        if not isinstance(payload, dict) or "error" not in payload:
            payload = {"error": f"http_{resp.status_code}"}
        raise _oauth_error(payload, c.client_secret, resp.status_code)


class _MsalHttpAdapter:
    """MSAL's minimal HttpClient interface (msal/oauth2cli/http.py) over httpx.Client."""

    def __init__(self, transport: httpx.BaseTransport | None) -> None:
        self._http = httpx.Client(transport=transport, timeout=TOKEN_TIMEOUT)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> httpx.Response:
        if isinstance(data, str | bytes):
            return self._http.post(url, params=params, content=data, headers=headers)
        return self._http.post(url, params=params, data=data, headers=headers)

    def get(
        self, url: str, params: Any = None, headers: Any = None, **kwargs: Any
    ) -> httpx.Response:
        return self._http.get(url, params=params, headers=headers)

    def close(self) -> None:
        self._http.close()


class MsalTokenSource:
    """Client credentials through MSAL, run in a worker thread."""

    def __init__(self, creds: Credentials, *, transport: httpx.BaseTransport | None = None) -> None:
        self._creds = creds
        self._transport = transport
        self._app: Any = None

    def __repr__(self) -> str:
        return f"MsalTokenSource(authority={self._creds.authority!r})"

    def _build(self) -> Any:
        import msal

        c = self._creds
        host = (urlparse(c.authority_url).hostname or "").lower()
        return msal.ConfidentialClientApplication(
            c.client_id,
            client_credential=c.client_secret,
            authority=c.authority,
            http_client=_MsalHttpAdapter(self._transport),
            # None keeps MSAL's default discovery for Microsoft hosts; other hosts are ours.
            instance_discovery=None if host in _MICROSOFT_HOSTS else False,
        )

    def _acquire(self) -> dict[str, Any]:
        import msal

        if self._app is None:
            # The constructor already fetches the OpenID configuration (tenant discovery).
            self._app = self._build()
        cache = self._app.token_cache
        # Our provider decides when a token is stale (e.g. after a 401); MSAL refuses
        # force_refresh for client credentials, so empty its cache instead.
        for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(item)
        result: dict[str, Any] = self._app.acquire_token_for_client(scopes=[self._creds.scope])
        return result

    async def fetch(self) -> tuple[str, float]:
        import msal

        secret = self._creds.client_secret
        try:
            result = await asyncio.to_thread(self._acquire)
        except httpx.HTTPError as exc:
            raise Retriable(f"token endpoint unreachable ({type(exc).__name__})") from exc
        except msal.exceptions.MsalServiceError as exc:
            raise Retriable(_redact(f"token service error: {exc}", secret)) from None
        except ValueError as exc:
            # Bad authority URL or tenant: discovery answered 4xx (msal/authority.py).
            raise Fatal(_redact(f"authority rejected: {exc}", secret)) from None
        if result.get("access_token"):
            return str(result["access_token"]), float(result.get("expires_in", 3600))
        raise _oauth_error(result, secret, None)


def source_for(creds: Credentials, transport: Any = None) -> TokenSource:
    """MSAL for https authorities; the direct client for http (MSAL requires https)."""
    # MSAL 1.39 refuses plain-http authorities outright: ``msal.authority.canonicalize``
    # raises ValueError unless the scheme is https (``authority`` and ``oidc_authority``
    # alike), so the emulator on http://127.0.0.1 needs the direct client.
    if urlparse(creds.authority_url).scheme == "http":
        async_t = transport if isinstance(transport, httpx.AsyncBaseTransport) else None
        return ClientCredentialsSource(creds, transport=async_t)
    sync_t = transport if isinstance(transport, httpx.BaseTransport) else None
    return MsalTokenSource(creds, transport=sync_t)
