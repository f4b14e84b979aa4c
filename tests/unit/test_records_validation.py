"""store.records validation: pure functions, no database."""

from __future__ import annotations

import pytest

from crmsync.errors import ValidationFailed
from crmsync.mapping import default_objects
from crmsync.store import records

SPECS = default_objects()
LEAD = SPECS["lead"]
CONTACT = SPECS["contact"]


def field_of(spec, payload) -> str:
    with pytest.raises(ValidationFailed) as info:
        records.validate(spec, payload)
    return info.value.field


def test_valid_payload_passes_through():
    payload = {"email": "ada@example.com", "first_name": "Ada", "last_name": None}
    assert records.validate(LEAD, payload) == payload


def test_empty_payload_is_valid():
    assert records.validate(LEAD, {}) == {}


def test_unknown_field_is_named_with_the_valid_ones():
    with pytest.raises(ValidationFailed) as info:
        records.validate(LEAD, {"email": "a@b.c", "emial": "x"})
    assert info.value.field == "emial"
    assert "first_name" in info.value.message


def test_field_of_another_object_is_unknown():
    assert field_of(LEAD, {"account_id": 1}) == "account_id"
    assert field_of(SPECS["account"], {"email": "x"}) == "email"


@pytest.mark.parametrize("field", ["id", "crm_id", "created_at", "updated_at"])
def test_read_only_fields(field):
    with pytest.raises(ValidationFailed) as info:
        records.validate(LEAD, {field: "x"})
    assert info.value.field == field
    assert "read-only" in info.value.message


@pytest.mark.parametrize("value", [5, 1.5, True, ["a"], {"a": 1}])
def test_text_field_wants_a_string(value):
    assert field_of(LEAD, {"email": value}) == "email"


def test_length_limit_is_the_columns():
    longest = "x" * 243 + "@example.com"
    assert records.validate(LEAD, {"email": longest}) == {"email": longest}
    with pytest.raises(ValidationFailed) as info:
        records.validate(LEAD, {"email": "x" + longest})
    assert info.value.field == "email"
    assert "255" in info.value.message
    # account names are wider
    assert records.validate(SPECS["account"], {"name": "n" * 400})
    assert field_of(SPECS["account"], {"name": "n" * 401}) == "name"


def test_length_counts_characters_not_bytes():
    assert records.validate(LEAD, {"first_name": "é" * 255})


@pytest.mark.parametrize("value", ["a\x00b", "\ud800"])
def test_text_the_store_cannot_hold(value):
    assert field_of(LEAD, {"first_name": value}) == "first_name"


@pytest.mark.parametrize("value", ["1", 1.0, True, 0, -3, 2**63, "x"])
def test_account_id_must_be_a_positive_integer(value):
    assert field_of(CONTACT, {"account_id": value}) == "account_id"


def test_account_id_integer_or_null():
    assert records.validate(CONTACT, {"account_id": 7}) == {"account_id": 7}
    assert records.validate(CONTACT, {"account_id": None}) == {"account_id": None}


def test_parse_text_for_csv_cells():
    row = {"email": "a@b.c", "first_name": "", "account_id": " 12 "}
    assert records.parse_text(CONTACT, row) == {
        "email": "a@b.c",
        "first_name": None,
        "account_id": 12,
    }
    with pytest.raises(ValidationFailed) as info:
        records.parse_text(CONTACT, {"account_id": "twelve"})
    assert info.value.field == "account_id"
    with pytest.raises(ValidationFailed):
        records.parse_text(CONTACT, {"account_id": "+-1"})


def test_cursor_round_trip_and_garbage():
    assert records.decode_cursor(records.encode_cursor(42)) == 42
    for bad in ["", "!!!", "djE6", "abc", records.encode_cursor(1) + "x", "djE6LTE"]:
        with pytest.raises(ValidationFailed) as info:
            records.decode_cursor(bad)
        assert info.value.field == "cursor"


def test_unknown_object():
    with pytest.raises(records.NotFound, match="lead"):
        records.resolve_object(SPECS, "leads")


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "a@@b.c", "a b@c.d", "@c.d", "a@.c", "a@c.", "a@c..d"]
)
def test_email_columns_refuse_what_is_not_an_address(email):
    with pytest.raises(ValidationFailed) as info:
        records.validate(LEAD, {"email": email})
    assert info.value.field == "email" and "not an email address" in info.value.message
    assert field_of(CONTACT, {"email": email}) == "email"


@pytest.mark.parametrize("email", ["a@b.co", "first.last+tag@sub.example.org", "ü@exämple.de"])
def test_email_columns_take_addresses(email):
    assert records.validate(LEAD, {"email": email}) == {"email": email}
