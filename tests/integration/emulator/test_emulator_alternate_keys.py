# ruff: noqa: E501
"""Alternate keys declared in the emulator's config (use-upsert-insert-update-record.md,
reference sections 3 and 5)."""

from __future__ import annotations

import httpx
import pytest
from dvclient import Dv, error

ROOT = "https://org.test/api/data/v9.2/"


@pytest.fixture
async def keyed(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/_emulator/config",
        json={
            "alternate_keys": {
                "leads": [["emailaddress1"]],
                "accounts": [["name", "accountnumber"]],
            }
        },
    )
    assert r.status_code == 200, r.text


async def test_key_not_defined_until_declared(dv: Dv, client: httpx.AsyncClient) -> None:
    status, code, message = error(await dv.get("leads(emailaddress1='a@b.c')"))
    assert (status, code) == (400, "0x80060891") and "not defined as an alternate key" in message
    assert (await dv.get("EntityDefinitions(LogicalName='lead')/Keys")).json()["value"] == []
    for bad in (
        {"leads": [["nope"]]},
        {"widgets": [["x"]]},
        {"leads": [[]]},
        {"contacts": [["parentcustomerid"]]},
        {"leads": [["leadid"]]},
    ):
        assert (
            await client.put("/_emulator/config", json={"alternate_keys": bad})
        ).status_code == 400


async def test_get_patch_delete_by_key(dv: Dv, keyed: None) -> None:
    r = await dv.req("PATCH", "leads(emailaddress1='ann@example.com')", json={"lastname": "Ann"})
    assert r.status_code == 204, r.text
    assert r.headers["OData-EntityId"] == f"{ROOT}leads(emailaddress1='ann@example.com')"
    got = await dv.get("leads(emailaddress1='ANN@example.com')?$select=lastname,emailaddress1")
    assert got.status_code == 200
    assert (got.json()["lastname"], got.json()["emailaddress1"]) == ("Ann", "ann@example.com")
    lead_id = got.json()["leadid"]
    # Upsert that finds the row: an update; the key column in the body is ignored.
    r = await dv.req(
        "PATCH",
        "leads(emailaddress1='ann@example.com')",
        {"Prefer": "return=representation"},
        json={"firstname": "A", "emailaddress1": "other@example.com"},
    )
    assert r.status_code == 200 and r.json()["leadid"] == lead_id
    assert r.json()["emailaddress1"] == "ann@example.com" and r.json()["firstname"] == "A"
    # Upsert that finds none creates with the URL's key values unless the body sets them.
    r = await dv.req(
        "PATCH",
        "leads(emailaddress1='bo@example.com')",
        {"Prefer": "return=representation"},
        json={"lastname": "Bo"},
    )
    assert r.status_code == 201 and r.json()["emailaddress1"] == "bo@example.com"
    r = await dv.req(
        "PATCH", "leads(emailaddress1='x@example.com')", {"If-Match": "*"}, json={"lastname": "X"}
    )
    assert r.status_code == 404  # update-only finds nothing
    assert (await dv.req("DELETE", "leads(emailaddress1='bo@example.com')")).status_code == 204
    status, code, message = error(await dv.get("leads(emailaddress1='bo@example.com')"))
    assert (status, code) == (404, "0x80060891") and "does not exist in lead entity" in message
    assert error(await dv.req("DELETE", "leads(emailaddress1='bo@example.com')"))[0] == 404
    # Composite keys name every column.
    r = await dv.req("PATCH", "accounts(name='Acme',accountnumber='A-1')", json={"telephone1": "1"})
    assert r.status_code == 204
    assert (await dv.get("accounts(accountnumber='A-1',name='acme')")).json()["telephone1"] == "1"
    assert error(await dv.get("accounts(name='Acme')"))[:2] == (400, "0x80060891")


async def test_duplicate_key_is_412(dv: Dv, keyed: None) -> None:
    await dv.create("leads", {"lastname": "One", "emailaddress1": "dup@example.com"})
    r = await dv.req("POST", "leads", json={"lastname": "Two", "emailaddress1": "DUP@example.com"})
    status, code, message = error(r)
    assert (status, code) == (412, "0x80060892")
    assert (
        message
        == "Entity Key lead_emailaddress1_key violated. A record with the same value for emailaddress1 already exists"
    )
    two = await dv.create("leads", {"lastname": "Two", "emailaddress1": "two@example.com"})
    r = await dv.req("PATCH", f"leads({two['leadid']})", json={"emailaddress1": "dup@example.com"})
    assert error(r)[:2] == (412, "0x80060892")
    # Rows without the key's value are not checked against each other (inferred).
    await dv.create("leads", {"lastname": "NoMail1"})
    await dv.create("leads", {"lastname": "NoMail2"})


async def test_upsert_multiple_by_key_and_metadata(dv: Dv, keyed: None) -> None:
    await dv.create("leads", {"lastname": "Old", "emailaddress1": "old@example.com"})
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.UpsertMultiple",
        json={
            "Targets": [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.lead",
                    "@odata.id": "leads(emailaddress1='old@example.com')",
                    "lastname": "Updated",
                },
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.lead",
                    "@odata.id": "leads(emailaddress1='new@example.com')",
                    "lastname": "New",
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert [x["RecordCreated"] for x in r.json()["Results"]] == [False, True]
    rows = (await dv.get("leads?$select=lastname,emailaddress1&$orderby=lastname")).json()["value"]
    assert [(x["lastname"], x["emailaddress1"]) for x in rows] == [
        ("New", "new@example.com"),
        ("Updated", "old@example.com"),
    ]
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.UpdateMultiple",
        json={
            "Targets": [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.lead",
                    "@odata.id": "leads(emailaddress1='none@example.com')",
                    "lastname": "X",
                }
            ]
        },
    )
    assert error(r)[:2] == (404, "0x80060891")
    (key,) = (await dv.get("EntityDefinitions(LogicalName='lead')/Keys")).json()["value"]
    assert (key["LogicalName"], key["KeyAttributes"], key["EntityLogicalName"]) == (
        "lead_emailaddress1_key",
        ["emailaddress1"],
        "lead",
    )
