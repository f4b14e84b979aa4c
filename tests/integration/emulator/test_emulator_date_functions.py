"""The week, month, year and ``OlderThanX`` query functions (Web API query function
reference; their windows are inferred where the docs give only names: see
``crmsync.emulator.datefuncs``), against a clock held at Wednesday 2026-12-02 12:00 UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dvclient import Dv, error

from crmsync.emulator import datefuncs
from crmsync.emulator.app import Emulator

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday: this week began Sunday 29th
WHEN = {
    "now": datetime(2026, 12, 2, 11, 0, tzinfo=UTC),
    "sunday": datetime(2026, 11, 29, 0, 30, tzinfo=UTC),
    "saturday": datetime(2026, 11, 28, 23, 0, tzinfo=UTC),
    "sixdays": datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    "eightdays": datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    "nextsunday": datetime(2026, 12, 6, 9, 0, tzinfo=UTC),
    "january": datetime(2027, 1, 5, 9, 0, tzinfo=UTC),
    "march": datetime(2027, 3, 1, 9, 0, tzinfo=UTC),
    "lastyear": datetime(2025, 6, 1, 9, 0, tzinfo=UTC),
}
PAST = {"now", "sunday", "saturday", "sixdays", "eightdays", "lastyear"}


@pytest.fixture
async def dated(dv: Dv, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datefuncs, "now", lambda: NOW)
    for name, moment in WHEN.items():
        row = await dv.create("leads", {"lastname": name})
        stored = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        emulator.store.tables["leads"].rows[row["leadid"]]["createdon"] = stored


def fn(name: str, value: int | None = None) -> str:
    arg = "" if value is None else f",PropertyValue={value}"
    return f"Microsoft.Dynamics.CRM.{name}(PropertyName='createdon'{arg})"


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (fn("Last7Days"), {"now", "sunday", "saturday", "sixdays"}),
        (fn("Next7Days"), {"nextsunday"}),
        (fn("ThisWeek"), {"now", "sunday"}),
        (fn("LastWeek"), {"saturday", "sixdays", "eightdays"}),
        (fn("NextWeek"), {"nextsunday"}),
        (fn("NextMonth"), {"january"}),
        (fn("LastYear"), {"lastyear"}),
        (fn("NextYear"), {"january", "march"}),
        (fn("LastXWeeks", 1), {"now", "sunday", "saturday", "sixdays"}),
        (fn("LastXMonths", 1), {"now", "sunday", "saturday", "sixdays", "eightdays"}),
        (fn("LastXYears", 2), PAST),
        (fn("NextXWeeks", 1), {"nextsunday"}),
        (fn("NextXMonths", 2), {"nextsunday", "january"}),
        (fn("NextXYears", 1), {"nextsunday", "january", "march"}),
        (fn("OlderThanXMinutes", 30), PAST),
        (fn("OlderThanXHours", 2), PAST - {"now"}),
        (fn("OlderThanXDays", 7), {"eightdays", "lastyear"}),
        (fn("OlderThanXWeeks", 1), {"eightdays", "lastyear"}),
        (fn("OlderThanXMonths", 1), {"lastyear"}),
        (fn("OlderThanXYears", 1), {"lastyear"}),
        (f"not {fn('ThisWeek')} and {fn('LastXMonths', 1)}", {"saturday", "sixdays", "eightdays"}),
    ],
)
async def test_windows(dv: Dv, dated: None, flt: str, expected: set[str]) -> None:
    r = await dv.get(f"leads?$select=lastname&$filter={flt}")
    assert r.status_code == 200, r.text
    assert {x["lastname"] for x in r.json()["value"]} == expected


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (fn("OlderThanXDays"), "whole-number PropertyValue"),
        (
            "Microsoft.Dynamics.CRM.LastXWeeks(PropertyName='createdon',PropertyValue='2')",
            "whole-number PropertyValue",
        ),
        (
            fn("InFiscalYear", 2026),
            "unknown function with name 'Microsoft.Dynamics.CRM.InFiscalYear'",
        ),
        (fn("LastFiscalPeriod"), "unknown function"),
        (
            "Microsoft.Dynamics.CRM.Above(PropertyName='leadid',PropertyValue='x')",
            "unknown function",
        ),
    ],
)
async def test_refused(dv: Dv, dated: None, flt: str, message: str) -> None:
    status, _code, text = error(await dv.get(f"leads?$select=lastname&$filter={flt}"))
    assert status == 400 and message in text, text
