"""A tiny Dataverse client for the emulator's protocol tests (in-process, over httpx)."""

from __future__ import annotations

import json
from typing import Any

import httpx

API = "/api/data/v9.2/"


class Dv:
    """Requests as one application user, with the headers Dataverse clients send."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.c = client
        self.h = {
            "Authorization": f"Bearer {token}",
            "OData-Version": "4.0",
            "Accept": "application/json",
        }

    async def req(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        url = path if path.startswith(("http", "/")) else API + path
        return await self.c.request(method, url, headers={**self.h, **(headers or {})}, **kw)

    async def get(self, path: str, **headers: str) -> httpx.Response:
        return await self.req("GET", path, headers)

    async def create(self, entity_set: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = await self.req(
            "POST", entity_set, {"Prefer": "return=representation", **headers}, json=body
        )
        assert r.status_code == 201, r.text
        return r.json()


async def token(client: httpx.AsyncClient, client_id: str = "app-1") -> str:
    r = await client.post(
        "/tenant-1/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "s3cret",
            "scope": "https://org/.default",
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


def batch_body(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n").encode()


def http_part(method: str, url: str, body: str | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    inner = f"{method} {url} HTTP/1.1\r\n"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\r\n\r\n" + body + "\r\n"
    else:
        inner += "\r\n"
    return head + "\r\n" + inner


async def send_batch(dv: Dv, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "multipart/mixed; boundary=batch_1"}
    return await dv.req("POST", "$batch", headers, content=body)


def batch_json_parts(text: str) -> list[Any]:
    """The JSON bodies of a batch response's parts, in order."""
    out = []
    for chunk in text.split("--batchresponse_")[1:]:
        body = chunk.partition("\r\n\r\n")[2].partition("\r\n\r\n")[2].strip()
        if body:
            out.append(json.loads(body))
    return out
