"""$ref: associate and disassociate (associate-disassociate-entities-using-web-api.md)."""

from __future__ import annotations

from dvclient import Dv, error

ROOT = "https://org.test/api/data/v9.2/"


async def test_single_valued_ref(dv: Dv) -> None:
    account = (await dv.create("accounts", {"name": "A"}))["accountid"]
    contact = await dv.create("contacts", {"lastname": "C"})
    cid = contact["contactid"]
    r = await dv.req(
        "PUT",
        f"contacts({cid})/parentcustomerid_account/$ref",
        json={"@odata.id": f"{ROOT}accounts({account})"},
    )
    assert r.status_code == 204, r.text
    row = (await dv.get(f"contacts({cid})")).json()
    assert (
        row["_parentcustomerid_value"] == account and row["@odata.etag"] != contact["@odata.etag"]
    )
    ref = (await dv.get(f"contacts({cid})/parentcustomerid_account/$ref")).json()
    assert ref == {
        "@odata.context": f"{ROOT}$metadata#$ref",
        "@odata.id": f"{ROOT}accounts({account})",
    }
    assert (
        await dv.req("DELETE", f"contacts({cid})/parentcustomerid_account/$ref")
    ).status_code == 204
    assert (await dv.get(f"contacts({cid})")).json()["_parentcustomerid_value"] is None
    assert (await dv.get(f"contacts({cid})/parentcustomerid_account/$ref")).status_code == 204
    # A relative @odata.id works too; a reference to the wrong table or a missing row fails.
    r = await dv.req(
        "PUT",
        f"contacts({cid})/parentcustomerid_account/$ref",
        json={"@odata.id": f"accounts({account})"},
    )
    assert r.status_code == 204
    r = await dv.req(
        "PUT",
        f"contacts({cid})/parentcustomerid_account/$ref",
        json={"@odata.id": f"leads({account})"},
    )
    assert error(r)[:2] == (400, "0x80048d19")
    missing = "00000000-0000-0000-0000-0000000000aa"
    r = await dv.req(
        "PUT",
        f"contacts({cid})/parentcustomerid_account/$ref",
        json={"@odata.id": f"accounts({missing})"},
    )
    assert error(r)[:2] == (404, "0x80040217")
    r = await dv.req(
        "PUT", f"contacts({cid})/createdby/$ref", json={"@odata.id": f"systemusers({missing})"}
    )
    assert error(r)[0] == 400


async def test_collection_valued_ref(dv: Dv) -> None:
    account = (await dv.create("accounts", {"name": "A"}))["accountid"]
    other = (await dv.create("accounts", {"name": "B"}))["accountid"]
    c1 = (await dv.create("contacts", {"lastname": "One"}))["contactid"]
    c2 = (await dv.create("contacts", {"lastname": "Two"}))["contactid"]
    for cid in (c1, c2):
        r = await dv.req(
            "POST",
            f"accounts({account})/contact_customer_accounts/$ref",
            json={"@odata.id": f"{ROOT}contacts({cid})"},
        )
        assert r.status_code == 204, r.text
    refs = (await dv.get(f"accounts({account})/contact_customer_accounts/$ref")).json()["value"]
    assert sorted(x["@odata.id"] for x in refs) == sorted(f"{ROOT}contacts({c})" for c in (c1, c2))
    r = await dv.req("DELETE", f"accounts({account})/contact_customer_accounts({c1})/$ref")
    assert r.status_code == 204
    r = await dv.req(
        "DELETE", f"accounts({account})/contact_customer_accounts/$ref?$id={ROOT}contacts({c2})"
    )
    assert r.status_code == 204
    assert (await dv.get(f"accounts({account})/contact_customer_accounts")).json()["value"] == []
    # Disassociating a contact that is not associated with that account is a 404.
    await dv.req(
        "POST",
        f"accounts({other})/contact_customer_accounts/$ref",
        json={"@odata.id": f"contacts({c1})"},
    )
    r = await dv.req("DELETE", f"accounts({account})/contact_customer_accounts({c1})/$ref")
    assert error(r)[0] == 404
    assert (await dv.get(f"contacts({c1})")).json()["_parentcustomerid_value"] == other
    assert (
        error(
            await dv.req(
                "POST", f"accounts({account})/contact_customer_accounts/$ref", content=b"{}"
            )
        )[0]
        == 400
    )
    assert error(await dv.get(f"contacts({c1})/lastname/$ref"))[0] == 404
