"""The mapping as data: the default file, a user's additions, and every problem at once."""

from __future__ import annotations

from typing import Any

import pytest

from crmsync.domain import ConflictRule, FieldType, Flow, Lookup
from crmsync.mapping import MappingError, build, default_objects


def problems(overrides: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(MappingError) as info:
        build(overrides)
    return dict(info.value.problems)


def test_the_default_mapping_is_the_contracts() -> None:
    specs = default_objects()
    assert list(specs) == ["lead", "contact", "account", "opportunity"]
    lead = specs["lead"]
    assert lead.fields == {
        "email": "emailaddress1",
        "first_name": "firstname",
        "last_name": "lastname",
        "company": "companyname",
    }
    assert lead.flow is Flow.BOTH and lead.conflict_rule is ConflictRule.LOCAL_WINS
    assert specs["contact"].lookups == (
        Lookup("account_id", "account", "parentcustomerid_account", "_parentcustomerid_value"),
    )
    assert specs["opportunity"].lookups == (
        Lookup("account_id", "account", "parentaccountid", "_parentaccountid_value"),
    )
    assert specs["account"].flow is Flow.FROM_CRM
    assert all(s.standard for s in specs.values())


def test_a_custom_field_is_added_to_a_standard_object_and_the_rest_kept() -> None:
    specs = build(
        {"lead": {"fields": {"lead_score": {"attribute": "new_leadscore", "type": "integer"}}}}
    )
    lead = specs["lead"]
    assert list(lead.field_specs) == ["email", "first_name", "last_name", "company", "lead_score"]
    score = lead.field_specs["lead_score"]
    assert score.type is FieldType.INTEGER
    assert (score.minimum, score.maximum) == (-(2**31), 2**31 - 1)


def test_the_v1_form_replaces_the_default_map_and_renames_keep_the_type() -> None:
    v1 = build({"lead": {"fields": {"email": "emailaddress2", "last_name": "lastname"}}})
    assert v1["lead"].fields == {"email": "emailaddress2", "last_name": "lastname"}
    # A table entry changes only what it names.
    longer = build({"lead": {"fields": {"email": {"max_length": 200}}}})
    assert longer["lead"].field_specs["email"].max_length == 200
    assert longer["lead"].field_specs["email"].attribute == "emailaddress1"
    assert len(longer["lead"].fields) == 4


def test_a_custom_object_with_a_lookup_and_field_rules() -> None:
    specs = build(
        {
            "event_registration": {
                "entity_set": "new_eventregistrations",
                "logical_name": "new_eventregistration",
                "primary_key": "new_eventregistrationid",
                "label": "name",
                "conflict_rule": "crm_wins",
                "fields": {
                    "name": {"attribute": "new_name", "type": "string", "max_length": 200},
                    "fee": {"attribute": "new_fee", "type": "money", "flow": "to_crm"},
                    "contact_id": {
                        "type": "lookup",
                        "target": "contact",
                        "attribute": "new_contactid",
                    },
                },
            }
        }
    )
    spec = specs["event_registration"]
    assert not spec.standard and spec.table == "event_registration"
    assert spec.lookups == (
        Lookup("contact_id", "contact", "new_contactid", "_new_contactid_value"),
    )
    assert spec.flow_for("fee") is Flow.TO_CRM and spec.flow_for("name") is Flow.BOTH
    assert spec.rule_for("name") is ConflictRule.CRM_WINS
    assert spec.field_specs["fee"].precision == 2


def test_every_problem_is_listed_at_once_by_its_toml_path() -> None:
    found = problems(
        {
            "event_registration": {
                "entity_set": "new_eventregistrations",
                "logical_name": "new_eventregistration",
                "primary_key": "new_eventregistrationid",
                "label": "title",
                "fields": {
                    "name": {"attribute": "new_name", "type": "text"},
                    "attended": {"attribute": "new_attended", "type": "boolean", "max_length": 3},
                    "contact_id": {
                        "type": "lookup",
                        "target": "person",
                        "attribute": "new_contactid",
                    },
                    "fee": {"attribute": "new_fee", "type": "decimal", "precision": 11},
                    "again": {"attribute": "new_attended", "type": "boolean"},
                    "long": {"attribute": "new_long", "type": "string", "max_length": 5000},
                    "Bad Name": {"attribute": "new_x", "type": "string"},
                },
            },
            "widget": {"fields": {"x": {"attribute": "new_x", "type": "string"}}},
            "lead": {"entity_set": "contacts", "fields": {"score": {"attribute": "new_score"}}},
            "drop table": {},
        }
    )
    e = "objects.event_registration"
    assert found[f"{e}.fields.name.type"].startswith("Input should be")
    assert found[f"{e}.fields.attended.max_length"] == "not a setting of a boolean field"
    assert found[f"{e}.fields.fee.precision"] == "a decimal has at most 10 decimal places"
    assert found[f"{e}.fields.long.max_length"] == "Dataverse allows at most 4000"
    assert "is not a lower-case SQL column name" in found[f"{e}.fields.Bad Name"]
    assert found["objects.widget.entity_set"] == "required for an object that is not standard"
    assert found["objects.lead.entity_set"] == "the standard object lead keeps its entity_set"
    assert "lower-case SQL name" in found["objects.drop table"]


def test_problems_across_fields_and_objects() -> None:
    base = {
        "entity_set": "new_things",
        "logical_name": "new_thing",
        "primary_key": "new_thingid",
        "label": "ref",
        "fields": {
            "name": {"attribute": "new_name", "type": "string"},
            "other": {"attribute": "new_name", "type": "string"},
            "ref": {"type": "lookup", "target": "nowhere", "attribute": "new_refid"},
        },
    }
    found = problems(
        {
            "thing": base,
            "thing2": {
                **base,
                "fields": {"n": {"attribute": "new_n", "type": "memo"}},
                "label": "n",
            },
        }
    )
    assert found["objects.thing.fields.other.attribute"] == "'new_name' is already mapped to name"
    assert found["objects.thing.label"] == "a lookup cannot be the label"
    assert found["objects.thing2.entity_set"] == "'new_things' is also thing's"


def test_a_lookup_to_an_unmapped_object() -> None:
    found = problems(
        {
            "thing": {
                "entity_set": "new_things",
                "logical_name": "new_thing",
                "primary_key": "new_thingid",
                "label": "name",
                "fields": {
                    "name": {"attribute": "new_name", "type": "string"},
                    "ref": {"type": "lookup", "target": "nowhere", "attribute": "new_refid"},
                },
            }
        }
    )
    assert found["objects.thing.fields.ref.target"] == "'nowhere' is not a mapped object"


@pytest.mark.parametrize(
    "column",
    ["id", "crm_id", "updated_at"],
)
def test_columns_crmsync_keeps_cannot_be_mapped(column: str) -> None:
    found = problems({"lead": {"fields": {column: {"attribute": "new_x", "type": "string"}}}})
    assert found[f"objects.lead.fields.{column}"] == f"'{column}' is a column crmsync keeps itself"


def test_reserved_and_invalid_names() -> None:
    found = problems(
        {
            "sync_queue": {
                "entity_set": "new_qs",
                "logical_name": "new_q",
                "primary_key": "new_qid",
                "label": "name",
                "fields": {"name": {"attribute": "new_name", "type": "string"}},
            },
            "lead": {"fields": {"x": {"attribute": "new_x; drop", "type": "string"}}},
        }
    )
    assert "crmsync's own tables" in found["objects.sync_queue.table"]
    assert "not a Dataverse logical name" in found["objects.lead.fields.x.attribute"]


def _person(**extra: Any) -> dict[str, Any]:
    return {
        "table": "people",
        "entity_set": "new_people",
        "logical_name": "new_person",
        "primary_key": "new_personid",
        "label": "full_name",
        "fields": {"full_name": {"attribute": "new_name", "type": "string"}},
        **extra,
    }


def test_an_attached_table_keeps_its_own_names() -> None:
    person = build({"person": _person(id_column="person_id", crm_id_column="dynamics_id")})[
        "person"
    ]
    assert (person.table, person.attached, person.timestamps) == ("people", True, False)
    assert (person.id_column, person.crm_id_column) == ("person_id", "dynamics_id")
    plain = build({"person": _person()})["person"]
    assert (plain.id_column, plain.crm_id_column, plain.attached) == ("id", "crm_id", True)
    # Without table, crmsync creates (and owns) the table: no attachment.
    created = build({"person": {**_person(), "table": None}})["person"]
    assert (created.table, created.attached, created.timestamps) == ("person", False, True)
    assert not any(s.attached for s in default_objects().values())


def test_what_an_attached_table_may_not_be_is_listed_by_its_path() -> None:
    found = problems(
        {
            "person": _person(
                id_column="Person ID",
                crm_id_column="dynamics_id",
                fields={
                    "full_name": {"attribute": "new_name", "type": "string"},
                    "dynamics_id": {"attribute": "new_dyn", "type": "string"},
                },
            ),
            "same": {
                **_person(table="same_ids", id_column="pk", crm_id_column="pk"),
                "entity_set": "new_sames",
            },
            "loose": {
                **_person(table=None, id_column="pk"),
                "entity_set": "new_looses",
            },
            "lead": {"id_column": "lead_id", "crm_id_column": "dyn"},
            "bad": {**_person(table="drop table people"), "entity_set": "new_bads"},
        }
    )
    assert found["objects.person.id_column"] == "'Person ID' is not a lower-case SQL column name"
    assert found["objects.person.fields.dynamics_id"] == (
        "'dynamics_id' is the table's crm_id_column, kept by crmsync"
    )
    assert found["objects.same.crm_id_column"] == "must differ from id_column"
    assert found["objects.loose.id_column"] == "a setting of an attached table: only with table"
    assert found["objects.lead.id_column"].startswith("the standard object lead keeps its own")
    assert "objects.lead.crm_id_column" in found
    assert "is not a lower-case SQL name" in found["objects.bad.table"]


def test_an_attached_table_may_not_be_another_objects() -> None:
    found = problems(
        {
            "person": _person(table="contact"),
            "queue": {**_person(table="sync_queue"), "entity_set": "new_queues"},
        }
    )
    assert found["objects.person.table"] == "'contact' is also contact's"
    assert "crmsync's own tables" in found["objects.queue.table"]


def test_words_sql_reserves_are_refused_as_names() -> None:
    found = problems(
        {
            "order": {
                "entity_set": "new_orders",
                "logical_name": "new_order",
                "primary_key": "new_orderid",
                "label": "title",
                "fields": {
                    "title": {"attribute": "new_title", "type": "string"},
                    "group": {"attribute": "new_group", "type": "string"},
                },
            }
        }
    )
    assert "SQL reserves" in found["objects.order.table"]
    assert "SQL reserves" in found["objects.order.fields.group"]


def test_an_object_may_have_its_own_sync_filter_or_none() -> None:
    specs = build(
        {
            "lead": {"sync_filter_field": "new_tomarketing"},
            "contact": {"sync_filter_field": ""},
        }
    )
    assert specs["lead"].filter_field("new_synctomkto") == "new_tomarketing"
    assert specs["contact"].filter_field("new_synctomkto") is None
    # Not given: the setting's, or none.
    assert specs["account"].filter_field("new_synctomkto") == "new_synctomkto"
    assert specs["account"].filter_field(None) is None


def test_a_sync_filter_is_a_logical_name_and_if_mapped_a_boolean() -> None:
    assert problems({"lead": {"sync_filter_field": "New Sync"}}) == {
        "objects.lead.sync_filter_field": "'New Sync' is not a Dataverse logical name"
    }
    found = problems(
        {
            "lead": {
                "sync_filter_field": "new_score",
                "fields": {"score": {"attribute": "new_score", "type": "integer"}},
            }
        }
    )
    assert found == {
        "objects.lead.sync_filter_field": (
            "'new_score' is mapped as score (integer), not a Yes/No field"
        )
    }
    ok = build(
        {
            "lead": {
                "sync_filter_field": "new_tomkto",
                "fields": {"to_marketing": {"attribute": "new_tomkto", "type": "boolean"}},
            }
        }
    )
    assert ok["lead"].filter_field(None) == "new_tomkto"
