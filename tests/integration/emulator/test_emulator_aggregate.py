# ruff: noqa: E501
"""$apply aggregation (webapi/query/aggregate-data.md)."""

from __future__ import annotations

import pytest
from dvclient import Dv, error


@pytest.fixture
async def leads(dv: Dv) -> None:
    for last, quality in [("a", 1), ("b", 1), ("c", 2), ("d", None), ("A", 3)]:
        body = {"lastname": last, "companyname": "Co" if last != "d" else None}
        if quality is not None:
            body["leadqualitycode"] = quality
        await dv.create("leads", body)


async def values(dv: Dv, query: str, **headers: str) -> list[dict]:
    r = await dv.get(f"leads?{query}", **headers)
    assert r.status_code == 200, r.text
    return r.json()["value"]


async def test_groupby_and_count(dv: Dv, leads: None) -> None:
    rows = await values(
        dv, "$apply=groupby((leadqualitycode),aggregate($count as count))&$orderby=leadqualitycode"
    )
    assert rows == [
        {"leadqualitycode": None, "count": 1},
        {"leadqualitycode": 1, "count": 2},
        {"leadqualitycode": 2, "count": 1},
        {"leadqualitycode": 3, "count": 1},
    ]
    unique = await values(
        dv, "$apply=groupby((companyname))", Prefer='odata.include-annotations="*"'
    )
    assert sorted(r["companyname"] or "" for r in unique) == ["", "Co"]
    picks = await values(
        dv,
        "$apply=groupby((leadqualitycode))&$orderby=leadqualitycode desc",
        Prefer='odata.include-annotations="*"',
    )
    assert picks[0] == {
        "leadqualitycode@OData.Community.Display.V1.FormattedValue": "Cold",
        "leadqualitycode": 3,
    }


async def test_aggregate_methods_and_filter(dv: Dv, leads: None) -> None:
    (row,) = await values(
        dv,
        "$apply=aggregate(leadqualitycode with sum as total,leadqualitycode with average as mean,leadqualitycode with min as low,leadqualitycode with max as high,lastname with countdistinct as names,$count as n)",
    )
    assert row == {"total": 7, "mean": 1.75, "low": 1, "high": 3, "names": 4, "n": 5}
    (only,) = await values(dv, "$apply=filter(leadqualitycode eq 1)/aggregate($count as n)")
    assert only == {"n": 2}
    grouped = await values(
        dv,
        "$apply=filter(companyname ne null)/groupby((companyname),aggregate(leadqualitycode with max as best))",
    )
    assert grouped == [{"companyname": "Co", "best": 3}]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        (
            "$apply=groupby((leadqualitycode),aggregate($count as n))&$orderby=n",
            "The query node SingleValueOpenPropertyAccess is not supported.",
        ),
        ("$apply=groupby((createdon))", "groupby with datetime values isn't supported."),
        ("$apply=groupby((nope))", "Could not find a property named 'nope'"),
        ("$apply=aggregate(lastname with sum as s)", "can't be applied"),
        ("$apply=aggregate(leadqualitycode with median as m)", "'median'"),
        ("$apply=aggregate(leadqualitycode)", "Syntax error"),
        ("$apply=compute(1 as x)", "'compute'"),
        ("$apply=groupby((lastname))&$select=lastname", "$select"),
        ("$apply=groupby((lastname))&$orderby=leadqualitycode", "needs it in the groupby"),
    ],
)
async def test_aggregate_errors(dv: Dv, leads: None, query: str, fragment: str) -> None:
    status, _, message = error(await dv.get(f"leads?{query}"))
    assert status == 400 and fragment in message
