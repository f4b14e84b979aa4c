"""The service root: service document, $metadata CSDL, RetrieveTotalRecordCount, and
/api/data/v9.0/ and /v9.1/ served as v9.2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest
from dvclient import Dv, batch_body, batch_json_parts, error, http_part, send_batch

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


async def test_service_document_lists_the_entity_sets(dv: Dv) -> None:
    for path in ("/api/data/v9.2/", "/api/data/v9.2"):
        r = await dv.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["@odata.context"] == "https://org.test/api/data/v9.2/$metadata"
        names = {v["name"] for v in body["value"]}
        assert {
            "leads",
            "contacts",
            "accounts",
            "opportunities",
            "systemusers",
            "EntityDefinitions",
        } <= names
        assert all(v["kind"] == "EntitySet" and v["url"] == v["name"] for v in body["value"])


async def test_metadata_document_is_csdl(dv: Dv) -> None:
    r = await dv.get("$metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    schema = root.find(f"{{http://docs.oasis-open.org/odata/ns/edmx}}DataServices/{EDM}Schema")
    assert schema is not None and schema.get("Namespace") == "Microsoft.Dynamics.CRM"
    types = {t.get("Name"): t for t in schema.findall(f"{EDM}EntityType")}
    contact = types["contact"]
    assert contact.find(f"{EDM}Key/{EDM}PropertyRef").get("Name") == "contactid"
    props = {p.get("Name"): p.get("Type") for p in contact.findall(f"{EDM}Property")}
    assert (
        props["_parentcustomerid_value"] == "Edm.Guid"
        and props["createdon"] == "Edm.DateTimeOffset"
    )
    assert contact.find(f"{EDM}Property[@Name='lastname']").get("MaxLength") == "50"
    nav = contact.find(f"{EDM}NavigationProperty[@Name='parentcustomerid_account']")
    assert nav.get("Type") == "mscrm.account"
    assert nav.find(f"{EDM}ReferentialConstraint").get("Property") == "_parentcustomerid_value"
    back = types["account"].find(f"{EDM}NavigationProperty[@Name='contact_customer_accounts']")
    assert back.get("Type") == "Collection(mscrm.contact)"
    sets = {
        s.get("Name"): s.get("EntityType")
        for s in schema.findall(f"{EDM}EntityContainer/{EDM}EntitySet")
    }
    assert sets["leads"] == "Microsoft.Dynamics.CRM.lead"
    assert "ChangeTracking" not in r.text
    annotated = await dv.get("$metadata?annotations=true")
    assert 'Target="Microsoft.Dynamics.CRM.System/leads"' in annotated.text
    assert "Org.OData.Capabilities.V1.ChangeTracking" in annotated.text


async def test_retrieve_total_record_count(dv: Dv) -> None:
    await dv.create("leads", {"lastname": "a"})
    await dv.create("leads", {"lastname": "b"})
    names = quote(json.dumps(["lead", "account"]))
    r = await dv.get(f"RetrieveTotalRecordCount(EntityNames=@p1)?@p1={names}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith(
        "#Microsoft.Dynamics.CRM.RetrieveTotalRecordCountResponse"
    )
    assert body["EntityRecordCountCollection"] == {
        "Count": 2,
        "IsReadOnly": False,
        "Keys": ["lead", "account"],
        "Values": [2, 0],
    }
    inline = await dv.get("RetrieveTotalRecordCount(EntityNames=['contact'])")
    assert inline.json()["EntityRecordCountCollection"]["Values"] == [0]
    assert (await dv.get("RetrieveTotalRecordCount(EntityNames=['widget'])")).status_code == 404
    assert (await dv.get("RetrieveTotalRecordCount(EntityNames=nope)")).status_code == 400


@pytest.mark.parametrize("version", ["v9.0", "v9.1"])
async def test_older_versions_are_served_as_v9_2(dv: Dv, version: str) -> None:
    root = f"/api/data/{version}/"
    r = await dv.req("POST", root + "leads", json={"lastname": "Old"})
    assert r.status_code == 204
    assert r.headers["OData-EntityId"].startswith(f"https://org.test{root}leads(")
    got = await dv.get(root + "leads?$select=lastname")
    assert got.json()["@odata.context"] == f"https://org.test{root}$metadata#leads(lastname,leadid)"
    assert [x["lastname"] for x in got.json()["value"]] == ["Old"]
    body = batch_body(
        "batch_1",
        [
            http_part(
                "GET", f"https://org.test{root}leads?$select=lastname&$filter=lastname eq 'Old'"
            )
        ],
    )
    r = await dv.req(
        "POST", root + "$batch", {"Content-Type": "multipart/mixed; boundary=batch_1"}, content=body
    )
    assert [x["lastname"] for x in batch_json_parts(r.text)[0]["value"]] == ["Old"]
    assert (await dv.get("/api/data/v9.3/leads")).status_code == 404
    assert (await dv.get("/api/data/v8.2/leads")).status_code == 404


async def test_unknown_service_root_paths(dv: Dv) -> None:
    assert error(await dv.get("$metadata/extra"))[0] == 404
    r = await send_batch(
        dv, batch_body("batch_1", [http_part("GET", "https://org.test/api/data/v9.2/")])
    )
    assert r.status_code == 200 and batch_json_parts(r.text)[0]["value"][0]["kind"] == "EntitySet"
