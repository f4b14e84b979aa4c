"""Category, field and fix of every error the emulator answers with, and of crmsync's own
codes; a fallback for unknown codes and messages. Each Dataverse fault is checked as
crmsync stores it: its code, or ``http_<status>`` when Dataverse gives none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import crmsync.emulator
from crmsync import diagnosis, values
from crmsync.domain import ErrorCategory as C
from crmsync.emulator import faults, fetchxml, keys
from crmsync.mapping.build import default_objects
from crmsync.mapping.convert import INVALID_VALUE
from crmsync.store.status import MAPPING_MISMATCH

SPECS = default_objects()
EMULATOR = Path(crmsync.emulator.__file__).parent


class _Entity:
    """The two names of an emulator entity the fault builders read (duck-typed)."""

    logical = "contact"
    entity_set = "contacts"


def stored_code(fault: faults.DataverseFault) -> str:
    return fault.code or f"http_{fault.status}"


# (object, fault, category, local field)
CASES = [
    ("lead", faults.too_long("lead", "lastname", 50), C.DATA_TOO_LONG, "last_name"),
    ("lead", faults.too_long("lead", "emailaddress1", 100), C.DATA_TOO_LONG, "email"),
    ("lead", faults.too_long("lead", "new_unmapped", 10), C.DATA_TOO_LONG, None),
    ("lead", faults.invalid_choice("lead", "companyname", 9, [1, 2]), C.INVALID_VALUE, "company"),
    ("lead", faults.out_of_range("lead", "firstname", 5, 0, 1), C.INVALID_VALUE, "first_name"),
    ("lead", faults.duplicate_detected(), C.DUPLICATE, None),
    ("lead", faults.DataverseFault(412, "0x80040237", "Cannot insert duplicate key."),
     C.DUPLICATE, None),
    ("lead", faults.privilege_denied("u1", "prvCreateLead", 4, "lead"), C.PERMISSION, None),
    ("lead", faults.not_found("lead", "1b2c"), C.MISSING_REFERENCE, None),
    ("contact", faults.not_found("account", "1b2c"), C.MISSING_REFERENCE, "account_id"),
    ("contact", faults.unknown_property("contact", "lastname"), C.MAPPING, "last_name"),
    ("contact", faults.invalid_body_property("contact", "parentcustomerid_account"), C.MAPPING,
     "account_id"),
    ("lead", faults.unknown_segment("leadz"), C.MAPPING, None),
    ("lead", faults.no_resource("http://x/api/data/v9.2/nothing"), C.MAPPING, None),
    ("lead", faults.bad_payload("leads", "Cannot convert the literal 'x' to the expected type "
     "'Edm.Int32'."), C.INVALID_VALUE, None),
    ("lead", faults.bad_payload("leads", "Stream was not readable."), C.OTHER, None),
    ("lead", faults.bad_query("Syntax error in '$filter'."), C.OTHER, None),
    ("lead", faults.version_mismatch(), C.OTHER, None),
    ("lead", faults.already_exists(), C.DUPLICATE, None),
    ("lead", faults.delta_expired(), C.OTHER, None),
    ("lead", faults.track_changes_option("$top"), C.OTHER, None),
    ("lead", faults.too_many_requests(6000, 300, 5), C.THROTTLED, None),
    ("lead", faults.execution_time_exceeded(1_200_000, 300, 5), C.THROTTLED, None),
    ("lead", faults.too_many_concurrent(52, 5), C.THROTTLED, None),
    ("lead", faults.unavailable(), C.UNAVAILABLE, None),
    ("lead", faults.DataverseFault(400, "0x8004e023", "AggregateQueryRecordLimit exceeded."),
     C.OTHER, None),
    ("lead", faults.DataverseFault(400, "0x80040203", "Invalid argument"), C.OTHER, None),
    ("lead", faults.DataverseFault(404, "0x80040217", "Could not find entity with name lead."),
     C.MAPPING, None),
    ("lead", faults.DataverseFault(404, "0x80040217", "Could not find attribute with key "
     "lastname on entity lead."), C.MAPPING, "last_name"),
    ("contact", fetchxml.no_attribute(_Entity(), "emailaddress1"), C.MAPPING, "email"),
    ("lead", faults.DataverseFault(400, "0x80041102", "The entity with a name = 'x' was not "
     "found in the MetadataCache."), C.MAPPING, None),
    ("lead", faults.DataverseFault(400, "0x80060891", "The key attribute 'emailaddress1' is not "
     "defined as an alternate key for entity 'lead'."), C.MAPPING, "email"),
    ("lead", keys.not_found(_Entity()), C.MISSING_REFERENCE, None),
    ("lead", faults.DataverseFault(412, "0x80060892", "Entity Key k violated. A record with the "
     "same value for emailaddress1 already exists"), C.DUPLICATE, None),
    ("lead", faults.DataverseFault(400, "0x0", "Content-ID Reference: '$1' does not exist in "
     "the batch context."), C.OTHER, None),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "fault", "category", "field"), CASES)
def test_every_emulator_fault_has_its_category_and_field(obj, fault, category, field) -> None:
    code = stored_code(fault)
    assert diagnosis.category_of(code, fault.message) == category
    assert diagnosis.field_of(obj, code, fault.message, SPECS) == field
    assert diagnosis.fix_for(category, code).endswith(".")


@pytest.mark.parametrize(
    ("obj", "fault", "category", "field"), [c for c in CASES if c[2] in diagnosis.PASSING]
)
def test_the_codes_of_a_passing_kind_hold_every_emulator_fault_of_it(
    obj, fault, category, field
) -> None:
    """``codes_of`` narrows a search to the codes a kind may have (the push's wake of
    children waiting for a missing reference): it misses none."""
    assert stored_code(fault).lower() in diagnosis.codes_of(category)


def test_the_codes_of_a_missing_reference() -> None:
    assert diagnosis.codes_of(C.MISSING_REFERENCE) == {
        "0x80040217", "0x80060891", "crmsync.local_constraint", "crmsync.missing_parent",
        "crmsync.missing_reference", "http_404",
    }  # fmt: skip
    assert "http_429" in diagnosis.codes_of(C.THROTTLED)
    assert "http_503" in diagnosis.codes_of(C.UNAVAILABLE)


def test_every_code_the_emulator_answers_with_is_among_the_cases() -> None:
    written = set()
    for path in EMULATOR.glob("*.py"):
        written |= set(re.findall(r'"(0x[0-9a-fA-F]+)"', path.read_text(encoding="utf-8")))
    covered = {f.code for _, f, _, _ in CASES}
    assert written - covered == set()


@pytest.mark.parametrize(
    ("code", "message", "category", "field"),
    [
        (INVALID_VALUE, "lead 7: email: 'x' is not text: nothing was sent", C.INVALID_VALUE,
         "email"),
        (values.INVALID_CRM_ID, "lead 7: the row's crm_id 'x' is not a Dynamics id",
         C.INVALID_VALUE, None),
        (values.MISSING_PARENT, "account_id refers to account 1b2c, which is not in the local",
         C.MISSING_REFERENCE, "account_id"),
        (values.MISSING_REFERENCE, "contact 3 refers to account 7, which is not in Dynamics",
         C.MISSING_REFERENCE, None),
        (values.UNMAPPABLE, "last_name: 'x' is longer than 50", C.INVALID_VALUE, "last_name"),
        (values.LOCAL_CONSTRAINT, "UNIQUE constraint failed: contact.email", C.DUPLICATE, None),
        (values.LOCAL_CONSTRAINT, "FOREIGN KEY constraint failed", C.MISSING_REFERENCE, None),
        (values.LOCAL_CONSTRAINT, "value too long for type character varying(50)",
         C.DATA_TOO_LONG, None),
        (values.LOCAL_CONSTRAINT, "NOT NULL constraint failed: contact.email", C.INVALID_VALUE,
         None),
        (values.RECORD_GONE, "the local row is gone", C.OTHER, None),
        (MAPPING_MISMATCH, "Dynamics no longer matches the mapping", C.MAPPING, None),
        ("http_503", "gave up after 8 attempts: HTTP 503", C.UNAVAILABLE, None),
        ("http_500", "gave up after 8 attempts: HTTP 500", C.UNAVAILABLE, None),
        ("http_429", "gave up after 8 attempts", C.THROTTLED, None),
        ("http_403", "denied", C.PERMISSION, None),
        ("ConnectTimeout", "gave up after 8 attempts: timed out", C.UNAVAILABLE, None),
        ("RemoteProtocolError", "gave up after 8 attempts: cut", C.UNAVAILABLE, None),
        ("0x80040265", "the plug-in said no", C.OTHER, None),
        ("0xdeadbeef", "something new", C.OTHER, None),
        ("", "", C.OTHER, None),
        ("ValueError", "odd", C.OTHER, None),
    ],
)  # fmt: skip
def test_crmsync_codes_transients_and_unknowns(code, message, category, field) -> None:
    assert diagnosis.category_of(code, message) == category
    assert diagnosis.field_of(
        "contact" if "account" in message else "lead", code, message, SPECS
    ) == (field)


def test_a_name_outside_the_mapping_or_an_unknown_object_gives_no_field() -> None:
    assert diagnosis.field_of("lead", INVALID_VALUE, "lead 1: secret: bad", SPECS) is None
    message = faults.too_long("lead", "lastname", 50).message
    assert diagnosis.field_of("nosuch", "0x80044331", message, SPECS) is None


def test_fix_comes_from_the_code_row_else_the_category_row() -> None:
    own = next(f for f in diagnosis.FIXES if f.code == "0x80044331")
    assert diagnosis.fix_for(C.DATA_TOO_LONG, "0x80044331") == own.fix
    general = next(f for f in diagnosis.FIXES if f.category == C.PERMISSION and f.code is None)
    assert diagnosis.fix_for(C.PERMISSION, "0x80040220") == general.fix
    assert diagnosis.fix_for("nonsense", "0xdead") == diagnosis.category_fixes()[C.OTHER]


def test_every_category_has_a_fix_and_every_fix_is_one_sentence() -> None:
    assert set(diagnosis.category_fixes()) == set(C)
    for f in diagnosis.FIXES:
        assert f.fix.endswith(".") and f.fix.count(". ") == 0, f.fix
        if f.code is not None and f.code not in ("0x80048d19", "crmsync.local_constraint"):
            assert diagnosis.category_of(f.code, "") == f.category


def test_passing_kinds() -> None:
    assert {C.THROTTLED, C.UNAVAILABLE, C.PERMISSION, C.MISSING_REFERENCE} == diagnosis.PASSING
