# ruff: noqa: E501
"""$filter query functions (webapi/query/filter-rows.md) and OData 4.01 `in`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dvclient import Dv, error

from crmsync.emulator.app import Emulator
from crmsync.emulator.odata import format_datetime

NOW = datetime.now(UTC)


@pytest.fixture
async def dated(dv: Dv, emulator: Emulator) -> None:
    """Leads named by when they were created (createdon rewritten in the store);
    leadqualitycode is 1 + len(name) % 3: 3 for fivedays, tomorrow and nextweek."""
    when = {
        "now": NOW,
        "yesterday": NOW - timedelta(days=1),
        "fivedays": NOW - timedelta(days=5),
        "lastmonth": NOW.replace(day=1) - timedelta(days=15),  # 16 to 45 days ago
        "tomorrow": NOW + timedelta(days=1),
        "nextweek": NOW + timedelta(days=6),
    }
    for name, moment in when.items():
        row = await dv.create("leads", {"lastname": name, "leadqualitycode": 1 + len(name) % 3})
        emulator.store.tables["leads"].rows[row["leadid"]]["createdon"] = format_datetime(moment)


async def names(dv: Dv, flt: str) -> set[str]:
    r = await dv.get(f"leads?$select=lastname&$filter={flt}")
    assert r.status_code == 200, r.text
    return {x["lastname"] for x in r.json()["value"]}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (
            "Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=['NOW','tomorrow','absent'])",
            {"now", "tomorrow"},
        ),
        (
            "Microsoft.Dynamics.CRM.NotIn(PropertyName='lastname',PropertyValues=['now','tomorrow','yesterday','fivedays'])",
            {"lastmonth", "nextweek"},
        ),
        ("lastname in ('now','Yesterday')", {"now", "yesterday"}),
        (
            "Microsoft.Dynamics.CRM.Between(PropertyName='leadqualitycode',PropertyValues=['2','3'])",
            {"fivedays", "tomorrow", "nextweek"},
        ),
        (
            "Microsoft.Dynamics.CRM.NotBetween(PropertyName='leadqualitycode',PropertyValues=[2,3])",
            {"now", "yesterday", "lastmonth"},
        ),
        ("Microsoft.Dynamics.CRM.Today(PropertyName='createdon')", {"now"}),
        ("Microsoft.Dynamics.CRM.Yesterday(PropertyName='createdon')", {"yesterday"}),
        (
            "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=7)",
            {"now", "yesterday", "fivedays"},
        ),
        (
            "Microsoft.Dynamics.CRM.NextXDays(PropertyName='createdon',PropertyValue=2)",
            {"tomorrow"},
        ),
        (
            f"Microsoft.Dynamics.CRM.On(PropertyName='createdon',PropertyValue='{(NOW - timedelta(days=5)).date()}')",
            {"fivedays"},
        ),
        (
            f"Microsoft.Dynamics.CRM.OnOrAfter(PropertyName='createdon',PropertyValue='{(NOW + timedelta(days=1)).date()}')",
            {"tomorrow", "nextweek"},
        ),
        (
            f"Microsoft.Dynamics.CRM.OnOrBefore(PropertyName='createdon',PropertyValue='{(NOW - timedelta(days=5)).date()}') and lastname ne 'x'",
            {"fivedays", "lastmonth"},
        ),
        (
            "not Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=['now']) and startswith(lastname,'n')",
            {"nextweek"},
        ),
    ],
)
async def test_query_functions(dv: Dv, dated: None, flt: str, expected: set[str]) -> None:
    assert await names(dv, flt) == expected


async def test_this_month_and_year(dv: Dv, dated: None) -> None:
    this_month = await names(dv, "Microsoft.Dynamics.CRM.ThisMonth(PropertyName='createdon')")
    assert "now" in this_month and "lastmonth" not in this_month
    last_month = await names(dv, "Microsoft.Dynamics.CRM.LastMonth(PropertyName='createdon')")
    assert "lastmonth" in last_month and "now" not in last_month and "nextweek" not in last_month
    this_year = await names(dv, "Microsoft.Dynamics.CRM.ThisYear(PropertyName='createdon')")
    assert "now" in this_year


@pytest.mark.parametrize(
    ("flt", "fragment"),
    [
        (
            "Microsoft.Dynamics.CRM.Under(PropertyName='lastname',PropertyValue='1')",
            "An unknown function with name 'Microsoft.Dynamics.CRM.Under' was found.",
        ),
        (
            "Microsoft.Dynamics.CRM.ContainValues(PropertyName='lastname',PropertyValues=['1'])",
            "needs a choices column; 'lastname' is not one",
        ),
        ("Microsoft.Dynamics.CRM.Nope(PropertyName='lastname')", "unknown function"),
        (
            "Microsoft.Dynamics.CRM.In(PropertyName='nope',PropertyValues=['a'])",
            "Could not find a property named 'nope'",
        ),
        ("Microsoft.Dynamics.CRM.In(PropertyName='lastname')", "PropertyValues"),
        (
            "Microsoft.Dynamics.CRM.Between(PropertyName='leadqualitycode',PropertyValues=[1])",
            "exactly two",
        ),
        (
            "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue='x')",
            "whole-number",
        ),
        ("Microsoft.Dynamics.CRM.On(PropertyName='createdon',PropertyValue='soon')", "date"),
        ("Microsoft.Dynamics.CRM.Today(PropertyName='createdon'", "Syntax error"),
        ("lastname in 'a'", "Syntax error"),
    ],
)
async def test_query_function_errors(dv: Dv, flt: str, fragment: str) -> None:
    status, code, message = error(await dv.get(f"leads?$filter={flt}"))
    assert (status, code) == (400, "0x80060888") or fragment.startswith("Could not")
    assert fragment in message
