"""Unit tests of the emulator's pure parts: $filter, $select, Prefer, cookies, store, settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.emulator import faults
from crmsync.emulator.model import ENTITIES
from crmsync.emulator.odata import (
    compile_filter,
    decode_skiptoken,
    encode_skiptoken,
    parse_orderby,
    parse_prefer,
    parse_select,
    sort_key,
)
from crmsync.emulator.settings import SettingsError, validate
from crmsync.emulator.store import Store

LEADS = ENTITIES["leads"]
ROW = {
    "leadid": "00000000-0000-0000-0000-000000000001",
    "firstname": "Ada",
    "lastname": "Lovelace",
    "emailaddress1": "Ada@Example.com",
    "companyname": None,
    "leadqualitycode": 2,
    "new_synctomkto": True,
    "modifiedon": "2024-05-01T10:00:00Z",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("firstname eq 'Ada'", True),
        ("firstname eq 'ada'", True),  # SQL Server collation: case-insensitive
        ("firstname ne 'Ada'", False),
        ("leadqualitycode gt 1", True),
        ("leadqualitycode ge 2", True),
        ("leadqualitycode lt 2", False),
        ("leadqualitycode le 2", True),
        ("companyname eq null", True),
        ("companyname ne null", False),
        ("lastname ne null", True),
        ("companyname gt 'a'", False),
        ("contains(emailaddress1,'example')", True),
        ("startswith(emailaddress1,'ada@')", True),
        ("endswith(emailaddress1,'.COM')", True),
        ("endswith(emailaddress1,'.org')", False),
        ("not contains(lastname,'x')", True),
        ("firstname eq 'Bob' or lastname eq 'Lovelace'", True),
        ("firstname eq 'Ada' and lastname eq 'Byron'", False),
        ("(firstname eq 'Bob' or firstname eq 'Ada') and new_synctomkto eq true", True),
        ("modifiedon gt 2024-04-30T00:00:00Z", True),
        ("modifiedon lt 2024-05-01", False),
        ("leadid eq 00000000-0000-0000-0000-000000000001", True),
        ("lastname eq 'O''Brien'", False),
    ],
)
def test_filter_evaluates_like_dataverse(text: str, expected: bool) -> None:
    assert compile_filter(text, LEADS)(ROW) is expected


def test_filter_unknown_property_is_dataverse_error() -> None:
    with pytest.raises(faults.DataverseFault) as err:
        compile_filter("Name eq 'x'", LEADS)
    assert err.value.status == 400
    assert err.value.code == "0x0"
    assert err.value.message == (
        "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.lead'."
    )


@pytest.mark.parametrize(
    "text", ["firstname eq", "firstname zz 'a'", "(firstname eq 'a'", "eq eq eq", "'a", "~"]
)
def test_filter_syntax_errors_are_400(text: str) -> None:
    with pytest.raises(faults.DataverseFault) as err:
        compile_filter(text, LEADS)
    assert err.value.status == 400


@given(st.text(max_size=40))
def test_filter_never_crashes_on_garbage(text: str) -> None:
    try:
        compile_filter(text, LEADS)(ROW)
    except faults.DataverseFault as exc:
        assert exc.status == 400


def test_select_adds_primary_key_and_rejects_unknown() -> None:
    assert parse_select("firstname,lastname", LEADS) == ["firstname", "lastname", "leadid"]
    with pytest.raises(faults.DataverseFault):
        parse_select("nope", LEADS)


def test_orderby_and_sort_key() -> None:
    order = parse_orderby("lastname desc,firstname", LEADS)
    assert order == [("lastname", True), ("firstname", False)]
    rows = [
        {"leadid": "1", "lastname": "b", "firstname": None},
        {"leadid": "2", "lastname": None, "firstname": "z"},
        {"leadid": "3", "lastname": "a", "firstname": "y"},
    ]
    assert [r["leadid"] for r in sorted(rows, key=sort_key(order, "leadid"))] == ["1", "3", "2"]
    asc = parse_orderby("lastname", LEADS)
    assert [r["leadid"] for r in sorted(rows, key=sort_key(asc, "leadid"))] == ["2", "3", "1"]


def test_prefer_parsing() -> None:
    p = parse_prefer('odata.maxpagesize=50, return=representation,odata.include-annotations="*"')
    assert (p.maxpagesize, p.representation, p.track_changes) == (50, True, False)
    assert parse_prefer("odata.track-changes").track_changes
    assert parse_prefer("odata.continue-on-error").continue_on_error
    assert parse_prefer("odata.maxpagesize=abc").maxpagesize is None


def test_skiptoken_round_trip_and_tamper() -> None:
    token = encode_skiptoken({"after": "abc", "upto": 5}, 3, False)
    assert token.startswith('<cookie pagenumber="3"')
    assert decode_skiptoken(token) == ({"after": "abc", "upto": 5}, 3)
    with pytest.raises(faults.DataverseFault):
        decode_skiptoken("garbage")


def test_store_orders_keys_and_rolls_back() -> None:
    store = Store()
    for key in ("c", "a", "b"):
        store.put("accounts", {"accountid": key, "versionnumber": store.next_version()})
    assert [r["accountid"] for r in store.scan_from("accounts", None)] == ["a", "b", "c"]
    assert [r["accountid"] for r in store.scan_from("accounts", "a")] == ["b", "c"]
    store.begin()
    store.delete("accounts", "b")
    store.put("accounts", {"accountid": "a", "versionnumber": store.next_version()})
    store.rollback()
    assert [r["accountid"] for r in store.scan_from("accounts", None)] == ["a", "b", "c"]
    table = store.tables["accounts"]
    versions = [r["versionnumber"] for r in table.rows.values()]
    assert versions == sorted(versions)
    assert table.deleted == []


def test_store_persists_to_sqlite(tmp_path) -> None:
    path = tmp_path / "emu.db"
    store = Store(path)
    store.begin()
    store.put("accounts", {"accountid": "a", "name": "A", "versionnumber": store.next_version()})
    store.put("accounts", {"accountid": "b", "name": "B", "versionnumber": store.next_version()})
    store.commit()
    store.begin()
    store.delete("accounts", "b")
    store.commit()
    store.close()
    again = Store(path)
    assert again.get("accounts", "a") == {"accountid": "a", "name": "A", "versionnumber": 1_000_001}
    assert again.get("accounts", "b") is None
    assert again.tables["accounts"].deleted == [(1_000_003, "b")]
    assert again.version == 1_000_003
    again.close()


def test_settings_validation_names_every_problem() -> None:
    assert validate({"latency_ms": 5, "max_requests": None}) == {
        "latency_ms": 5,
        "max_requests": None,
    }
    with pytest.raises(SettingsError) as err:
        validate(
            {"fail_rate": 2, "bogus": 1, "denied_entity_sets": ["nope"], "max_concurrency": True}
        )
    text = str(err.value)
    for word in ("fail_rate", "bogus", "denied_entity_sets", "max_concurrency"):
        assert word in text
    with pytest.raises(SettingsError):
        validate([1, 2])
