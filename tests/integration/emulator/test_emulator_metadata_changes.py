# ruff: noqa: E501
"""RetrieveMetadataChanges (an EntityQueryExpression, as Microsoft's SDK sends it for typed
columns) and RetrieveAllEntities."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from dvclient import Dv, error


def eq(name: str, value: str) -> dict:
    return {
        "PropertyName": name,
        "ConditionOperator": "Equals",
        "Value": {"Type": "System.String", "Value": value},
    }


async def changes(dv: Dv, query: dict, stamp: str | None = None):
    url = f"RetrieveMetadataChanges(Query=@p1)?@p1={quote(json.dumps(query))}"
    if stamp:
        url = f"RetrieveMetadataChanges(Query=@p1,ClientVersionStamp=@p2)?@p1={quote(json.dumps(query))}&@p2='{quote(stamp)}'"
    return await dv.get(url)


async def test_typed_columns_in_one_request(dv: Dv) -> None:
    query = {
        "Properties": {"PropertyNames": ["LogicalName", "Attributes"]},
        "Criteria": {"Conditions": [eq("LogicalName", "lead")]},
        "AttributeQuery": {
            "Properties": {
                "PropertyNames": ["LogicalName", "AttributeType", "MaxLength", "MinValue"]
            }
        },
    }
    r = await changes(dv, query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith(
        "#Microsoft.Dynamics.CRM.RetrieveMetadataChangesResponse"
    )
    (lead,) = body["EntityMetadata"]
    assert set(lead) == {"MetadataId", "LogicalName", "Attributes"}
    attrs = {a["LogicalName"]: a for a in lead["Attributes"]}
    assert (
        attrs["subject"]["MaxLength"] == 300
        and attrs["subject"]["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    )
    assert "MaxLength" not in attrs["leadqualitycode"] and attrs["versionnumber"]["MinValue"] == -(
        2**63
    )
    query["AttributeQuery"]["Criteria"] = {"Conditions": [eq("LogicalName", "firstname")]}
    (lead,) = (await changes(dv, query)).json()["EntityMetadata"]
    assert [a["LogicalName"] for a in lead["Attributes"]] == ["firstname"]
    # Nothing has changed since the stamp the server handed out.
    again = await changes(dv, query, body["ServerVersionStamp"])
    assert again.json()["EntityMetadata"] == []


async def test_criteria_operators_and_errors(dv: Dv) -> None:
    query = {
        "Properties": {"PropertyNames": ["LogicalName"]},
        "Criteria": {
            "FilterOperator": "Or",
            "Conditions": [
                eq("LogicalName", "contact"),
                {
                    "PropertyName": "ObjectTypeCode",
                    "ConditionOperator": "In",
                    "Value": {"Type": "System.Int32[]", "Value": [1, 3]},
                },
            ],
        },
    }
    rows = (await changes(dv, query)).json()["EntityMetadata"]
    assert sorted(r["LogicalName"] for r in rows) == ["account", "contact", "opportunity"]
    assert all("Attributes" not in r for r in rows)
    bad = {
        "Criteria": {
            "Conditions": [
                {"PropertyName": "LogicalName", "ConditionOperator": "Sounds", "Value": "x"}
            ]
        }
    }
    assert error(await changes(dv, bad))[0] == 400
    assert error(await dv.get("RetrieveMetadataChanges(Query=@p1)?@p1=notjson"))[0] == 400


async def test_retrieve_all_entities(dv: Dv) -> None:
    r = await dv.get(
        "RetrieveAllEntities(EntityFilters=@p1,RetrieveAsIfPublished=@p2)?@p1=Microsoft.Dynamics.CRM.EntityFilters'Entity'&@p2=false"
    )
    assert r.status_code == 200, r.text
    rows = r.json()["EntityMetadata"]
    assert {x["LogicalName"] for x in rows} >= {"lead", "contact"} and "Attributes" not in rows[0]
    r = await dv.get(
        "RetrieveAllEntities(EntityFilters=@p1,RetrieveAsIfPublished=@p2)?@p1=Microsoft.Dynamics.CRM.EntityFilters'Entity,Attributes'&@p2=false"
    )
    assert any(
        a["LogicalName"] == "emailaddress1" for a in r.json()["EntityMetadata"][0]["Attributes"]
    )
    assert (
        error(
            await dv.get(
                "RetrieveAllEntities(EntityFilters=@p1)?@p1=Microsoft.Dynamics.CRM.EntityFilters'Nope'"
            )
        )[0]
        == 400
    )


@pytest.mark.parametrize(
    ("filters", "with_attributes"),
    [
        ("1", False),
        ("3", True),
        ("15", True),
        ("Microsoft.Dynamics.CRM.EntityFilters'2'", True),
        ("Microsoft.Dynamics.CRM.EntityFilters'Default'", False),
    ],
)
async def test_retrieve_all_entities_takes_the_flags_value(
    dv: Dv, filters: str, with_attributes: bool
) -> None:
    """OData's ABNF allows an enum member's integer value (``enumMemberValue``);
    dynamics-client sends ``EntityFilters=1``. Dataverse's flags: Entity 1, Attributes 2,
    Privileges 4, Relationships 8, All 15 (EntityFilters EnumType)."""
    r = await dv.get(f"RetrieveAllEntities(EntityFilters={filters},RetrieveAsIfPublished=false)")
    assert r.status_code == 200, r.text
    contact = next(x for x in r.json()["EntityMetadata"] if x["LogicalName"] == "contact")
    assert ("Attributes" in contact) is with_attributes


@pytest.mark.parametrize("filters", ["0", "16", "-1", "Microsoft.Dynamics.CRM.EntityFilters'32'"])
async def test_retrieve_all_entities_refuses_what_is_no_combination(dv: Dv, filters: str) -> None:
    r = await dv.get(f"RetrieveAllEntities(EntityFilters={filters},RetrieveAsIfPublished=false)")
    assert error(r)[0] == 400


async def test_retrieve_entity_by_name_or_metadata_id(dv: Dv) -> None:
    """RetrieveEntity's documented parameters: EntityFilters, LogicalName, MetadataId,
    RetrieveAsIfPublished; the name wins, an empty name looks the MetadataId up."""
    url = "RetrieveEntity(EntityFilters={f},LogicalName='{n}',MetadataId={m},RetrieveAsIfPublished=false)"
    nothing = "00000000-0000-0000-0000-000000000000"
    r = await dv.get(url.format(f=1, n="contact", m=nothing))
    assert r.status_code == 200, r.text
    only = r.json()["EntityMetadata"]
    assert only["LogicalName"] == "contact" and "Attributes" not in only
    r = await dv.get(
        url.format(f="Microsoft.Dynamics.CRM.EntityFilters'Attributes'", n="", m=only["MetadataId"])
    )
    assert r.status_code == 200, r.text
    found = r.json()["EntityMetadata"]
    assert found["LogicalName"] == "contact"
    assert "lastname" in {a["LogicalName"] for a in found["Attributes"]}
    assert error(await dv.get(url.format(f=1, n="widget", m=nothing)))[0] == 404
    assert error(await dv.get(url.format(f=1, n="", m=nothing)))[0] == 404
    assert error(await dv.get(url.format(f=16, n="contact", m=nothing)))[0] == 400
