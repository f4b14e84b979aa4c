"""The per-field comparison of one record's two sides, and a resync request's checks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from crmsync.config import load_settings
from crmsync.domain import Direction
from crmsync.engine.compare import compare_record, differs_from_base
from crmsync.engine.resync import check_request, modified_filter
from crmsync.errors import ValidationFailed

OBJECTS: dict[str, Any] = {
    "lead": {
        "fields": {
            "budget": {"attribute": "new_budget", "type": "money"},
            "visited": {"attribute": "new_visited", "type": "datetime"},
        }
    }
}


@pytest.fixture(scope="module")
def specs() -> Any:
    return load_settings(database_url="sqlite://", objects=OBJECTS).object_specs()


def test_values_differing_only_in_representation_are_equal(specs: Any) -> None:
    lead = specs["lead"]
    local = {
        "email": "a@x.org",
        "last_name": "A",
        "budget": Decimal("1.50"),
        "visited": datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
    }
    theirs = {
        "emailaddress1": "a@x.org",
        "lastname": "A",
        "new_budget": 1.5,
        "new_visited": "2026-11-01T12:00:00.000Z",
    }
    assert compare_record(lead, local, theirs) == []
    theirs["new_budget"] = 1.51
    (diff,) = compare_record(lead, local, theirs)
    assert (diff.field, diff.attribute, diff.local, diff.dynamics) == (
        "budget",
        "new_budget",
        1.5,
        1.51,
    )
    # An attribute Dynamics did not return is not compared.
    assert compare_record(lead, {"email": "b@x.org"}, {"lastname": None}) == []


def test_lookups_compare_the_parents_dynamics_ids(specs: Any) -> None:
    contact = specs["contact"]
    parent = "8e5ded7d-62fa-4f3f-9191-ee067ee0527e"
    local = {"email": "c@x.org", "account_id": 7}
    theirs = {"emailaddress1": "c@x.org", "_parentcustomerid_value": parent.upper()}
    assert compare_record(contact, local, theirs, {("account", 7): parent}) == []
    (diff,) = compare_record(contact, local, theirs, {("account", 7): None})
    assert diff.field == "account_id"
    assert compare_record(contact, local, theirs) == []  # no parents given: not compared


def test_differs_from_base(specs: Any) -> None:
    lead = specs["lead"]
    base = {"email": "a@x.org", "last_name": "A", "budget": 1.5}
    assert (
        differs_from_base(
            lead, {"email": "a@x.org", "last_name": "A", "budget": Decimal("1.50")}, base
        )
        == []
    )
    assert differs_from_base(
        lead, {"email": "a@x.org", "last_name": "B", "budget": "1.5"}, base
    ) == ["last_name"]
    assert differs_from_base(lead, {"email": "a@x.org"}, None) == list(lead.columns)


def test_resync_requests_are_checked(specs: Any) -> None:
    req = check_request(
        specs, "lead", "from_crm", None, None, ["3", 4, "8E5DED7D-62FA-4F3F-9191-EE067EE0527E"]
    )
    assert req.direction is Direction.FROM_CRM
    assert req.ids == (3, 4, "8e5ded7d-62fa-4f3f-9191-ee067ee0527e")
    with pytest.raises(ValidationFailed, match=r"ids: .* is not a local id$"):
        check_request(specs, "lead", "to_crm", None, None, ["8e5ded7d-62fa-4f3f-9191-ee067ee0527e"])
    with pytest.raises(ValidationFailed, match="direction: account does not sync to Dynamics"):
        check_request(specs, "account", "to_crm", None, None, [])
    since = datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(ValidationFailed, match="until: must be later"):
        check_request(specs, "lead", "to_crm", since, since, [])
    assert modified_filter(since, None) == "modifiedon ge 2026-11-02T00:00:00Z"
    assert modified_filter(None, None) is None
