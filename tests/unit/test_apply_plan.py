"""Planning the apply of ``from_crm`` entries: data in, decision out, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from crmsync.domain import default_objects
from crmsync.engine import changes as ch
from crmsync.engine.apply import (
    MISSING_PARENT,
    UNMAPPABLE,
    Context,
    Defer,
    Park,
    Push,
    Skip,
    Write,
    plan_apply,
)
from crmsync.store.queue import Entry

SPECS = default_objects()
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
LEAD_ID = "aaaaaaaa-0000-0000-0000-000000000001"
ACCOUNT_ID = "bbbbbbbb-0000-0000-0000-000000000002"


def entry(
    obj: str, change: ch.Change, operation: str = "update", record_id: int | None = None
) -> Entry:
    return Entry(
        1,
        obj,
        "from_crm",
        change.crm_id,
        record_id,
        change.crm_id,
        operation,
        None,
        change.payload(),
        1,
        0,
        NOW,
    )


def lead(version: int = 20, **values: Any) -> ch.Change:
    base = {"email": "a@x", "first_name": None, "last_name": "R", "company": None}
    return ch.Change(
        LEAD_ID, {**base, **values}, {}, version=version, modified_at="2026-11-25T12:00:00Z"
    )


def ctx(**kw: Any) -> Context:
    return Context(
        rows=kw.get("rows", {}),
        synced=kw.get("synced", {}),
        pushes=kw.get("pushes", {}),
        parents=kw.get("parents", {}),
        parents_on_their_way=frozenset(kw.get("on_way", ())),
    )


LOCAL = {
    "id": 7,
    "crm_id": LEAD_ID,
    "email": "a@x",
    "first_name": None,
    "last_name": "L",
    "company": None,
    "crm_deleted_at": None,
}


def synced(version: int, excluded: bool = False, **values: Any) -> SimpleNamespace:
    return SimpleNamespace(
        crm_version=version, etag=None, synced_values={**values}, excluded=excluded
    )


def test_new_record_is_inserted() -> None:
    step = plan_apply(
        entry("lead", lead(), "insert"), SPECS["lead"], ctx(), delete_behaviour="delete"
    )
    assert isinstance(step, Write) and step.kind == "insert" and step.values["last_name"] == "R"


def test_update_resolves_against_the_synced_base() -> None:
    c = ctx(rows={("lead", LEAD_ID): LOCAL}, synced={("lead", 7): synced(10, last_name="L")})
    step = plan_apply(
        entry("lead", lead(), record_id=7), SPECS["lead"], c, delete_behaviour="delete"
    )
    assert isinstance(step, Write) and step.kind == "update" and step.values == {"last_name": "R"}


def test_older_than_synced_is_skipped() -> None:
    c = ctx(rows={("lead", LEAD_ID): LOCAL}, synced={("lead", 7): synced(30)})
    step = plan_apply(
        entry("lead", lead(20), record_id=7), SPECS["lead"], c, delete_behaviour="delete"
    )
    assert isinstance(step, Skip)


def test_waits_while_a_local_change_of_the_record_is_being_sent() -> None:
    c = ctx(rows={("lead", LEAD_ID): LOCAL}, pushes={("lead", 7): Push(True, NOW)})
    step = plan_apply(
        entry("lead", lead(), record_id=7), SPECS["lead"], c, delete_behaviour="delete"
    )
    assert isinstance(step, Defer)


def test_value_too_long_for_the_local_column_is_parked() -> None:
    step = plan_apply(
        entry("lead", lead(last_name="x" * 300), "insert"),
        SPECS["lead"],
        ctx(),
        delete_behaviour="delete",
    )
    assert isinstance(step, Park) and step.code == UNMAPPABLE and "last_name" in step.message


def test_child_waits_for_a_staged_parent_and_is_parked_without_one() -> None:
    contact = ch.Change(
        "cccccccc-0000-0000-0000-000000000003",
        {"last_name": "C"},
        {"account_id": ACCOUNT_ID},
        version=5,
    )
    e = entry("contact", contact, "insert")
    waiting = plan_apply(
        e, SPECS["contact"], ctx(on_way={("account", ACCOUNT_ID)}), delete_behaviour="delete"
    )
    assert isinstance(waiting, Defer)
    missing = plan_apply(e, SPECS["contact"], ctx(), delete_behaviour="delete")
    assert isinstance(missing, Park) and missing.code == MISSING_PARENT
    found = plan_apply(
        e, SPECS["contact"], ctx(parents={("account", ACCOUNT_ID): 42}), delete_behaviour="delete"
    )
    assert isinstance(found, Write) and found.values["account_id"] == 42


def test_deletes_delete_or_mark_and_ignore_unknown_records() -> None:
    gone = ch.deleted(LEAD_ID)
    c = ctx(rows={("lead", LEAD_ID): LOCAL})
    deleting = plan_apply(
        entry("lead", gone, "delete", 7), SPECS["lead"], c, delete_behaviour="delete"
    )
    marking = plan_apply(
        entry("lead", gone, "delete", 7), SPECS["lead"], c, delete_behaviour="mark"
    )
    assert isinstance(deleting, Write) and deleting.kind == "delete"
    assert isinstance(marking, Write) and marking.kind == "mark"
    unknown = plan_apply(
        entry("lead", gone, "delete"), SPECS["lead"], ctx(), delete_behaviour="delete"
    )
    assert isinstance(unknown, Skip)


def test_an_excluded_record_ignores_changes_staged_before_its_exclusion() -> None:
    c = ctx(rows={("lead", LEAD_ID): LOCAL}, synced={("lead", 7): synced(10, excluded=True)})
    for change, op in ((lead(), "update"), (ch.deleted(LEAD_ID), "delete")):
        step = plan_apply(entry("lead", change, op, 7), SPECS["lead"], c, delete_behaviour="delete")
        assert isinstance(step, Skip)


def test_a_record_included_again_takes_dynamics_values_and_drops_local_edits() -> None:
    # Locally edited while excluded (email and last name); Dynamics changed nothing but
    # the filter field: its values are applied all the same, the pending push is moot.
    local = {**LOCAL, "email": "local@x", "last_name": "Local"}
    base = {"email": "a@x", "first_name": None, "last_name": "R", "company": None}
    c = ctx(
        rows={("lead", LEAD_ID): local},
        synced={("lead", 7): synced(30, excluded=True, **base)},
        pushes={("lead", 7): Push(False, NOW)},
    )
    back = ch.Change(LEAD_ID, base, {}, version=40, rejoin=True)
    step = plan_apply(entry("lead", back, "update", 7), SPECS["lead"], c, delete_behaviour="delete")
    assert isinstance(step, Write) and step.rejoin and step.kind == "update"
    assert step.values == {"email": "a@x", "last_name": "R"}
    assert step.resolution is not None and not step.resolution.push_needed
    assert not step.resolution.conflicts
    # Once included (state no longer excluded), a rejoin entry is an ordinary update.
    c = ctx(rows={("lead", LEAD_ID): local}, synced={("lead", 7): synced(30, **base)})
    again = plan_apply(
        entry("lead", back, "update", 7), SPECS["lead"], c, delete_behaviour="delete"
    )
    assert isinstance(again, Write) and not again.rejoin
