"""Conflict resolution as a pure function, and a model of the sync over interleavings.

The property test drives one record through random interleavings of local edits,
Dynamics edits, pulls (``resolve`` applied) and pushes, and checks after each
reconciliation that both sides hold what the rule table says, and that every conflict
was journaled exactly once.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.domain import ConflictRule, Flow
from crmsync.engine.conflicts import as_text, resolve, winner
from crmsync.mapping import default_objects

LEAD = default_objects()["lead"]
CONTACT = default_objects()["contact"]
ACCOUNT = default_objects()["account"]
T0 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_only_dynamics_changed_applies_its_value() -> None:
    base = {"email": "a@x", "last_name": "A"}
    res = resolve(LEAD, base, dict(base), {"email": "a@x", "last_name": "B"}, local_pending=False)
    assert res.values == {"last_name": "B"} and not res.conflicts and not res.push_needed
    assert res.synced_values["last_name"] == "B"


def test_only_local_changed_keeps_local_and_still_pushes() -> None:
    base = {"email": "a@x", "last_name": "A"}
    local = {"email": "a@x", "last_name": "L"}
    res = resolve(LEAD, base, local, dict(base), local_pending=True)
    assert res.values == {} and not res.conflicts and res.push_needed


def test_both_changed_lead_local_wins() -> None:
    base = {"last_name": "A"}
    res = resolve(LEAD, base, {"last_name": "L"}, {"last_name": "R"}, local_pending=True)
    assert res.values == {} and res.push_needed
    [c] = res.conflicts
    assert (c.field, c.local_value, c.crm_value, c.winner, c.rule) == (
        "last_name",
        "L",
        "R",
        "local",
        ConflictRule.LOCAL_WINS,
    )


def test_both_changed_contact_crm_wins_and_nothing_left_to_push() -> None:
    base = {"last_name": "A"}
    res = resolve(CONTACT, base, {"last_name": "L"}, {"last_name": "R"}, local_pending=True)
    assert res.values == {"last_name": "R"} and not res.push_needed
    assert [c.winner for c in res.conflicts] == ["crm"]


def test_both_changed_to_the_same_value_is_no_conflict() -> None:
    res = resolve(
        LEAD, {"last_name": "A"}, {"last_name": "S"}, {"last_name": "S"}, local_pending=True
    )
    assert not res.conflicts and res.values == {}


def test_one_way_object_always_takes_dynamics_value_even_if_configured_otherwise() -> None:
    spec = replace(ACCOUNT, conflict_rule=ConflictRule.LOCAL_WINS)
    res = resolve(spec, {"name": "A"}, {"name": "L"}, {"name": "R"}, local_pending=True)
    # A local edit of a table that never pushes is not a side of a conflict.
    assert res.values == {"name": "R"} and not res.conflicts and not res.push_needed


def test_field_rule_and_field_flow_override_the_object_rule() -> None:
    spec = replace(
        LEAD,
        field_rules={"email": ConflictRule.CRM_WINS},
        field_flows={"company": Flow.FROM_CRM},
    )
    base = {"email": "a", "last_name": "A", "company": "C"}
    local = {"email": "l", "last_name": "L", "company": "CL"}
    remote = {"email": "r", "last_name": "R", "company": "CR"}
    res = resolve(spec, base, local, remote, local_pending=True)
    won = {c.field: (c.winner, c.rule) for c in res.conflicts}
    # company does not push: the local edit is not a change to defend, Dynamics' applies.
    assert won == {
        "email": ("crm", ConflictRule.CRM_WINS),
        "last_name": ("local", LEAD.conflict_rule),
    }
    assert res.values == {"email": "r", "company": "CR"}


def test_newest_wins_by_modification_time_ties_to_dynamics() -> None:
    assert winner(ConflictRule.NEWEST_WINS, T0 + timedelta(seconds=1), T0) == "local"
    assert winner(ConflictRule.NEWEST_WINS, T0, T0 + timedelta(seconds=1)) == "crm"
    assert winner(ConflictRule.NEWEST_WINS, T0, T0) == "crm"
    assert winner(ConflictRule.NEWEST_WINS, None, T0) == "crm"
    assert winner(ConflictRule.NEWEST_WINS, T0, None) == "local"


def test_a_new_record_takes_everything_from_dynamics() -> None:
    res = resolve(LEAD, None, None, {"email": "e", "last_name": "N"}, local_pending=False)
    assert res.values == {"email": "e", "last_name": "N"} and not res.conflicts


def test_journal_values_are_text() -> None:
    assert as_text(None) is None and as_text(12) == "12" and as_text("x") == "x"


# --- the model -------------------------------------------------------------------------

FIELDS = ("email", "last_name", "company")
RULES = [ConflictRule.LOCAL_WINS, ConflictRule.CRM_WINS, ConflictRule.NEWEST_WINS]


def expected_winner(rule: ConflictRule, pushes: bool, local_t: int, crm_t: int) -> str:
    """The rule table, written independently of the code under test."""
    if not pushes or rule is ConflictRule.CRM_WINS:
        return "crm"
    if rule is ConflictRule.LOCAL_WINS:
        return "local"
    return "local" if local_t > crm_t else "crm"


events = st.lists(
    st.one_of(
        st.tuples(st.just("local"), st.sampled_from(FIELDS), st.sampled_from("abc")),
        st.tuples(st.just("crm"), st.sampled_from(FIELDS), st.sampled_from("abc")),
        st.tuples(st.just("sync"), st.just(""), st.just("")),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    events=events,
    rule=st.sampled_from(RULES),
    field_rule=st.one_of(st.none(), st.sampled_from(RULES)),
    company_pulled_only=st.booleans(),
)
def test_interleavings_end_as_the_rule_table_says_and_journal_each_conflict_once(
    events: list[tuple[str, str, str]],
    rule: ConflictRule,
    field_rule: ConflictRule | None,
    company_pulled_only: bool,
) -> None:
    spec = replace(
        LEAD,
        conflict_rule=rule,
        field_rules={"email": field_rule} if field_rule else {},
        field_flows={"company": Flow.FROM_CRM} if company_pulled_only else {},
    )
    base: dict[str, Any] = dict.fromkeys(FIELDS, "0")
    local, crm = dict(base), dict(base)
    pending = False
    local_t = crm_t = 0
    clock = 0
    journal: list[tuple[int, str]] = []
    for kind, column, value in [*events, ("sync", "", "")]:
        clock += 1
        if kind == "local":
            if not spec.flow_for(column).pushes:
                continue  # not synced to Dynamics by configuration: not a sync event
            local[column] = value
            pending = True
            local_t = clock
            continue
        if kind == "crm":
            crm[column] = value
            crm_t = clock
            continue
        # What the rule table says, computed before the sync from the three versions.
        want: dict[str, str] = {}
        conflicts = set()
        for f in FIELDS:
            pushes = spec.flow_for(f).pushes
            local_changed = pending and pushes and local[f] != base[f]
            crm_changed = crm[f] != base[f]
            if local_changed and crm_changed and local[f] != crm[f]:
                conflicts.add(f)
                field_rule_f = spec.field_rules.get(f, spec.conflict_rule)
                won = expected_winner(field_rule_f, pushes, local_t, crm_t)
                want[f] = local[f] if won == "local" else crm[f]
            elif crm_changed:
                want[f] = crm[f]
            elif local_changed:
                want[f] = local[f]
            else:
                want[f] = crm[f]
        # The sync: pull (resolve, apply locally), then push what the local side holds.
        res = resolve(
            spec,
            base,
            local,
            crm,
            local_pending=pending,
            local_modified_at=T0 + timedelta(seconds=local_t) if pending else None,
            crm_modified_at=T0 + timedelta(seconds=crm_t),
        )
        local.update(res.values)
        base = dict(res.synced_values)
        journal += [(clock, c.field) for c in res.conflicts]
        if pending and res.push_needed:
            for f in FIELDS:
                if spec.flow_for(f).pushes:
                    crm[f] = local[f]
            base = {**base, **{f: local[f] for f in FIELDS if spec.flow_for(f).pushes}}
        pending = False
        assert {f: crm[f] for f in FIELDS} == want
        assert {f: local[f] for f in FIELDS} == want
        assert sorted(f for t, f in journal if t == clock) == sorted(conflicts)
    assert len(journal) == len(set(journal))
