# ruff: noqa: E501
"""Message discovery: sdkmessagefilters (bulk-message probes, reference section 4) and
RetrieveAvailableLanguages."""

from __future__ import annotations

from dvclient import Dv, error


async def test_sdkmessagefilters_probe(dv: Dv) -> None:
    flt = (
        "(sdkmessageid/name eq 'CreateMultiple' or sdkmessageid/name eq 'UpdateMultiple')"
        " and primaryobjecttypecode eq 'lead'"
    )
    r = await dv.get(
        f"sdkmessagefilters?$select=sdkmessagefilterid&$expand=sdkmessageid($select=name)&$filter={flt}"
    )
    assert r.status_code == 200, r.text
    rows = r.json()["value"]
    assert sorted(row["sdkmessageid"]["name"] for row in rows) == [
        "CreateMultiple",
        "UpdateMultiple",
    ]
    assert all(set(row) == {"sdkmessagefilterid", "sdkmessageid"} for row in rows)
    plain = await dv.get("sdkmessagefilters?$filter=primaryobjecttypecode eq 'systemuser'&$top=2")
    rows = plain.json()["value"]
    assert len(rows) == 2 and "sdkmessageid" not in rows[0] and rows[0]["isvisible"] is True
    bulk = await dv.get(
        "sdkmessagefilters?$filter=primaryobjecttypecode eq 'systemuser' and sdkmessageid/name eq 'CreateMultiple'"
    )
    assert bulk.json()["value"] == []


async def test_sdkmessagefilters_refuses_what_it_does_not_run(dv: Dv) -> None:
    assert error(await dv.get("sdkmessagefilters?$filter=nope eq 1"))[0] == 400
    assert error(await dv.get("sdkmessagefilters?$orderby=name"))[0] == 400
    assert error(await dv.get("sdkmessagefilters?$top=x"))[0] == 400
    assert error(await dv.req("POST", "sdkmessagefilters", json={}))[0] == 404


async def test_retrieve_available_languages(dv: Dv) -> None:
    r = await dv.get("RetrieveAvailableLanguages")
    assert r.status_code == 200 and r.json()["LocaleIds"] == [1033]
    assert r.json()["@odata.context"].endswith(
        "#Microsoft.Dynamics.CRM.RetrieveAvailableLanguagesResponse"
    )
