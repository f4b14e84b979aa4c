"""A choice's options read from Dynamics' metadata: declared in the mapping by leaving
``choices`` out, laid into the specs by ``mapping/options.py``, refused when Dynamics
has no Choice column to read them from."""

from __future__ import annotations

from typing import Any

import pytest

from crmsync.domain import FieldType
from crmsync.mapping import MappingError, build
from crmsync.mapping.options import laid_in, read_fields, unknown_options, wanted, with_options
from crmsync.store.local_tables import column_type

# A choice that keeps labels (``labels = true``), and the same without the key.
RATING = {"attribute": "leadqualitycode", "type": "choice", "labels": True}
PLAIN = {"attribute": "leadqualitycode", "type": "choice"}


def lead_with(base: dict[str, Any] = RATING, **field: Any) -> dict[str, Any]:
    return {"lead": {"fields": {"rating": {**base, **field}}}}


def test_labels_true_keeps_the_labels_the_worker_reads() -> None:
    specs = build(lead_with(labels=True))
    rating = specs["lead"].field_specs["rating"]
    assert rating.labels and rating.needs_options and rating.choices == ()
    assert str(column_type(rating)) == "VARCHAR(100)"
    assert wanted(specs) == {"lead": "lead"}


@pytest.mark.parametrize("labels", [None, False])
def test_a_choice_without_choices_keeps_option_values_unless_labels_is_true(
    labels: bool | None,
) -> None:
    """The default is the option value in an INTEGER column, as before ``labels``
    existed: an existing mapping's column upgrades unchanged."""
    specs = build(lead_with(PLAIN) if labels is None else lead_with(PLAIN, labels=labels))
    rating = specs["lead"].field_specs["rating"]
    assert not rating.labels and not rating.needs_options
    assert str(column_type(rating)) == "INTEGER"
    assert wanted(specs) == {}
    declared = build(lead_with(PLAIN, choices={"hot": 1}))
    rating = declared["lead"].field_specs["rating"]
    assert rating.labels and not rating.needs_options
    assert str(column_type(rating)) == "VARCHAR(100)"
    assert wanted(declared) == {}


def test_labels_is_a_setting_of_a_choice_without_choices() -> None:
    with pytest.raises(MappingError) as info:
        build(
            {
                "lead": {
                    "fields": {
                        "rating": {**PLAIN, "choices": {"hot": 1}, "labels": False},
                        "score": {"attribute": "new_score", "type": "integer", "labels": True},
                    }
                }
            }
        )
    found = dict(info.value.problems)
    assert "labels = false keeps option values" in found["objects.lead.fields.rating.labels"]
    assert found["objects.lead.fields.score.labels"] == "not a setting of a integer field"


def test_options_read_are_laid_into_the_specs_in_dynamics_order() -> None:
    specs = build(lead_with())
    read = {"lead": {"leadqualitycode": ((1, "Hot"), (2, "Warm"), (3, "Cold")), "other": ()}}
    resolved, problems = with_options(specs, read)
    assert problems == {}
    rating = resolved["lead"].field_specs["rating"]
    assert rating.type is FieldType.CHOICE and rating.options_read
    assert rating.choices == (("Hot", 1), ("Warm", 2), ("Cold", 3))
    assert not rating.needs_options and wanted(resolved) == {}
    # Everything else is the mapping's, untouched.
    assert resolved["contact"] is specs["contact"]
    assert resolved["lead"].fields == specs["lead"].fields
    assert specs["lead"].field_specs["rating"].needs_options  # the input is not changed


def test_a_column_or_table_dynamics_lacks_is_the_objects_problem() -> None:
    specs = build(lead_with())
    _, no_column = with_options(specs, {"lead": {"statuscode": ((1, "New"),)}})
    assert "lead.rating: Dynamics has no Choice column lead.leadqualitycode" in no_column["lead"]
    resolved, no_table = with_options(specs, {"lead": None})
    assert "Dynamics has no table 'lead'" in no_table["lead"]
    assert resolved["lead"].field_specs["rating"].needs_options  # left unresolved


def _read(specs: dict[str, Any]) -> Any:
    resolved, _ = with_options(specs, {"lead": {"leadqualitycode": ((1, "Hot"), (2, "Warm"))}})
    return resolved["lead"]


def test_laid_in_gives_options_read_again_to_a_field_that_had_them() -> None:
    lead = _read(build(lead_with()))
    again = laid_in(lead, {"leadqualitycode": ((1, "Hot"), (2, "Warm"), (4, "Frozen"))})
    assert again.field_specs["rating"].choices == (("Hot", 1), ("Warm", 2), ("Frozen", 4))
    assert again.field_specs["rating"].options_read
    assert lead.field_specs["rating"].choices == (("Hot", 1), ("Warm", 2))  # not changed
    assert again.field_specs["email"] is lead.field_specs["email"]


def test_laid_in_leaves_a_spec_alone_when_nothing_changes_or_nothing_applies() -> None:
    lead = _read(build(lead_with()))
    assert laid_in(lead, {"leadqualitycode": ((1, "Hot"), (2, "Warm"))}) is lead
    assert laid_in(lead, {"statuscode": ((1, "New"),)}) is lead  # not the field's attribute
    assert laid_in(lead, {}) is lead
    # A choice of declared choices (or of option values) never takes options read.
    declared = build(lead_with(PLAIN, choices={"hot": 1}))["lead"]
    assert laid_in(declared, {"leadqualitycode": ((1, "Hot"),)}) is declared
    plain = build(lead_with(PLAIN))["lead"]
    assert laid_in(plain, {"leadqualitycode": ((1, "Hot"),)}) is plain


def test_laid_in_lays_options_into_a_field_waiting_for_them() -> None:
    lead = build(lead_with())["lead"]
    resolved = laid_in(lead, {"leadqualitycode": ((3, "Cold"),)})
    rating = resolved.field_specs["rating"]
    assert rating.choices == (("Cold", 3),) and rating.options_read
    assert not rating.needs_options


def test_read_fields_names_the_columns_whose_options_were_read() -> None:
    specs = build(lead_with())
    assert read_fields(specs["lead"]) == []  # waiting for them
    assert read_fields(_read(specs)) == ["rating"]
    assert read_fields(build(lead_with(PLAIN, choices={"hot": 1}))["lead"]) == []


def test_unknown_options_names_the_fields_of_an_option_none_read_has() -> None:
    lead = _read(build(lead_with()))
    assert unknown_options(lead, {"rating": 4, "email": "a@x.org"}) == ["rating"]
    assert unknown_options(lead, {"rating": 2}) == []
    assert unknown_options(lead, {"rating": None}) == []  # no value: nothing to know
    assert unknown_options(lead, {"email": "a@x.org"}) == []
    # A label is no option value: Dynamics sends option values.
    assert unknown_options(lead, {"rating": "Hot"}) == ["rating"]
    # Fields whose options were not read are not this function's.
    declared = build(lead_with(PLAIN, choices={"hot": 1}))["lead"]
    assert unknown_options(declared, {"rating": 9}) == []
