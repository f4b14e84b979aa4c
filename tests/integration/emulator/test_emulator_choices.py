"""Choices (multi-select) columns: Microsoft's own example, ``sample_outdooractivities`` on
contacts (multi-select-picklist.md), written, read, annotated, described and queried
with ``ContainValues`` / ``DoesNotContainValues`` and FetchXML's ``contain-values`` /
``not-contain-values``, against the data set and answers the article gives."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from dvclient import Dv, error

COLUMN = "sample_outdooractivities"
# The article's contacts and their activities (1 Swimming, 2 Hiking, 3 Mountain Climbing,
# 4 Fishing, 5 Hunting, 6 Running, 7 Boating, 8 Skiing, 9 Camping).
PEOPLE = {
    ("Wayne", "Yarborough"): "1, 9",
    ("Monte", "Orton"): "2",
    ("Randal", "Maple"): "4",
    ("Hiram", "Mundy"): "2,3,8,9",
    ("Barbara", "Weber"): "1,4,7",
    ("Georgette", "Sullivan"): "4,5,9",
    ("Verna", "Kennedy"): "2,4,9",
    ("Marvin", "Bracken"): "1,2,8,9",
}
HIKERS = ["Hiram Mundy", "Marvin Bracken", "Monte Orton", "Verna Kennedy"]
NON_HIKERS = ["Barbara Weber", "Georgette Sullivan", "Randal Maple", "Wayne Yarborough"]
FORMATTED = "OData.Community.Display.V1.FormattedValue"


@pytest.fixture
async def people(dv: Dv) -> Dv:
    for (first, last), activities in PEOPLE.items():
        body = {"firstname": first, "lastname": last, COLUMN: activities}
        r = await dv.req("POST", "contacts", json=body)
        assert r.status_code == 204, r.text
    await dv.create("contacts", {"firstname": "Nora", "lastname": "None"})  # no activities
    return dv


async def names(dv: Dv, query: str) -> list[str]:
    r = await dv.get(f"contacts?{query}")
    assert r.status_code == 200, r.text
    return sorted(row["fullname"] for row in r.json()["value"])


def contain(function: str, *values: str) -> str:
    listed = ",".join(f"'{v}'" for v in values)
    call = f"{function}(PropertyName='{COLUMN}',PropertyValues=[{listed}])"
    return f"$filter=Microsoft.Dynamics.CRM.{call}"


async def test_values_are_written_as_text_and_read_as_the_article_shows(people: Dv) -> None:
    r = await people.get(
        f"contacts?$select=fullname,{COLUMN}&$filter=lastname eq 'Mundy'",
        Prefer=f'odata.include-annotations="{FORMATTED}"',
    )
    (row,) = r.json()["value"]
    assert row[COLUMN] == "2,3,8,9"
    assert row[f"{COLUMN}@{FORMATTED}"] == "Hiking; Mountain Climbing; Skiing; Camping"
    wayne = (await people.get("contacts?$filter=lastname eq 'Yarborough'")).json()["value"][0]
    assert wayne[COLUMN] == "1,9"  # "1, 9" as sent, answered without the space
    r = await people.req("PATCH", f"contacts({wayne['contactid']})", json={COLUMN: "9, 1, 9"})
    assert r.status_code == 204
    assert (await people.get(f"contacts({wayne['contactid']})")).json()[COLUMN] == "1,9"
    r = await people.req("PATCH", f"contacts({wayne['contactid']})", json={COLUMN: ""})
    assert r.status_code == 204
    assert (await people.get(f"contacts({wayne['contactid']})")).json()[COLUMN] is None


async def test_contain_values_finds_the_hikers(people: Dv) -> None:
    assert await names(people, contain("ContainValues", "2")) == HIKERS


async def test_does_not_contain_values_finds_the_others(people: Dv) -> None:
    # Inferred: a contact with no activities is in neither answer (as NotIn leaves nulls out).
    assert await names(people, contain("DoesNotContainValues", "2")) == NON_HIKERS


async def test_several_values_match_any_of_them(people: Dv) -> None:
    assert await names(people, contain("ContainValues", "5", "7")) == [
        "Barbara Weber",
        "Georgette Sullivan",
    ]
    assert await names(people, contain("DoesNotContainValues", "9", "2")) == [
        "Barbara Weber",
        "Randal Maple",
    ]
    # Numbers work as well as the quoted values of the docs; with other conditions too.
    query = (
        f"$filter=Microsoft.Dynamics.CRM.ContainValues(PropertyName='{COLUMN}',"
        "PropertyValues=[8]) and startswith(firstname,'M')"
    )
    assert await names(people, query) == ["Marvin Bracken"]


async def test_eq_and_null_on_a_choices_column(people: Dv) -> None:
    assert await names(people, f"$filter={COLUMN} eq '1,9'") == ["Wayne Yarborough"]
    assert await names(people, f"$filter={COLUMN} eq null") == ["Nora None"]


async def test_fetchxml_contain_values_and_not_contain_values(people: Dv) -> None:
    def fetch(op: str, *values: str) -> str:
        inner = "".join(f"<value>{v}</value>" for v in values)
        xml = (
            "<fetch distinct='false' no-lock='false' mapping='logical'><entity name='contact'>"
            f"<attribute name='fullname' /><attribute name='{COLUMN}' /><filter type='and'>"
            f"<condition attribute='{COLUMN}' operator='{op}'>{inner}</condition>"
            "</filter></entity></fetch>"
        )
        return f"fetchXml={quote(xml)}"

    assert await names(people, fetch("not-contain-values", "2")) == NON_HIKERS
    assert await names(people, fetch("contain-values", "2")) == HIKERS
    assert await names(people, fetch("contain-values", "5", "7")) == [
        "Barbara Weber",
        "Georgette Sullivan",
    ]
    xml = (
        "<fetch><entity name='contact'><filter><condition attribute='lastname' "
        "operator='contain-values'><value>2</value></condition></filter></entity></fetch>"
    )
    status, _, message = error(await people.get(f"contacts?fetchXml={quote(xml)}"))
    assert status == 400 and "needs a choices column" in message


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        ("1,10", 400, "0x8004431a"),  # 10 is not an option
        (2, 400, "0x80048d19"),  # a number, not a string
        (["1", "2"], 400, "0x80048d19"),
        ("hiking", 400, "0x80048d19"),
    ],
)
async def test_bad_values_are_refused(dv: Dv, value: object, status: int, code: str) -> None:
    r = await dv.req("POST", "contacts", json={"lastname": "Bad", COLUMN: value})
    assert error(r)[:2] == (status, code)
    assert (await dv.get("contacts")).json()["value"] == []


async def test_query_values_must_be_options(people: Dv) -> None:
    status, code, message = error(await people.get(f"contacts?{contain('ContainValues', 'x')}"))
    assert (status, code) == (400, "0x80060888") and "option values" in message


async def test_metadata_describes_the_choices_column(dv: Dv) -> None:
    r = await dv.get(
        "EntityDefinitions(LogicalName='contact')/Attributes/"
        "Microsoft.Dynamics.CRM.MultiSelectPicklistAttributeMetadata"
        "?$select=LogicalName,AttributeType,AttributeTypeName&$expand=OptionSet"
    )
    assert r.status_code == 200, r.text
    (row,) = r.json()["value"]
    assert row["LogicalName"] == COLUMN and row["AttributeType"] == "Virtual"
    assert row["AttributeTypeName"] == {"Value": "MultiSelectPicklistType"}
    options = row["OptionSet"]["Options"]
    assert [o["Value"] for o in options] == list(range(1, 10))
    assert options[1]["Label"]["UserLocalizedLabel"]["Label"] == "Hiking"
    csdl = (await dv.get("$metadata")).text
    assert f'<Property Name="{COLUMN}" Type="Edm.String"/>' in csdl
