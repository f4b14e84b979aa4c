"""``mapping.check.mismatches``: every kind of drift between a mapping and metadata."""

from __future__ import annotations

from crmsync.dynamics.metadata import AttributeInfo, TableInfo
from crmsync.mapping import build
from crmsync.mapping.check import mismatches

SPECS = build(
    {
        "lead": {
            "fields": {
                "email": {"max_length": 200},
                "score": {"attribute": "new_score", "type": "integer"},
                "day": {"attribute": "new_day", "type": "date"},
                "rating": {
                    "attribute": "new_rating",
                    "type": "choice",
                    "choices": {"hot": 1, "lukewarm": 4},
                },
                "full_name": {"attribute": "fullname", "type": "string"},
                "gone": {"attribute": "new_gone", "type": "string"},
            }
        },
        "thing": {
            "entity_set": "new_things",
            "logical_name": "new_thing",
            "primary_key": "new_thingid",
            "label": "name",
            "fields": {
                "name": {"attribute": "new_name", "type": "string"},
                "contact_id": {"type": "lookup", "target": "contact", "attribute": "new_contactid"},
            },
        },
    }
)


def table(name: str, entity_set: str, *attrs: AttributeInfo, tracking: bool = True) -> TableInfo:
    return TableInfo(name, entity_set, f"{name}id", tracking, {a.name: a for a in attrs})


def matching() -> dict[str, TableInfo | None]:
    s = AttributeInfo
    return {
        "lead": table(
            "lead",
            "leads",
            s("emailaddress1", "String", max_length=200),
            s("firstname", "String", max_length=50),
            s("lastname", "String", max_length=50),
            s("companyname", "String", max_length=100),
            s("new_score", "Integer"),
            s("new_day", "DateTime", date_only=True),
            s("new_rating", "Picklist", options=(1, 2, 4)),
            s("fullname", "String", max_length=160),
            s("new_gone", "String", max_length=100),
        ),
        "contact": table(
            "contact",
            "contacts",
            s("emailaddress1", "String", max_length=100),
            s("firstname", "String", max_length=50),
            s("lastname", "String", max_length=50),
            s("parentcustomerid", "Customer", targets=("account", "contact")),
        ),
        "account": table("account", "accounts", s("name", "String", max_length=160)),
        "opportunity": table(
            "opportunity",
            "opportunities",
            s("name", "String", max_length=300),
            s("parentaccountid", "Lookup", targets=("account",)),
        ),
        "new_thing": table(
            "new_thing",
            "new_things",
            s("new_name", "String", max_length=100),
            s("new_contactid", "Lookup", targets=("contact",)),
        ),
    }


def test_a_matching_environment_has_no_mismatch() -> None:
    assert mismatches(SPECS, matching()) == []


def test_every_kind_of_drift_is_listed() -> None:
    tables = matching()
    lead, thing = tables["lead"], tables["new_thing"]
    assert lead is not None and thing is not None
    lead.attributes["emailaddress1"].max_length = 100
    lead.attributes["new_score"].type = "Decimal"
    lead.attributes["new_day"].date_only = False
    lead.attributes["new_rating"].options = (1, 2, 3)
    lead.attributes["fullname"].valid_for_create = False
    del lead.attributes["new_gone"]
    thing.attributes["new_contactid"].targets = ("account",)
    tables["account"] = table(
        "account", "accounts", AttributeInfo("name", "String"), tracking=False
    )
    tables["opportunity"] = None
    found = {(m.object, m.field, m.kind) for m in mismatches(SPECS, tables)}
    assert found == {
        ("lead", "email", "max_length"),
        ("lead", "score", "type"),
        ("lead", "day", "type"),
        ("lead", "rating", "choice"),
        ("lead", "full_name", "not_writable"),
        ("lead", "gone", "missing_attribute"),
        ("thing", "contact_id", "lookup_target"),
        ("account", None, "change_tracking"),
        ("opportunity", None, "missing_entity"),
    }
    messages = {m.kind: m.message for m in mismatches(SPECS, tables)}
    assert messages["max_length"] == (
        "lead.emailaddress1 holds at most 100 characters; the mapping allows 200: longer "
        "values will fail"
    )
    assert "lukewarm=4" in messages["choice"]


def test_dataverse_naming_a_missing_attribute_is_about_the_mapping() -> None:
    from crmsync.dynamics.faults import MissingAttribute, classify
    from crmsync.errors import ObjectUnusable, RecordRejected

    for message in (
        "Could not find a property named 'new_x' on type 'Microsoft.Dynamics.CRM.lead'.",
        "Error identified in Payload provided by the user for Entity :'leads'  ---->  "
        "InnerException : Microsoft.OData.ODataException: The property 'new_x' does not "
        "exist on type 'Microsoft.Dynamics.CRM.lead'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type.",
        "An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
        "Invalid property 'new_x' was found in entity 'Microsoft.Dynamics.CRM.lead'.",
    ):
        found = classify(400, {"error": {"code": "0x80048d19", "message": message}})
        assert isinstance(found, MissingAttribute) and isinstance(found, ObjectUnusable)
        assert found.attribute == "new_x"
    # Other payload errors stay about the record.
    other = classify(400, {"error": {"code": "0x80048d19", "message": "Cannot convert 'x'"}})
    assert isinstance(other, RecordRejected)


def test_only_mismatches_every_request_hits_stop_an_object() -> None:
    from crmsync.engine.drift import blocking
    from crmsync.mapping.check import Mismatch

    found = [
        Mismatch("lead", "email", "max_length", "shorter"),
        Mismatch("lead", "score", "missing_attribute", "gone"),
        Mismatch("account", None, "change_tracking", "off"),
        Mismatch("contact", "rating", "choice", "no option"),
    ]
    assert {o: m.kind for o, m in blocking(found, SPECS).items()} == {
        "lead": "missing_attribute",
        "account": "change_tracking",  # account pulls
    }


def test_an_objects_own_sync_filter_must_be_a_yes_no_attribute_of_its_table() -> None:
    from crmsync.engine.drift import blocking

    specs = build(
        {
            "lead": {"sync_filter_field": "new_tomarketing"},
            "contact": {"sync_filter_field": ""},  # unfiltered: nothing to check
            "opportunity": {"sync_filter_field": "new_sync", "flow": "to_crm"},  # never pulls
        }
    )
    tables = matching()
    found = [(m.object, m.field, m.kind) for m in mismatches(specs, tables)]
    assert found == [("lead", None, "sync_filter")]
    assert mismatches(specs, tables)[0].message == (
        "Dynamics has no attribute lead.new_tomarketing, lead's sync filter"
    )
    lead = tables["lead"]
    assert lead is not None
    lead.attributes["new_tomarketing"] = AttributeInfo("new_tomarketing", "String")
    assert [m.message for m in mismatches(specs, tables)] == [
        "lead.new_tomarketing, lead's sync filter, is String in Dynamics, not Yes/No"
    ]
    assert set(blocking(mismatches(specs, tables), specs)) == {"lead"}
    lead.attributes["new_tomarketing"] = AttributeInfo("new_tomarketing", "Boolean")
    assert mismatches(specs, tables) == []


def test_a_choice_whose_options_are_read_must_be_a_choice_column() -> None:
    """crmsync reads the options of Picklist columns; a Status column's must be declared."""
    specs = build(
        {
            "lead": {
                "fields": {
                    "state": {"attribute": "statuscode", "type": "choice", "labels": True},
                    "quality": {
                        "attribute": "leadqualitycode",
                        "type": "choice",
                        "labels": True,
                    },
                    "declared": {
                        "attribute": "new_stage",
                        "type": "choice",
                        "choices": {"new": 1},
                    },
                }
            }
        }
    )
    tables = matching()
    lead = tables["lead"]
    assert lead is not None
    lead.attributes["statuscode"] = AttributeInfo("statuscode", "Status", options=(1, 2))
    lead.attributes["leadqualitycode"] = AttributeInfo("leadqualitycode", "Picklist", options=(1,))
    lead.attributes["new_stage"] = AttributeInfo("new_stage", "Status", options=(1,))
    found = [(m.field, m.kind, m.message) for m in mismatches(specs, tables) if m.object == "lead"]
    assert found == [
        (
            "state",
            "choice",
            "lead.statuscode is a Status column: crmsync reads the options of Choice columns "
            "only; declare this one's choices in the mapping",
        )
    ]
