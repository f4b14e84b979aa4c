"""Token endpoint: client_secret_basic (advertised by the emulator's own discovery
document) and the v1 endpoint /{tenant}/oauth2/token with resource= (RFC 6749 2.3.1,
Microsoft identity platform v1 client credentials)."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import httpx

from crmsync.emulator.app import Emulator


def basic(client_id: str, secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode()


async def test_client_secret_basic(client: httpx.AsyncClient) -> None:
    oidc = (await client.get("/t/v2.0/.well-known/openid-configuration")).json()
    assert "client_secret_basic" in oidc["token_endpoint_auth_methods_supported"]
    await client.put("/_emulator/config", json={"clients": {"app b": "p@ss:word"}})
    form = {"grant_type": "client_credentials", "scope": "https://org/.default"}
    r = await client.post(
        "/t/oauth2/v2.0/token", data=form, headers={"Authorization": basic("app b", "p@ss:word")}
    )
    assert r.status_code == 200, r.text
    tok = r.json()["access_token"]
    assert (
        await client.get("/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {tok}"})
    ).status_code == 200
    wrong = await client.post(
        "/t/oauth2/v2.0/token", data=form, headers={"Authorization": basic("app b", "nope")}
    )
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    garbled = await client.post(
        "/t/oauth2/v2.0/token", data=form, headers={"Authorization": "Basic !!!"}
    )
    assert garbled.status_code == 401
    both = await client.post(
        "/t/oauth2/v2.0/token",
        data={**form, "client_id": "app b", "client_secret": "p@ss:word"},
        headers={"Authorization": basic("app b", "p@ss:word")},
    )
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")


async def test_v1_endpoint_with_resource(client: httpx.AsyncClient, emulator: Emulator) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "v1-app",
        "client_secret": "s",
        "resource": "https://org.test",
    }
    r = await client.post("/my-tenant/oauth2/token", data=form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["resource"] == "https://org.test"
    assert body["expires_in"] == "3600" and int(body["expires_on"]) > int(body["not_before"])
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.get("/api/data/v9.2/WhoAmI", headers=headers)).status_code == 200
    del form["resource"]
    r = await client.post("/my-tenant/oauth2/token", data=form)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert "'resource'" in r.json()["error_description"]
