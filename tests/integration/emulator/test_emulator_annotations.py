"""Prefer: odata.include-annotations adds formatted values and lookup annotations
(compose-http-requests-handle-errors.md, query/select-columns.md), and says so in
Preference-Applied; without it rows carry no annotation."""

from __future__ import annotations

import re

from dvclient import Dv

FV = "@OData.Community.Display.V1.FormattedValue"
ALL = 'odata.include-annotations="*"'


async def _contact(dv: Dv) -> tuple[str, str]:
    account = await dv.create("accounts", {"name": "Contoso"})
    contact = await dv.create(
        "contacts",
        {
            "lastname": "Ng",
            "new_synctomkto": True,
            "parentcustomerid_account@odata.bind": f"/accounts({account['accountid']})",
        },
    )
    return account["accountid"], contact["contactid"]


async def test_all_annotations_on_a_collection(dv: Dv) -> None:
    account_id, _ = await _contact(dv)
    r = await dv.req(
        "GET",
        "contacts?$select=lastname,new_synctomkto,_parentcustomerid_value,createdon,firstname",
        {"Prefer": ALL},
    )
    assert r.status_code == 200
    assert r.headers["Preference-Applied"] == ALL
    (row,) = r.json()["value"]
    assert row["new_synctomkto" + FV] == "Yes"
    assert row["_parentcustomerid_value" + FV] == "Contoso"
    assert row["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert (
        row["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"]
        == "parentcustomerid_account"
    )
    assert row["_parentcustomerid_value"] == account_id
    assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2} [AP]M", row["createdon" + FV])
    assert "firstname" + FV not in row and "lastname" + FV not in row  # nulls and plain text
    keys = list(row)
    # An annotation precedes its property.
    assert keys.index("_parentcustomerid_value" + FV) < keys.index("_parentcustomerid_value")


async def test_named_annotations_only_and_none_by_default(dv: Dv) -> None:
    _, contact_id = await _contact(dv)
    lead = await dv.create("leads", {"lastname": "L", "leadqualitycode": 2})
    prefer = 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'
    r = await dv.req("GET", f"leads({lead['leadid']})?$select=leadqualitycode", {"Prefer": prefer})
    assert r.json()["leadqualitycode" + FV] == "Warm"
    assert r.headers["Preference-Applied"] == prefer
    r = await dv.req(
        "GET",
        f"contacts({contact_id})?$select=_parentcustomerid_value",
        {"Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.*"'},
    )
    body = r.json()
    assert "_parentcustomerid_value" + FV not in body
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    plain = await dv.get(f"contacts({contact_id})")
    assert not any("@" in k[1:] for k in plain.json() if not k.startswith("@odata"))
    assert "Preference-Applied" not in plain.headers


async def test_annotations_with_representation_and_other_preferences(dv: Dv) -> None:
    r = await dv.req(
        "POST",
        "leads",
        {"Prefer": f"return=representation,{ALL}"},
        json={"lastname": "R", "leadqualitycode": 1},
    )
    assert r.status_code == 201 and r.json()["leadqualitycode" + FV] == "Hot"
    etag = r.headers["ETag"]
    lead_id = r.json()["leadid"]
    # Never 304 with include-annotations (perform-conditional-operations-using-web-api.md).
    again = await dv.req("GET", f"leads({lead_id})", {"Prefer": ALL, "If-None-Match": etag})
    assert again.status_code == 200
    assert (await dv.req("GET", f"leads({lead_id})", {"If-None-Match": etag})).status_code == 304
    r = await dv.req(
        "PATCH",
        f"leads({lead_id})",
        {"Prefer": f"return=representation,{ALL}"},
        json={"leadqualitycode": 3},
    )
    assert r.status_code == 200 and r.json()["leadqualitycode" + FV] == "Cold"
    r = await dv.req("GET", "leads", {"Prefer": f"odata.maxpagesize=1,{ALL}"})
    assert r.headers["Preference-Applied"] == f"{ALL},odata.maxpagesize=1"


async def test_formatted_values_on_fetchxml_rows(dv: Dv) -> None:
    from urllib.parse import quote

    await dv.create("leads", {"lastname": "F", "leadqualitycode": 3})
    xml = "<fetch><entity name='lead'><attribute name='leadqualitycode'/></entity></fetch>"
    r = await dv.req("GET", f"leads?fetchXml={quote(xml)}", {"Prefer": ALL})
    assert r.json()["value"][0]["leadqualitycode" + FV] == "Cold"


async def test_annotations_on_expanded_rows(dv: Dv) -> None:
    await _contact(dv)
    r = await dv.req(
        "GET",
        "accounts?$select=name&$expand=contact_customer_accounts($select=new_synctomkto)",
        {"Prefer": ALL},
    )
    (account,) = r.json()["value"]
    (contact,) = account["contact_customer_accounts"]
    assert contact["new_synctomkto" + FV] == "Yes"
    r = await dv.req(
        "GET",
        "contacts?$select=lastname&$expand=parentcustomerid_account($select=createdon)",
        {"Prefer": ALL},
    )
    assert "createdon" + FV in r.json()["value"][0]["parentcustomerid_account"]
