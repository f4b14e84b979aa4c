"""The emulator's control API (not part of Dataverse): /_emulator/config never echoes a secret."""

from __future__ import annotations

import httpx


async def test_config_never_echoes_client_secrets(client: httpx.AsyncClient) -> None:
    secret = "s3cret-value-that-must-not-leak"
    r = await client.put("/_emulator/config", json={"clients": {"app-1": secret, "app-2": secret}})
    assert r.status_code == 200
    assert secret not in r.text
    assert r.json()["clients"] == {"app-1": "********", "app-2": "********"}
    got = await client.get("/_emulator/config")
    assert secret not in got.text and set(got.json()["clients"]) == {"app-1", "app-2"}
    # The secret still works: only its echo is gone.
    form = {"grant_type": "client_credentials", "client_id": "app-1", "client_secret": secret}
    assert (await client.post("/t/oauth2/v2.0/token", data=form)).status_code == 200
    form["client_secret"] = "********"  # the redaction marker is not a valid secret
    assert (await client.post("/t/oauth2/v2.0/token", data=form)).status_code == 401
    r = await client.get("/_emulator/requests")
    assert secret not in r.text
    assert (await client.put("/_emulator/config", json={"clients": None})).json()["clients"] is None
