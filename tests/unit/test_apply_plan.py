"""Planning the apply of ``from_crm`` entries: data in, decision out, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from crmsync.domain import ConflictRule
from crmsync.engine import changes as ch
from crmsync.engine.apply import plan_apply
from crmsync.mapping import default_objects
from crmsync.values import MISSING_PARENT, UNMAPPABLE, Defer, Entry, Park, Skip
from crmsync.values import ApplyContext as Context
from crmsync.values import LocalWrite as Write
from crmsync.values import PendingPush as Push

SPECS = default_objects()
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)
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


def test_a_record_included_again_settles_both_sides_with_the_rule_table() -> None:
    # Locally edited while excluded (email and last name; the push was dropped, none is
    # waiting); Dynamics changed the last name too, and the company. Against the last
    # synced values: the company is Dynamics' alone, the email ours alone (to be sent),
    # the last name both sides' (leads: local wins, journaled).
    local = {**LOCAL, "email": "local@x", "last_name": "Local"}
    base = {"email": "a@x", "first_name": None, "last_name": "R", "company": None}
    c = ctx(
        rows={("lead", LEAD_ID): local},
        synced={("lead", 7): synced(30, excluded=True, **base)},
    )
    remote = {**base, "last_name": "Remote", "company": "Co"}
    back = ch.Change(LEAD_ID, remote, {}, version=40, rejoin=True)
    step = plan_apply(entry("lead", back, "update", 7), SPECS["lead"], c, delete_behaviour="delete")
    assert isinstance(step, Write) and step.rejoin and step.kind == "update"
    assert step.values == {"company": "Co"}
    assert step.resolution is not None and step.resolution.push_needed
    [conflict] = step.resolution.conflicts
    assert (conflict.field, conflict.local_value, conflict.crm_value, conflict.winner) == (
        "last_name",
        "Local",
        "Remote",
        "local",
    )
    # Nothing changed locally: Dynamics' values are applied and nothing is to be sent.
    c = ctx(
        rows={("lead", LEAD_ID): {**LOCAL, "last_name": "R"}},
        synced={("lead", 7): synced(30, excluded=True, **base)},
    )
    step = plan_apply(entry("lead", back, "update", 7), SPECS["lead"], c, delete_behaviour="delete")
    assert isinstance(step, Write) and step.values == {"last_name": "Remote", "company": "Co"}
    assert step.resolution is not None and not step.resolution.push_needed
    assert not step.resolution.conflicts
    # Once included (state no longer excluded), a rejoin entry is an ordinary update.
    c = ctx(rows={("lead", LEAD_ID): local}, synced={("lead", 7): synced(30, **base)})
    again = plan_apply(
        entry("lead", back, "update", 7), SPECS["lead"], c, delete_behaviour="delete"
    )
    assert isinstance(again, Write) and not again.rejoin


def test_newest_wins_on_a_rejoin_takes_the_local_time_from_the_row_if_written_since() -> None:
    # No push is waiting (dropped while excluded): the local edit's time is the row's
    # updated_at when it is later than the last sync, else unknown (counts as oldest).
    spec = replace(SPECS["lead"], conflict_rule=ConflictRule.NEWEST_WINS)
    base = {"email": "a@x", "first_name": None, "last_name": "R", "company": None}
    remote = ch.Change(
        LEAD_ID,
        {**base, "last_name": "Remote"},
        {},
        version=40,
        rejoin=True,
        modified_at="2026-11-25T12:00:00Z",
    )
    state = SimpleNamespace(**vars(synced(30, excluded=True, **base)), last_synced_at=NOW - HOUR)

    def winner(updated_at: datetime) -> str:
        row = {**LOCAL, "last_name": "Local", "updated_at": updated_at}
        c = ctx(rows={("lead", LEAD_ID): row}, synced={("lead", 7): state})
        step = plan_apply(entry("lead", remote, "update", 7), spec, c, delete_behaviour="delete")
        assert isinstance(step, Write) and step.resolution is not None
        [conflict] = step.resolution.conflicts
        return conflict.winner

    assert winner(NOW + MINUTE) == "local"  # edited after Dynamics' change
    assert winner(NOW - MINUTE) == "crm"  # edited before it
    assert winner(NOW - 2 * HOUR) == "crm"  # not maintained (older than the last sync)


def test_own_write_rebases_only_the_fields_changed_locally() -> None:
    """A refetch after a 412 of a record last written by crmsync's own user: the field
    changed locally (the unrecorded push may have carried it) takes Dynamics' value as
    its base and keeps the local value; a field unchanged locally was not in that push,
    so Dynamics' value of it (a flow writing as crmsync's user) is applied."""
    from types import SimpleNamespace

    from crmsync.values import ApplyContext, Entry, PendingPush

    crm_id = "aaaaaaaa-0000-0000-0000-000000000001"
    base = {"email": "a@x", "first_name": None, "last_name": "Base", "account_id": None}
    local = {
        "id": 7,
        "crm_id": crm_id,
        "email": "a@x",
        "first_name": None,
        "last_name": "Second",
        "account_id": None,
        "crm_deleted_at": None,
    }

    def plan(own_write: bool, dynamics_last_name: str) -> Any:
        change = ch.Change(
            crm_id,
            {"email": "a@x", "first_name": "Auto", "last_name": dynamics_last_name},
            {"account_id": None},
            version=30,
            modified_at="2026-11-25T12:00:00Z",
            own_write=own_write,
        )
        entry = Entry(
            1, "contact", "from_crm", crm_id, 7, crm_id, "update", None, change.payload(), 1, 0, NOW
        )
        state = SimpleNamespace(crm_version=20, etag=None, synced_values=base, excluded=False)
        ctx = ApplyContext(
            rows={("contact", crm_id): local},
            synced={("contact", 7): state},
            pushes={("contact", 7): PendingPush(False, NOW)},
            parents={},
            parents_on_their_way=frozenset(),
        )
        return plan_apply(entry, SPECS["contact"], ctx, delete_behaviour="delete")

    # crmsync's own unrecorded push of last_name = "First", then the local "Second".
    own = plan(True, "First")
    assert own.values == {"first_name": "Auto"}  # the flow's change applies
    assert own.resolution.conflicts == [] and own.resolution.push_needed
    # Without own_write the same answer is a conflict Dynamics wins (contact: crm_wins).
    other = plan(False, "First")
    assert other.values == {"first_name": "Auto", "last_name": "First"}


def test_a_resync_overwrites_at_the_synced_version_but_not_with_an_older_one() -> None:
    """A resync (or repair) re-applies Dynamics' values over local drift at the version
    already synced; one read before a newer change was applied must not bring the older
    values back (the newer change, already applied, would be lost locally)."""
    c = ctx(rows={("lead", LEAD_ID): LOCAL}, synced={("lead", 7): synced(30, last_name="X")})

    def plan(version: int) -> Any:
        change = replace(lead(version), resync=True)
        return plan_apply(
            entry("lead", change, record_id=7), SPECS["lead"], c, delete_behaviour="delete"
        )

    same = plan(30)
    assert isinstance(same, Write) and same.values == {"last_name": "R"}
    assert isinstance(plan(20), Skip)
