"""Token providers: single flight, refresh, MSAL and direct client credentials, secrecy."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

import httpx
import pytest

from crmsync.dynamics.auth import (
    CachingTokenProvider,
    ClientCredentialsSource,
    Credentials,
    MsalTokenSource,
    source_for,
)
from crmsync.errors import Fatal, Retriable

CANARY = "s3cr3t-CANARY-value"


def creds(authority: str = "http://127.0.0.1:9") -> Credentials:
    return Credentials(
        authority_url=authority,
        tenant_id="tenant-1",
        client_id="client-1",
        client_secret=CANARY,
        resource="https://org.crm.dynamics.com",
    )


class TokenServer:
    """A fake token endpoint (and OpenID configuration) that counts token requests."""

    def __init__(self, base: str, *, delay: float = 0.0, error: dict[str, str] | None = None):
        self.base = base
        self.delay = delay
        self.error = error
        self.token_requests = 0
        self.forms: list[dict[str, list[str]]] = []

    def _config(self) -> httpx.Response:
        root = f"{self.base}/tenant-1"
        return httpx.Response(
            200,
            json={
                "issuer": f"{root}/v2.0",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "token_endpoint": f"{root}/oauth2/v2.0/token",
            },
        )

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests += 1
        self.forms.append(parse_qs(request.content.decode()))
        if self.error:
            return httpx.Response(400, json=self.error)
        return httpx.Response(
            200,
            json={
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": f"tok-{self.token_requests}",
            },
        )

    def sync_handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return self._config()
        return self._token(request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.delay)
        return self.sync_handler(request)


class CountingSource:
    def __init__(self, lifetime: float = 3600.0) -> None:
        self.calls = 0
        self.lifetime = lifetime

    async def fetch(self) -> tuple[str, float]:
        self.calls += 1
        await asyncio.sleep(0.01)
        return f"tok-{self.calls}", self.lifetime


async def test_single_flight_under_20_concurrent_callers() -> None:
    server = TokenServer("http://127.0.0.1:9", delay=0.02)
    source = ClientCredentialsSource(creds(), transport=httpx.MockTransport(server.async_handler))
    provider = CachingTokenProvider(source)
    tokens = await asyncio.gather(*(provider.token() for _ in range(20)))
    assert set(tokens) == {"tok-1"}
    assert server.token_requests == 1
    form = server.forms[0]
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["https://org.crm.dynamics.com/.default"]


async def test_refresh_on_expiry_with_margin() -> None:
    now = [0.0]
    source = CountingSource(lifetime=600)
    provider = CachingTokenProvider(source, margin=300, clock=lambda: now[0])
    assert await provider.token() == "tok-1"
    now[0] = 299
    assert await provider.token() == "tok-1"
    now[0] = 301  # inside the margin: refresh
    assert await provider.token() == "tok-2"


async def test_invalidate_only_the_refused_token() -> None:
    source = CountingSource()
    provider = CachingTokenProvider(source)
    first = await provider.token()
    await provider.invalidate("some-older-token")
    assert await provider.token() == first
    # 20 callers saw the same 401: one refresh.
    await asyncio.gather(*(provider.invalidate(first) for _ in range(20)))
    results = await asyncio.gather(*(provider.token() for _ in range(20)))
    assert set(results) == {"tok-2"}
    assert source.calls == 2


@pytest.mark.parametrize("code", ["invalid_client", "unauthorized_client", "invalid_request"])
async def test_unfixable_oauth_errors_are_fatal_and_secret_free(code: str) -> None:
    server = TokenServer(
        "http://127.0.0.1:9",
        error={"error": code, "error_description": f"AADSTS7000215: bad {CANARY}\nTrace ID: 1"},
    )
    source = ClientCredentialsSource(creds(), transport=httpx.MockTransport(server.async_handler))
    with pytest.raises(Fatal) as info:
        await source.fetch()
    assert code in str(info.value)
    assert CANARY not in str(info.value)
    assert "Trace ID" not in str(info.value)


async def test_transient_oauth_errors_are_retriable() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "temporarily_unavailable"})

    source = ClientCredentialsSource(creds(), transport=httpx.MockTransport(handler))
    with pytest.raises(Retriable):
        await source.fetch()


async def test_network_failure_is_retriable() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    source = ClientCredentialsSource(creds(), transport=httpx.MockTransport(handler))
    with pytest.raises(Retriable) as info:
        await source.fetch()
    assert CANARY not in str(info.value)


def test_source_choice_by_scheme() -> None:
    assert isinstance(source_for(creds("http://127.0.0.1:9")), ClientCredentialsSource)
    assert isinstance(source_for(creds("https://login.microsoftonline.com")), MsalTokenSource)


def test_msal_itself_refuses_http_authorities() -> None:
    # Why ClientCredentialsSource exists: msal.authority.canonicalize demands https.
    from msal.authority import canonicalize

    with pytest.raises(ValueError, match="https"):
        canonicalize("http://127.0.0.1:9/tenant-1")


async def test_msal_against_a_non_microsoft_https_authority() -> None:
    server = TokenServer("https://login.example.test")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return server.sync_handler(request)

    source = MsalTokenSource(
        creds("https://login.example.test"), transport=httpx.MockTransport(handler)
    )
    assert await source.fetch() == ("tok-1", 3599.0)
    # a second fetch (after a 401) must not be served from MSAL's own cache
    assert (await source.fetch())[0] == "tok-2"
    # instance_discovery=False: nothing went to login.microsoftonline.com
    assert all(url.startswith("https://login.example.test/") for url in seen)
    assert seen[0].endswith("/tenant-1/v2.0/.well-known/openid-configuration")


async def test_msal_bad_tenant_is_fatal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_tenant"})

    source = MsalTokenSource(
        creds("https://login.example.test"), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(Fatal):
        await source.fetch()


async def test_msal_invalid_client_is_fatal_and_secret_free() -> None:
    server = TokenServer(
        "https://login.example.test",
        error={"error": "invalid_client", "error_description": f"AADSTS7000215: {CANARY}"},
    )
    source = MsalTokenSource(
        creds("https://login.example.test"), transport=httpx.MockTransport(server.sync_handler)
    )
    with pytest.raises(Fatal) as info:
        await source.fetch()
    assert "invalid_client" in str(info.value)
    assert CANARY not in str(info.value)


async def test_msal_network_failure_is_retriable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    source = MsalTokenSource(
        creds("https://login.example.test"), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(Retriable):
        await source.fetch()


def test_reprs_hide_the_secret() -> None:
    c = creds()
    things = [
        c,
        ClientCredentialsSource(c),
        MsalTokenSource(c),
        CachingTokenProvider(CountingSource()),
    ]
    for thing in things:
        assert CANARY not in repr(thing)
    assert CANARY not in json.dumps(repr(c))
