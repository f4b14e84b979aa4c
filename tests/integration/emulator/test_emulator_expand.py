# ruff: noqa: E501
"""$expand on records and collection-valued navigation paths (webapi/query/join-tables.md)."""

from __future__ import annotations

import pytest
from dvclient import Dv, error


@pytest.fixture
async def graph(dv: Dv) -> dict[str, str]:
    acme = (await dv.create("accounts", {"name": "Acme"}))["accountid"]
    empty = (await dv.create("accounts", {"name": "Empty"}))["accountid"]
    ids = {"acme": acme, "empty": empty}
    for last in ("Cole", "Ames", "Baker"):
        row = await dv.create(
            "contacts",
            {"lastname": last, "parentcustomerid_account@odata.bind": f"/accounts({acme})"},
        )
        ids[last] = row["contactid"]
    ids["orphan"] = (await dv.create("contacts", {"lastname": "Orphan"}))["contactid"]
    await dv.create(
        "opportunities", {"name": "Deal", "parentaccountid@odata.bind": f"/accounts({acme})"}
    )
    return ids


async def test_single_valued_expand(dv: Dv, graph: dict[str, str]) -> None:
    r = await dv.get(
        "contacts?$select=lastname&$expand=parentcustomerid_account($select=name)&$orderby=lastname"
    )
    assert r.status_code == 200, r.text
    rows = r.json()["value"]
    assert [(x["lastname"], (x["parentcustomerid_account"] or {}).get("name")) for x in rows] == [
        ("Ames", "Acme"),
        ("Baker", "Acme"),
        ("Cole", "Acme"),
        ("Orphan", None),
    ]
    acme = rows[0]["parentcustomerid_account"]
    assert set(acme) == {"@odata.etag", "name", "accountid"} and acme["accountid"] == graph["acme"]
    r = await dv.get(
        f"contacts({graph['Ames']})?$select=lastname&$expand=createdby($select=fullname)"
    )
    assert r.json()["createdby"]["fullname"] == "# app-1"


async def test_collection_valued_expand_with_nested_options(dv: Dv, graph: dict[str, str]) -> None:
    r = await dv.get(
        "accounts?$select=name&$orderby=name&$expand=contact_customer_accounts($select=lastname;$filter=lastname ne 'Cole';$orderby=lastname desc;$top=5),opportunity_parent_account($select=name)"
    )
    assert r.status_code == 200, r.text
    acme, empty = r.json()["value"]
    assert [c["lastname"] for c in acme["contact_customer_accounts"]] == ["Baker", "Ames"]
    assert [o["name"] for o in acme["opportunity_parent_account"]] == ["Deal"]
    assert empty["contact_customer_accounts"] == [] and empty["opportunity_parent_account"] == []
    r = await dv.get(
        f"accounts({graph['acme']})?$expand=contact_customer_accounts($top=1;$orderby=lastname)"
    )
    assert [c["lastname"] for c in r.json()["contact_customer_accounts"]] == ["Ames"]


async def test_navigation_paths(dv: Dv, graph: dict[str, str]) -> None:
    r = await dv.get(
        f"accounts({graph['acme']})/contact_customer_accounts?$select=lastname&$orderby=lastname&$filter=lastname ne 'Baker'"
    )
    assert r.status_code == 200, r.text
    assert [c["lastname"] for c in r.json()["value"]] == ["Ames", "Cole"]
    assert r.json()["@odata.context"].endswith("$metadata#contacts")
    r = await dv.get(f"contacts({graph['Cole']})/parentcustomerid_account?$select=name")
    assert r.json()["name"] == "Acme"
    assert (
        await dv.get(f"contacts({graph['orphan']})/parentcustomerid_account")
    ).status_code == 204
    assert (
        error(
            await dv.req("POST", f"accounts({graph['acme']})/contact_customer_accounts", json={})
        )[0]
        == 404
    )


async def test_expand_errors(dv: Dv, graph: dict[str, str]) -> None:
    cases = [
        ("contacts?$expand=nope", 400, "Could not find a property named 'nope'"),
        ("contacts?$expand=parentcustomerid_account($filter=name eq 'x')", 400, "$filter"),
        (
            "contacts?$expand=parentcustomerid_account($select=nope)",
            400,
            "'nope' on type 'Microsoft.Dynamics.CRM.account'",
        ),
        (
            "accounts?$expand=contact_customer_accounts($expand=parentcustomerid_account)",
            400,
            "$expand",
        ),
        ("accounts?$expand=contact_customer_accounts($top=x)", 400, "$top"),
        ("accounts?$expand=contact_customer_accounts($select=lastname", 400, "Syntax error"),
        ("accounts?$expand=contact_customer_accounts&$foo=1", 400, "$foo"),
    ]
    for path, status, fragment in cases:
        got_status, _, message = error(await dv.get(path))
        assert got_status == status and fragment in message, (path, message)
    r = await dv.req(
        "GET", "contacts?$expand=parentcustomerid_account", {"Prefer": "odata.track-changes"}
    )
    assert (
        error(r)[2]
        == 'The "$expand" query parameter isn\'t supported when Change Tracking is enabled.'
    )
    # Never 304 with $expand (perform-conditional-operations-using-web-api.md).
    row = await dv.get(f"contacts({graph['Ames']})")
    tag = row.headers["ETag"]
    assert (
        await dv.req("GET", f"contacts({graph['Ames']})", {"If-None-Match": tag})
    ).status_code == 304
    r = await dv.req(
        "GET", f"contacts({graph['Ames']})?$expand=parentcustomerid_account", {"If-None-Match": tag}
    )
    assert r.status_code == 200
