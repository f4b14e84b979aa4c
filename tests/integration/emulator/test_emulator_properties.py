"""Single-property endpoints and the named primary-key form (retrieve-entity-using-web-api.md,
update-delete-entities-using-web-api.md)."""

from __future__ import annotations

from dvclient import Dv, error


async def test_get_put_delete_one_property(dv: Dv) -> None:
    lead = await dv.create(
        "leads", {"lastname": "Old", "leadqualitycode": 1, "new_synctomkto": True}
    )
    lead_id, etag = lead["leadid"], lead["@odata.etag"]
    r = await dv.get(f"leads({lead_id})/lastname")
    assert r.status_code == 200
    assert r.json() == {
        "@odata.context": f"https://org.test/api/data/v9.2/$metadata#leads({lead_id})/lastname",
        "value": "Old",
    }
    raw = await dv.get(f"leads({lead_id})/lastname/$value")
    assert (raw.status_code, raw.text, raw.headers["content-type"]) == (200, "Old", "text/plain")
    assert (await dv.get(f"leads({lead_id})/new_synctomkto/$value")).text == "true"
    assert (await dv.get(f"leads({lead_id})/leadqualitycode/$value")).text == "1"
    assert (await dv.get(f"leads({lead_id})/firstname")).status_code == 204  # null
    r = await dv.req("PUT", f"leads({lead_id})/lastname", json={"value": "New"})
    assert r.status_code == 204
    row = (await dv.get(f"leads({lead_id})")).json()
    assert row["lastname"] == "New" and row["fullname"] == "New" and row["@odata.etag"] != etag
    assert (await dv.req("DELETE", f"leads({lead_id})/lastname")).status_code == 204
    assert (await dv.get(f"leads({lead_id})")).json()["lastname"] is None
    # A PUT is validated like any write.
    r = await dv.req("PUT", f"leads({lead_id})/lastname", json={"value": "x" * 51})
    assert error(r)[:2] == (400, "0x80044331")
    r = await dv.req("PUT", f"leads({lead_id})/leadqualitycode", json={"value": 9})
    assert error(r)[:2] == (400, "0x8004431a")


async def test_property_errors(dv: Dv) -> None:
    account = await dv.create("accounts", {"name": "A"})
    contact = await dv.create(
        "contacts",
        {
            "lastname": "C",
            "parentcustomerid_account@odata.bind": f"/accounts({account['accountid']})",
        },
    )
    cid = contact["contactid"]
    assert (await dv.get(f"contacts({cid})/_parentcustomerid_value")).json()["value"] == account[
        "accountid"
    ]
    assert error(await dv.get(f"contacts({cid})/nope"))[:2] == (404, "0x8006088a")
    assert error(await dv.get(f"contacts({cid})/lastname/extra"))[0] == 404
    missing = "00000000-0000-0000-0000-000000000001"
    assert error(await dv.get(f"contacts({missing})/lastname"))[:2] == (404, "0x80040217")
    for path in ("_parentcustomerid_value", "contactid", "createdon"):
        r = await dv.req("PUT", f"contacts({cid})/{path}", json={"value": None})
        assert error(r)[:2] == (400, "0x80048d19"), path
    assert error(await dv.req("PUT", f"contacts({cid})/lastname", json={"lastname": "x"}))[0] == 400
    assert error(await dv.req("PUT", f"contacts({cid})/lastname", content=b"{oops"))[0] == 400
    assert error(await dv.req("PATCH", f"contacts({cid})/lastname", json={"value": "x"}))[0] == 404


async def test_named_primary_key_form(dv: Dv) -> None:
    lead = await dv.create("leads", {"lastname": "Named"})
    lead_id = lead["leadid"]
    r = await dv.get(f"leads(leadid={lead_id.upper()})?$select=lastname")
    assert r.status_code == 200 and r.json()["lastname"] == "Named"
    assert (
        await dv.req("PATCH", f"leads(leadid={lead_id})", json={"firstname": "N"})
    ).status_code == 204
    assert (await dv.get(f"leads(leadid={lead_id})/firstname")).json()["value"] == "N"
    assert (await dv.req("DELETE", f"leads(leadid={lead_id})")).status_code == 204
    r = await dv.get(f"leads(contactid={lead_id})")
    assert error(r)[:2] == (400, "0x80060891")
