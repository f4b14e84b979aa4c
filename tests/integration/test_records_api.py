"""The records API in-process (ASGI transport), on SQLite and PostgreSQL."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings, load_settings
from crmsync.store import capture
from crmsync.store.schema import sync_change, sync_queue, sync_record
from crmsync.web.app import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_settings(db_url: str) -> Settings:
    return load_settings(database_url=db_url, api_token=TOKEN)


@pytest.fixture
async def client(api_settings: Settings, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as c:
        yield c


def queue(engine: Engine) -> list[dict[str, Any]]:
    capture.fold_pending(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                sync_queue.c.object,
                sync_queue.c.direction,
                sync_queue.c.record_key,
                sync_queue.c.operation,
                sync_queue.c.state,
            ).order_by(sync_queue.c.id)
        )
        return [dict(r._mapping) for r in rows]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


async def create(client: httpx.AsyncClient, obj: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(f"/api/v1/records/{obj}", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


# -- routes ---------------------------------------------------------------------------


async def test_create_returns_the_record(client, engine):
    response = await client.post(
        "/api/v1/records/lead", json={"email": "ada@example.com", "first_name": "Ada"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"] >= 1
    assert body["crm_id"] is None
    assert body["email"] == "ada@example.com"
    assert body["first_name"] == "Ada"
    assert body["last_name"] is None and body["company"] is None
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    # capture: one to_crm insert entry for the new lead
    assert queue(engine) == [
        {
            "object": "lead",
            "direction": "to_crm",
            "record_key": str(body["id"]),
            "operation": "insert",
            "state": "pending",
        }
    ]


async def test_get_has_the_sync_state(client, engine):
    lead = await create(client, "lead", email="g@example.com")
    response = await client.get(f"/api/v1/records/lead/{lead['id']}")
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in lead} == lead
    assert body["sync"] == {"state": "pending", "last_synced_at": None}

    synced_at = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    with engine.begin() as conn:  # as a worker leaves it once the record synced
        conn.execute(sa.delete(sync_change))
        conn.execute(sa.delete(sync_queue))
        conn.execute(
            sa.insert(sync_record).values(
                object="lead", record_id=lead["id"], last_synced_at=synced_at, synced_values={}
            )
        )
    body = (await client.get(f"/api/v1/records/lead/{lead['id']}")).json()
    assert body["sync"]["state"] == "synced"
    assert datetime.fromisoformat(body["sync"]["last_synced_at"]) == synced_at

    await client.patch(f"/api/v1/records/lead/{lead['id']}", json={"company": "ACME"})
    assert (await client.get(f"/api/v1/records/lead/{lead['id']}")).json()["sync"][
        "state"
    ] == "pending"
    capture.fold_pending(engine)  # as a worker's claim does, before Dynamics refuses it
    with engine.begin() as conn:
        conn.execute(sa.update(sync_queue).values(state="parked"))
    body = (await client.get(f"/api/v1/records/lead/{lead['id']}")).json()
    assert body["sync"]["state"] == "error"
    assert body["sync"]["last_synced_at"] is not None


async def test_patch_changes_only_given_fields(client, engine):
    lead = await create(client, "lead", email="p@example.com", first_name="Pat")
    response = await client.patch(f"/api/v1/records/lead/{lead['id']}", json={"last_name": "Lee"})
    assert response.status_code == 200
    body = response.json()
    assert body["first_name"] == "Pat" and body["last_name"] == "Lee"
    assert body["updated_at"] >= lead["updated_at"]
    assert body["created_at"] == lead["created_at"]
    # null clears a field
    body = (
        await client.patch(f"/api/v1/records/lead/{lead['id']}", json={"first_name": None})
    ).json()
    assert body["first_name"] is None and body["last_name"] == "Lee"
    # insert then updates before sync: still one insert entry
    assert [(e["operation"], e["record_key"]) for e in queue(engine)] == [
        ("insert", str(lead["id"]))
    ]


async def test_delete_of_never_synced_lead_leaves_no_entry(client, engine):
    lead = await create(client, "lead", email="d@example.com")
    response = await client.delete(f"/api/v1/records/lead/{lead['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert queue(engine) == []
    assert_error(await client.get(f"/api/v1/records/lead/{lead['id']}"), 404, "not_found")
    assert_error(await client.delete(f"/api/v1/records/lead/{lead['id']}"), 404, "not_found")


async def test_delete_of_synced_lead_queues_a_delete(client, engine):
    lead = await create(client, "lead", email="s@example.com")
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_queue))
        # as the sync engine would, without capture
        conn.execute(
            sa.text("UPDATE lead SET crm_id = :c WHERE id = :i"),
            {"c": "00000000-0000-0000-0000-000000000001", "i": lead["id"]},
        )
        conn.execute(sa.delete(sync_queue))
    assert (await client.delete(f"/api/v1/records/lead/{lead['id']}")).status_code == 204
    assert [(e["operation"], e["direction"]) for e in queue(engine)] == [("delete", "to_crm")]


async def test_one_way_object_is_not_captured(client, engine):
    account = await create(client, "account", name="ACME")
    await create(client, "opportunity", name="Deal", account_id=account["id"])
    assert queue(engine) == []


async def test_contact_account_id_must_exist(client, engine):
    account = await create(client, "account", name="ACME")
    contact = await create(client, "contact", email="c@example.com", account_id=account["id"])
    assert contact["account_id"] == account["id"]
    error = assert_error(
        await client.post("/api/v1/records/contact", json={"account_id": account["id"] + 1}),
        422,
        "invalid_field",
    )
    assert error["field"] == "account_id"
    error = assert_error(
        await client.patch(f"/api/v1/records/contact/{contact['id']}", json={"account_id": "1"}),
        422,
        "invalid_field",
    )
    assert error["field"] == "account_id"
    assert [e["object"] for e in queue(engine)] == ["contact"]


async def test_list_filters_on_fields(client):
    for i in range(5):
        await create(client, "lead", email=f"l{i}@example.com", company="A" if i % 2 else "B")
    body = (await client.get("/api/v1/records/lead", params={"company": "A"})).json()
    assert [r["email"] for r in body["items"]] == ["l1@example.com", "l3@example.com"]
    assert body["next_cursor"] is None
    body = (
        await client.get("/api/v1/records/lead", params={"company": "B", "email": "l2@example.com"})
    ).json()
    assert [r["email"] for r in body["items"]] == ["l2@example.com"]
    first = body["items"][0]["id"]
    body = (await client.get("/api/v1/records/lead", params={"id": str(first)})).json()
    assert [r["id"] for r in body["items"]] == [first]
    body = (await client.get("/api/v1/records/lead", params={"company": "nope"})).json()
    assert body == {"items": [], "next_cursor": None}


async def test_paging_has_no_gaps_or_repeats(client):
    created = [(await create(client, "lead", email=f"p{i}@example.com"))["id"] for i in range(23)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/api/v1/records/lead", params=params)).json()
        seen.extend(r["id"] for r in body["items"])
        pages += 1
        if pages == 2:
            # a record deleted and one added mid-way: the keyset cursor neither skips
            # nor repeats the others
            await client.delete(f"/api/v1/records/lead/{created[12]}")
            created.remove(created[12])
            created.append((await create(client, "lead", email="late@example.com"))["id"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    assert pages == 5
    default = (await client.get("/api/v1/records/lead")).json()
    assert len(default["items"]) == 23 and default["next_cursor"] is None


async def test_paging_default_limit_is_50(client, engine):
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email) VALUES (:e)"), [{"e": f"{i}@x"} for i in range(60)]
        )
    body = (await client.get("/api/v1/records/lead")).json()
    assert len(body["items"]) == 50 and body["next_cursor"]
    body = (await client.get("/api/v1/records/lead", params={"cursor": body["next_cursor"]})).json()
    assert len(body["items"]) == 10 and body["next_cursor"] is None
    assert len((await client.get("/api/v1/records/lead?limit=1000")).json()["items"]) == 60


# -- bad input: 4xx naming the field, never a 500 ---------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"emial": "x"}, "emial"),
        ({"email": 5}, "email"),
        ({"email": ["a"]}, "email"),
        ({"email": "x" * 256}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"first_name": "a\x00b"}, "first_name"),
        ({"id": 5}, "id"),
        ({"crm_id": "00000000-0000-0000-0000-000000000001"}, "crm_id"),
        ({"created_at": "2026-01-01T00:00:00Z"}, "created_at"),
        ({"updated_at": "2026-01-01T00:00:00Z"}, "updated_at"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(client, engine, payload, field):
    error = assert_error(
        await client.post("/api/v1/records/lead", json=payload), 422, "invalid_field"
    )
    assert error["field"] == field
    assert field in error["message"]
    lead = await create(client, "lead", email="v@example.com")
    error = assert_error(
        await client.patch(f"/api/v1/records/lead/{lead['id']}", json=payload), 422, "invalid_field"
    )
    assert error["field"] == field
    # nothing written by the refused requests
    assert [e["record_key"] for e in queue(engine)] == [str(lead["id"])]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=garbage", "cursor"),
        ("emial=x", "emial"),
        ("account_id=1", "account_id"),
        ("id=abc", "id"),
        ("id=99999999999999999999999", "id"),
        ("email=a%00b", "email"),
        ("email=a&email=b", "email"),
    ],
)
async def test_invalid_list_queries(client, query, field):
    error = assert_error(await client.get(f"/api/v1/records/lead?{query}"), 422, "invalid_field")
    assert error["field"] == field


async def test_malformed_json_is_400(client):
    for body in (b"{not json", b'{"email": ', b"\xff\xfe\x00"):
        response = await client.post(
            "/api/v1/records/lead", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] in ("malformed_json", "bad_request")


async def test_body_must_be_an_object(client):
    for body in ([1, 2], "text", 5, None):
        error = assert_error(
            await client.post("/api/v1/records/lead", json=body), 422, "invalid_field"
        )
        assert error["field"] == "body"


async def test_not_found(client):
    assert_error(await client.get("/api/v1/records/leads"), 404, "not_found")
    assert_error(await client.post("/api/v1/records/widget", json={}), 404, "not_found")
    assert_error(await client.get("/api/v1/records/lead/424242"), 404, "not_found")
    assert_error(await client.get(f"/api/v1/records/lead/{2**70}"), 404, "not_found")
    assert_error(await client.get("/api/v1/records/lead/-1"), 404, "not_found")
    assert_error(await client.patch("/api/v1/records/lead/424242", json={}), 404, "not_found")
    assert_error(
        await client.patch("/api/v1/records/lead/424242", json={"email": "x@example.com"}),
        404,
        "not_found",
    )
    assert_error(await client.get("/api/v1/nothing-here"), 404, "not_found")
    error = assert_error(await client.get("/api/v1/records/lead/abc"), 422, "invalid_field")
    assert error["field"] == "id"


async def test_method_not_allowed(client):
    response = await client.put("/api/v1/records/lead/1", json={})
    assert_error(response, 405, "method_not_allowed")
    assert "allow" in response.headers


async def test_weird_strings_are_stored_verbatim(client):
    values = [
        "Robert'); DROP TABLE lead;--",
        "' OR '1'='1",
        '"; DELETE FROM sync_queue; --',
        "\u202eevil\u202c \U0001f600 \u0000"[:-2],  # RTL override, emoji
        "Z\u0351\u0362a\u0328lgo\u0334",  # combining marks
        "\u00e9\u0301 \u4e2d\u6587 \u05e2\u05d1\u05e8\u05d9\u05ea \ufeffbom",
        "tab\tnew\nline\r\n back\\slash %_ like",
        "\U0001f469\u200d\U0001f469\u200d\U0001f467" * 30,  # ZWJ sequences, long in bytes
    ]
    for value in values:
        lead = await create(client, "lead", first_name=value[:255], company=value[:255])
        got = (await client.get(f"/api/v1/records/lead/{lead['id']}")).json()
        assert got["first_name"] == value[:255]
        found = (await client.get("/api/v1/records/lead", params={"company": value[:255]})).json()
        assert [r["id"] for r in found["items"]] == [lead["id"]]
    total = (await client.get("/api/v1/records/lead")).json()["items"]
    assert len(total) == len(values)


# -- authentication -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
    ],
)
async def test_missing_or_wrong_token_is_401(api_settings, engine, headers):
    app = create_app(api_settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for method, url in [
            ("GET", "/api/v1/records/lead"),
            ("GET", "/api/v1/records/lead/1"),
            ("POST", "/api/v1/records/lead"),
            ("PATCH", "/api/v1/records/lead/1"),
            ("DELETE", "/api/v1/records/lead/1"),
            ("GET", "/api/v1/records/nope"),
        ]:
            response = await c.request(method, url, headers=headers, json={"email": "x"})
            assert_error(response, 401, "unauthenticated")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert queue(engine) == []


async def test_no_token_configured_means_401_saying_so(settings, engine):
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        error = assert_error(
            await c.get("/api/v1/records/lead", headers={"Authorization": "Bearer anything"}),
            401,
            "unauthenticated",
        )
        assert "CRMSYNC_API_TOKEN" in error["message"]
        assert (await c.get("/healthz")).status_code == 200


async def test_token_is_compared_in_constant_time(api_settings, engine, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("crmsync.web.auth.hmac.compare_digest", spy)
    app = create_app(api_settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/api/v1/records/lead", headers=AUTH)).status_code == 200
        assert (
            await c.get("/api/v1/records/lead", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
    assert [a for a, _ in calls] == [TOKEN.encode(), b"nope"]


async def test_non_ascii_token_sent_as_utf8(db_url, engine):
    token = "t\u00f6ken-\u00e9"
    app = create_app(load_settings(database_url=db_url, api_token=token), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        ok = await c.get(
            "/api/v1/records/lead", headers={"Authorization": f"Bearer {token}".encode()}
        )
        assert ok.status_code == 200
        bad = await c.get(
            "/api/v1/records/lead", headers={"Authorization": b"Bearer t\xf6ken-\xe9"}
        )
        assert bad.status_code == 401


async def test_token_never_appears_in_responses(client):
    openapi = (await client.get("/api/v1/openapi.json")).text
    assert TOKEN not in openapi
    response = await client.get("/api/v1/records/lead", headers={"Authorization": "Bearer bad"})
    assert TOKEN not in response.text


# -- operations -----------------------------------------------------------------------


async def test_healthz_without_auth(api_settings, engine):
    app = create_app(api_settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["store"] == "ok"


async def test_healthz_store_down_is_503(tmp_path):
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "db").mkdir()
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'db'}", api_token=TOKEN)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "error"
        assert str(tmp_path) not in response.text
        # the API says the store is unavailable, not a bare 500
        assert_error(await c.get("/api/v1/records/lead", headers=AUTH), 503, "store_unavailable")
    app.state.engine.dispose()


async def test_openapi_is_served(client):
    response = await client.get("/api/v1/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/api/v1/records/{object}"]) == {"get", "post"}
    assert set(paths["/api/v1/records/{object}/{id}"]) == {"get", "patch", "delete"}
    assert (await client.get("/api/v1/docs")).status_code == 200


async def test_unexpected_error_is_a_logged_500_without_internals(api_settings, engine, caplog):
    app = create_app(api_settings, engine=engine)

    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/api/v1/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with caplog.at_level(logging.ERROR, logger="crmsync.web.errors"):
            response = await c.get("/api/v1/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]
    assert any(getattr(r, "event", None) == "api.unhandled_error" for r in caplog.records)
