"""Every surface serves a mapping's custom object: the records API with its typed fields
and OpenAPI enum, the status rows, the error filters and the metrics, on both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from crmsync.config import Settings, load_settings
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate
from crmsync.web.app import create_app

TOKEN = "mapping-token"
MAPPING: dict[str, Any] = {
    "lead": {"fields": {"lead_score": {"attribute": "new_leadscore", "type": "integer"}}},
    "event_registration": {
        "entity_set": "new_eventregistrations",
        "logical_name": "new_eventregistration",
        "primary_key": "new_eventregistrationid",
        "label": "name",
        "fields": {
            "name": {"attribute": "new_name", "type": "string", "max_length": 20},
            "attended": {"attribute": "new_attended", "type": "boolean"},
            "registered": {"attribute": "new_registeredon", "type": "datetime"},
            "fee": {"attribute": "new_fee", "type": "decimal", "precision": 2},
            "kind": {
                "attribute": "new_kind",
                "type": "choice",
                "choices": {"talk": 1, "workshop": 2},
            },
            "contact_id": {"type": "lookup", "target": "contact", "attribute": "new_contactid"},
        },
    },
}


@pytest.fixture
def mapped(db_url: str, engine: Engine) -> Iterator[Settings]:
    settings = load_settings(database_url=db_url, api_token=TOKEN, objects=MAPPING)
    migrate.upgrade(engine, settings.object_specs().values())
    yield settings
    activate(default_objects())


@pytest.fixture
async def client(mapped: Settings, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(mapped, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as c:
        yield c


async def test_records_api_writes_and_reads_typed_fields(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/records/event_registration",
        json={
            "name": "Summit",
            "attended": True,
            "registered": "2026-03-04T09:30:15+01:00",
            "fee": "12.50",
            "kind": "workshop",
        },
    )
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["name"] == "Summit" and record["attended"] is True
    assert record["registered"].startswith("2026-03-04T08:30:15")
    assert record["fee"] in (12.5, "12.50")
    assert record["kind"] == "workshop"
    listed = await client.get("/api/v1/records/event_registration", params={"name": "Summit"})
    assert [r["id"] for r in listed.json()["items"]] == [record["id"]]
    lead = await client.post(
        "/api/v1/records/lead", json={"email": "a@x.org", "last_name": "A", "lead_score": 5}
    )
    assert lead.status_code == 201 and lead.json()["lead_score"] == 5


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("fee", "abc", "is not a number"),
        ("fee", 1.005, "more than 2 decimal places"),
        ("attended", "maybe", "is not a yes/no value"),
        ("registered", "tomorrow", "is not a date and time"),
        ("kind", "keynote", "is not one of the choices"),
        ("name", "x" * 4001, "at most 4000"),
        ("contact_id", "one", "must be an integer"),
    ],
)
async def test_a_value_that_does_not_fit_is_refused_naming_the_field(
    client: httpx.AsyncClient, field: str, value: Any, says: str
) -> None:
    resp = await client.post("/api/v1/records/event_registration", json={field: value})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert field in error["message"] and says in error["message"]


async def test_openapi_status_errors_and_metrics_list_the_custom_object(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    enums = [
        p["schema"]["enum"]
        for path in doc["paths"].values()
        for op in path.values()
        for p in op.get("parameters", [])
        if p["name"] == "object" and "enum" in p.get("schema", {})
    ]
    assert enums and all("event_registration" in e for e in enums)

    await client.post("/api/v1/records/event_registration", json={"name": "Summit"})
    body = (await client.get("/api/v1/sync/status")).json()
    rows = {r["object"]: r for r in body["objects"]}
    assert rows["event_registration"]["inserts"] == 1
    assert set(rows) >= {"lead", "contact", "account", "opportunity"}

    ok = await client.get("/api/v1/sync/errors", params={"object": "event_registration"})
    assert ok.status_code == 200, ok.text
    bad = await client.get("/api/v1/sync/errors", params={"object": "nope"})
    assert bad.status_code == 422

    metrics = (await client.get("/metrics")).text
    assert 'object="event_registration"' in metrics


async def test_an_object_paused_for_its_mapping_is_an_alert_until_resumed(
    mapped: Settings, engine: Engine, client: httpx.AsyncClient
) -> None:
    from crmsync.alerts import MAPPING_MISMATCH, AlertMonitor
    from crmsync.domain import Direction
    from crmsync.store import status
    from crmsync.store.db import write_transaction
    from crmsync.store.types import utcnow

    monitor = AlertMonitor(engine, mapped, mapped.object_specs())
    assert await monitor.check() == []
    with write_transaction(engine) as conn:
        status.pause_unusable(
            conn, "event_registration", Direction.TO_CRM, "0x0", "Could not find ...", utcnow()
        )
    [event] = await monitor.check()
    assert (event.kind, event.alert, event.object) == (
        "alert",
        MAPPING_MISMATCH,
        "event_registration",
    )
    assert "no longer matches its mapping" in event.payload()["message"]
    body = (await client.get("/api/v1/sync/status")).json()
    [pause] = body["paused"]
    assert pause["object"] == "event_registration" and "crmsync mapping check" in pause["reason"]
    resumed = await client.post("/api/v1/sync/resume", json={"object": "event_registration"})
    assert resumed.status_code == 200 and resumed.json()["paused"] == []
    [event] = await monitor.check()
    assert event.kind == "recovered"


async def test_openapi_describes_each_objects_fields_and_paths(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    fields = schemas["EventRegistrationFields"]
    assert fields["additionalProperties"] is False
    props = fields["properties"]

    def first(name: str) -> dict[str, Any]:
        return dict(props[name]["anyOf"][0])

    assert first("name") == {"type": "string", "pattern": "^[^\\u0000]*$", "maxLength": 20}
    assert first("attended") == {"type": "boolean"}
    assert first("registered")["format"] == "date-time"
    assert props["fee"]["anyOf"][1]["pattern"] == "^-?[0-9]{1,12}(\\.[0-9]{1,2})?$"
    assert first("kind") == {"enum": ["talk", "workshop"]}
    assert first("contact_id")["type"] == "integer" and first("contact_id")["minimum"] == 1
    assert {"type": "null"} in props["kind"]["anyOf"]
    lead = schemas["LeadFields"]["properties"]
    assert lead["lead_score"]["anyOf"][0]["maximum"] == 2**31 - 1
    assert lead["email"]["anyOf"][0]["format"] == "email"
    # Each object's routes, with its own body and answer.
    post = doc["paths"]["/api/v1/records/event_registration"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EventRegistrationFields"}
    answer = post["responses"]["201"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/EventRegistrationRecord"}
    assert not [p for p in post.get("parameters", []) if p["name"] == "object"]
    page = doc["paths"]["/api/v1/records/lead"]["get"]["responses"]["200"]
    assert page["content"]["application/json"]["schema"]["$ref"].endswith("/LeadPage")
    # The record as read back matches its schema's form: a decimal as exact text.
    created = await client.post("/api/v1/records/event_registration", json={"fee": 12.5})
    assert created.json()["fee"] == "12.50"
