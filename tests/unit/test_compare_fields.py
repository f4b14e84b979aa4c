"""The pure per-field comparison behind ``/compare`` (and a later audit)."""

from __future__ import annotations

from decimal import Decimal

from crmsync.domain import FieldSpec, FieldType, Lookup, ObjectSpec
from crmsync.mapping.compare import compare_fields, in_sync

PRICE = FieldSpec("price", "new_price", FieldType.DECIMAL, precision=2)
NAME = FieldSpec("name", "new_name", FieldType.STRING, max_length=10)
WHEN = FieldSpec("seen", "new_seen", FieldType.DATETIME)
PARENT = FieldSpec("account_id", "parentaccountid", FieldType.LOOKUP, target="account")
SPEC = ObjectSpec(
    name="thing",
    table="thing",
    entity_set="new_things",
    logical_name="new_thing",
    primary_key="new_thingid",
    label_column="name",
    fields={"price": "new_price", "name": "new_name", "seen": "new_seen"},
    lookups=(Lookup("account_id", "account", "parentaccountid", "_parentaccountid_value"),),
    field_specs={"price": PRICE, "name": NAME, "seen": WHEN, "account_id": PARENT},
)
GUID = "AAAAAAAA-0000-0000-0000-000000000001"


def test_values_equal_after_conversion_are_the_same() -> None:
    local = {"price": Decimal("1.50"), "name": "Ada", "seen": None, "account_id": 7}
    remote = {
        "new_price": 1.5,
        "new_name": "Ada",
        "new_seen": None,
        "_parentaccountid_value": GUID,
    }
    fields = compare_fields(SPEC, local, remote, {"name": "Ada"}, {("account", GUID.lower()): 7})
    assert [(f.field, f.same) for f in fields] == [
        ("price", True),
        ("name", True),
        ("seen", True),
        ("account_id", True),
    ]
    assert in_sync(fields)
    assert fields[1].last_synced == "Ada" and fields[0].last_synced is None


def test_a_difference_is_marked_with_both_values() -> None:
    local = {"price": Decimal("1.50"), "name": "Ada", "seen": None, "account_id": 7}
    remote = {"new_price": 1.51, "new_name": "Ada", "_parentaccountid_value": GUID}
    fields = {f.field: f for f in compare_fields(SPEC, local, remote, None)}
    assert not fields["price"].same and fields["price"].dynamics == 1.51
    # An unresolved parent stays a GUID, and so differs from the local id.
    assert not fields["account_id"].same and fields["account_id"].dynamics == GUID.lower()
    assert not in_sync(list(fields.values()))


def test_a_record_missing_on_one_side_is_never_the_same() -> None:
    fields = compare_fields(SPEC, {"name": "Ada"}, None, None)
    assert not any(f.same for f in fields) and all(f.dynamics is None for f in fields)
    # A local value that does not fit its field is kept as it is (and so differs).
    fields = compare_fields(SPEC, {"name": "x" * 11}, {"new_name": "x" * 10}, None)
    assert fields[1].local == "x" * 11 and not fields[1].same
