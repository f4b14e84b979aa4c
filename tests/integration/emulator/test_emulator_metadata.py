# ruff: noqa: E501  (metadata URLs are easier to read on one line)
"""EntityDefinitions as Dataverse answers them (webapi/query-metadata-web-api.md).

$select, $filter and $expand are honoured or refused, never ignored (issue 17); typed
casts, lookups under their logical name with Targets, relationships and the full
entity row. Keys is empty because the emulated tables define no alternate keys.
"""

from __future__ import annotations

import pytest
from dvclient import Dv, batch_body, batch_json_parts, error, http_part, send_batch


async def values(dv: Dv, path: str) -> list[dict]:
    r = await dv.get(path)
    assert r.status_code == 200, r.text
    return r.json()["value"]


async def test_select_projects_and_keeps_the_key(dv: Dv) -> None:
    rows = await values(dv, "EntityDefinitions?$select=LogicalName,ObjectTypeCode")
    assert {r["LogicalName"] for r in rows} == {
        "lead",
        "contact",
        "account",
        "opportunity",
        "systemuser",
        "asyncoperation",
    }
    assert all(set(r) == {"LogicalName", "ObjectTypeCode", "MetadataId"} for r in rows)
    r = await dv.get("EntityDefinitions?$select=LogicalName")
    assert r.json()["@odata.context"].endswith("$metadata#EntityDefinitions(LogicalName)")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("$filter=LogicalName eq 'contact'", {"contact"}),
        ("$filter=ObjectTypeCode le 2", {"account", "contact"}),
        ("$filter=LogicalName eq 'lead' or EntitySetName eq 'accounts'", {"lead", "account"}),
        ("$filter=IsPrivate eq false and (LogicalName eq 'opportunity')", {"opportunity"}),
        (
            "$filter=ChangeTrackingEnabled eq true and OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'BusinessOwned'",
            {"systemuser"},
        ),
        (
            "$filter=CanChangeTrackingBeEnabled/Value eq true and startswith(LogicalName,'opp')",
            {"opportunity"},
        ),
        ("$filter=LogicalName eq 'nothing'", set()),
    ],
)
async def test_filter_on_any_property(dv: Dv, query: str, expected: set[str]) -> None:
    rows = await values(dv, f"EntityDefinitions?$select=LogicalName&{query}")
    assert {r["LogicalName"] for r in rows} == expected


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        (
            "EntityDefinitions?$filter=Nope eq 1",
            400,
            "Could not find a property named 'Nope' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
        ),
        ("EntityDefinitions?$filter=LogicalName eq", 400, "Syntax error"),
        ("EntityDefinitions?$select=Bogus", 400, "'Bogus'"),
        ("EntityDefinitions?$expand=Widgets", 400, "'Widgets'"),
        (
            "EntityDefinitions?$expand=Attributes($select=Nope)",
            400,
            "on type 'Microsoft.Dynamics.CRM.AttributeMetadata'",
        ),
        ("EntityDefinitions?$top=1", 400, "$top"),
        (
            "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.NopeAttributeMetadata",
            404,
            "Resource not found for the segment",
        ),
        ("EntityDefinitions(LogicalName='widget')", 404, "Could not find entity"),
    ],
)
async def test_unsupported_metadata_queries_are_errors(
    dv: Dv, path: str, status: int, fragment: str
) -> None:
    got_status, _, message = error(await dv.get(path))
    assert got_status == status and fragment in message


async def test_full_entity_row(dv: Dv) -> None:
    r = await dv.get("EntityDefinitions(LogicalName='lead')")
    row = r.json()
    assert row["@odata.context"].endswith("$metadata#EntityDefinitions/$entity")
    assert row["DisplayName"]["UserLocalizedLabel"]["Label"] == "Lead"
    plural = row["DisplayCollectionName"]["LocalizedLabels"][0]
    assert (plural["Label"], plural["LanguageCode"]) == ("Leads", 1033)
    assert row["Description"]["LocalizedLabels"][0]["LanguageCode"] == 1033
    assert (row["OwnershipType"], row["IsActivity"], row["HasActivities"], row["HasNotes"]) == (
        "UserOwned",
        False,
        True,
        True,
    )
    assert (row["ObjectTypeCode"], row["PrimaryIdAttribute"], row["PrimaryNameAttribute"]) == (
        4,
        "leadid",
        "fullname",
    )
    assert (
        row["CanChangeTrackingBeEnabled"]["Value"] is True and row["ChangeTrackingEnabled"] is True
    )
    assert "Attributes" not in row  # a navigation property, only with $expand
    same = (await dv.get(f"EntityDefinitions({row['MetadataId']})?$select=LogicalName")).json()
    assert same["LogicalName"] == "lead" and "DisplayName" not in same


async def test_expand_attributes_with_nested_select_and_filter(dv: Dv) -> None:
    r = await dv.get(
        "EntityDefinitions(LogicalName='contact')?$select=LogicalName&$expand=Attributes($select=LogicalName,AttributeType;$filter=AttributeType eq 'Customer' or AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Boolean')"
    )
    body = r.json()
    assert r.status_code == 200, r.text
    got = {a["LogicalName"]: a["AttributeType"] for a in body["Attributes"]}
    assert got == {"parentcustomerid": "Customer", "new_synctomkto": "Boolean"}
    assert all(
        set(a) == {"@odata.type", "MetadataId", "LogicalName", "AttributeType"}
        for a in body["Attributes"]
    )
    rows = await values(
        dv,
        "EntityDefinitions?$select=LogicalName&$filter=LogicalName eq 'account'&$expand=Attributes($select=LogicalName;$filter=IsPrimaryId eq true)",
    )
    assert rows[0]["Attributes"][0]["LogicalName"] == "accountid"


async def test_lookups_are_listed_by_logical_name_with_targets(dv: Dv) -> None:
    attrs = await values(dv, "EntityDefinitions(LogicalName='contact')/Attributes")
    names = {a["LogicalName"] for a in attrs}
    assert "parentcustomerid" in names and not any(n.startswith("_") for n in names)
    customer = next(a for a in attrs if a["LogicalName"] == "parentcustomerid")
    assert (customer["AttributeType"], customer["Targets"], customer["@odata.type"]) == (
        "Customer",
        ["account"],
        "#Microsoft.Dynamics.CRM.LookupAttributeMetadata",
    )
    created = next(a for a in attrs if a["LogicalName"] == "createdby")
    assert (created["AttributeType"], created["Targets"], created["IsValidForCreate"]) == (
        "Lookup",
        ["systemuser"],
        False,
    )
    lookups = await values(
        dv,
        "EntityDefinitions(LogicalName='opportunity')/Attributes/Microsoft.Dynamics.CRM.LookupAttributeMetadata?$select=LogicalName,Targets",
    )
    assert {a["LogicalName"]: a["Targets"] for a in lookups}["parentaccountid"] == ["account"]


async def test_typed_casts(dv: Dv) -> None:
    strings = await values(
        dv,
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata?$select=LogicalName,MaxLength",
    )
    assert {a["LogicalName"]: a["MaxLength"] for a in strings}["subject"] == 300
    assert all(
        a["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata" for a in strings
    )
    dates = await values(
        dv,
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata?$select=LogicalName",
    )
    assert {a["LogicalName"] for a in dates} == {"createdon", "modifiedon"}
    assert (
        await values(
            dv,
            "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
        )
        == []
    )
    picks = await values(
        dv,
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet",
    )
    options = picks[0]["OptionSet"]["Options"]
    assert [(o["Value"], o["Label"]["UserLocalizedLabel"]["Label"]) for o in options] == [
        (1, "Hot"),
        (2, "Warm"),
        (3, "Cold"),
    ]
    bools = await values(
        dv,
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.BooleanAttributeMetadata?$expand=OptionSet($select=TrueOption)",
    )
    assert (
        bools[0]["OptionSet"]["TrueOption"]["Value"] == 1
        and "FalseOption" not in bools[0]["OptionSet"]
    )
    r = await dv.get(
        "EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='firstname')/Microsoft.Dynamics.CRM.StringAttributeMetadata?$select=MaxLength"
    )
    assert r.json()["MaxLength"] == 50
    r = await dv.get(
        "EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='firstname')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    )
    assert r.status_code == 404


async def test_keys_and_relationships(dv: Dv) -> None:
    assert await values(dv, "EntityDefinitions(LogicalName='lead')/Keys") == []
    many_to_one = await values(
        dv, "EntityDefinitions(LogicalName='contact')/ManyToOneRelationships"
    )
    customer = next(r for r in many_to_one if r["ReferencingAttribute"] == "parentcustomerid")
    assert {
        "SchemaName": "contact_customer_accounts",
        "ReferencedEntity": "account",
        "ReferencedAttribute": "accountid",
        "ReferencingEntity": "contact",
        "ReferencingEntityNavigationPropertyName": "parentcustomerid_account",
    }.items() <= customer.items()
    one_to_many = await values(
        dv,
        "EntityDefinitions(LogicalName='account')/OneToManyRelationships?$select=SchemaName,ReferencingEntity&$filter=ReferencingEntity ne 'systemuser'",
    )
    assert {(r["SchemaName"], r["ReferencingEntity"]) for r in one_to_many} == {
        ("contact_customer_accounts", "contact"),
        ("opportunity_parent_account", "opportunity"),
    }
    r = await dv.get(
        "EntityDefinitions(LogicalName='account')?$select=LogicalName&$expand=Keys,ManyToOneRelationships($select=SchemaName)"
    )
    assert r.json()["Keys"] == [] and {
        x["SchemaName"] for x in r.json()["ManyToOneRelationships"]
    } == {"lk_account_createdby", "lk_account_modifiedby"}


async def test_metadata_filter_inside_a_batch(dv: Dv) -> None:
    body = batch_body(
        "batch_1",
        [http_part("GET", "EntityDefinitions?$select=LogicalName&$filter=ObjectTypeCode eq 3")],
    )
    (answer,) = batch_json_parts((await send_batch(dv, body)).text)
    assert [r["LogicalName"] for r in answer["value"]] == ["opportunity"]
