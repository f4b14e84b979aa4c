"""A mapping with a custom field on lead and a custom table with a lookup, end to end.

The store is upgraded to the mapping (new columns on ``lead``, a new table), the
emulator serves it, and a worker syncs both ways: every type is converted exactly, a
value that does not fit is one sync error naming the field, and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from pull_support import Sales, count

from crmsync.config import Settings, load_settings
from crmsync.emulator import mapped
from crmsync.emulator import model as emulator_model
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate, status
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_error, sync_queue

MAPPING: dict[str, Any] = {
    "lead": {
        "fields": {
            "lead_score": {"attribute": "new_leadscore", "type": "integer", "maximum": 100},
            "budget": {"attribute": "new_budget", "type": "money"},
            "rating": {
                "attribute": "new_rating",
                "type": "choice",
                "choices": {"hot": 1, "warm": 2, "cold": 3},
            },
        }
    },
    "event_registration": {
        "entity_set": "new_eventregistrations",
        "logical_name": "new_eventregistration",
        "primary_key": "new_eventregistrationid",
        "label": "name",
        "flow": "both",
        "fields": {
            "name": {"attribute": "new_name", "type": "string", "max_length": 200},
            "attended": {"attribute": "new_attended", "type": "boolean"},
            "registered": {"attribute": "new_registeredon", "type": "datetime"},
            "event_day": {"attribute": "new_eventday", "type": "date"},
            "fee": {"attribute": "new_fee", "type": "decimal", "precision": 2},
            "notes": {"attribute": "new_notes", "type": "memo"},
            "contact_id": {
                "type": "lookup",
                "target": "contact",
                "attribute": "new_contactid",
                "navigation": "new_ContactId",
            },
        },
    },
}


@pytest.fixture
def mapped_settings(sync_settings: Settings) -> Iterator[Settings]:
    settings = load_settings(**{**sync_settings.model_dump(), "objects": MAPPING})
    added = mapped.serve_mapping(settings.object_specs().values())
    yield settings
    mapped.forget(added)
    activate(default_objects())


@pytest.fixture
def mapped_store(mapped_settings: Settings, store: sa.Engine) -> sa.Engine:
    with write_transaction(store) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('old@x.org', 'Old')"))
    captured = migrate.upgrade(store, mapped_settings.object_specs().values())
    assert captured == ["lead", "contact", "event_registration"]
    return store


def _one(engine: sa.Engine, statement: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(statement)).mappings().one())


def test_upgrade_adds_columns_and_the_table_and_keeps_every_row(
    mapped_store: sa.Engine, mapped_settings: Settings
) -> None:
    columns = {c["name"] for c in sa.inspect(mapped_store).get_columns("lead")}
    assert {"lead_score", "budget", "rating", "email"} <= columns
    assert _one(mapped_store, "SELECT email, lead_score FROM lead") == {
        "email": "old@x.org",
        "lead_score": None,
    }
    assert "event_registration" in sa.inspect(mapped_store).get_table_names()
    # A second upgrade changes nothing, and start-up finds the store as the mapping says.
    migrate.upgrade(mapped_store, mapped_settings.object_specs().values())
    migrate.ensure_current(mapped_store, mapped_settings.object_specs().values())


def test_start_up_refuses_a_store_without_the_mapping(
    store: sa.Engine, mapped_settings: Settings
) -> None:
    with pytest.raises(migrate.StoreNotUpgraded, match=r"lead\.lead_score.*crmsync db upgrade"):
        migrate.ensure_current(store, mapped_settings.object_specs().values())


def test_a_type_change_on_a_column_holding_data_is_refused(
    mapped_store: sa.Engine, mapped_settings: Settings
) -> None:
    date_score = {"attribute": "new_leadscore", "type": "date"}
    changed = {**MAPPING, "lead": {"fields": {"lead_score": date_score}}}
    specs = load_settings(**{**mapped_settings.model_dump(), "objects": changed}).object_specs()
    with pytest.raises(Exception, match=r"lead\.lead_score is .* the mapping says date"):
        migrate.upgrade(mapped_store, specs.values())


def test_custom_field_and_custom_table_sync_both_ways(
    mapped_settings: Settings, mapped_store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    url = mapped_settings.dynamics_url or ""
    with write_transaction(mapped_store) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, last_name, lead_score, budget, rating)"
                " VALUES ('ada@x.org', 'Lovelace', 42, :budget, 'hot')"
            ),
            {"budget": "1234.50"},
        )
        contact_id = conn.execute(
            sa.text(
                "INSERT INTO contact (email, last_name) VALUES ('c@x.org', 'Curie') RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO event_registration"
                " (name, attended, registered, event_day, fee, notes, contact_id)"
                " VALUES ('Summit', :yes, :at, :day, :fee, :notes, :contact)"
            ),
            {
                "yes": True,
                "at": datetime(2026, 3, 4, 9, 30, 15, tzinfo=UTC).replace(tzinfo=None),
                "day": date(2026, 3, 4),
                "fee": "12.50",
                "notes": "line one\nline two",
                "contact": contact_id,
            },
        )
    drain(mapped_settings, mapped_store)
    assert count(mapped_store, sync_error) == 0 and count(mapped_store, sync_queue) == 0

    leads = {
        r["emailaddress1"]: r
        for r in crm_rows(url, "leads", "emailaddress1,new_leadscore,new_budget,new_rating")
    }
    assert leads["ada@x.org"]["new_leadscore"] == 42
    assert Decimal(str(leads["ada@x.org"]["new_budget"])) == Decimal("1234.50")
    assert leads["ada@x.org"]["new_rating"] == 1
    contact_crm = _one(mapped_store, "SELECT crm_id FROM contact")["crm_id"]
    [event] = crm_rows(
        url,
        "new_eventregistrations",
        "new_eventregistrationid,new_name,new_attended,new_registeredon,new_eventday,"
        "new_fee,new_notes,_new_contactid_value",
    )
    assert event["new_name"] == "Summit" and event["new_attended"] is True
    assert event["new_registeredon"] == "2026-03-04T09:30:15Z"
    assert event["new_eventday"] == "2026-03-04"
    assert Decimal(str(event["new_fee"])) == Decimal("12.50")
    assert event["new_notes"] == "line one\nline two"
    assert event["_new_contactid_value"] == contact_crm

    # Dynamics changes them; the pull converts each value back exactly.
    sales = Sales(url)
    try:
        lead_crm = leads["ada@x.org"]["leadid"]
        sales.update("leads", lead_crm, {"new_leadscore": 7, "new_rating": 3, "new_budget": 99.99})
        sales.update(
            "new_eventregistrations",
            event["new_eventregistrationid"],
            {"new_attended": False, "new_fee": 0.1, "new_eventday": "2027-01-31"},
        )
    finally:
        sales.close()
    drain(mapped_settings, mapped_store)
    lead = _one(
        mapped_store, "SELECT lead_score, budget, rating FROM lead WHERE email = 'ada@x.org'"
    )
    assert lead["lead_score"] == 7 and lead["rating"] == "cold"
    assert Decimal(str(lead["budget"])) == Decimal("99.99")
    row = _one(mapped_store, "SELECT attended, fee, event_day FROM event_registration")
    assert not row["attended"]
    assert Decimal(str(row["fee"])) == Decimal("0.10")
    assert str(row["event_day"]) == "2027-01-31"
    # What crmsync applied was not captured to go back.
    assert count(mapped_store, sync_queue) == 0 and count(mapped_store, sync_error) == 0


def test_a_value_that_does_not_fit_is_one_error_naming_the_field(
    mapped_settings: Settings, mapped_store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    url = mapped_settings.dynamics_url or ""
    with write_transaction(mapped_store) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, last_name, rating) VALUES ('a@x.org', 'A', 'lukewarm')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO lead (email, last_name, lead_score) VALUES ('b@x.org', 'B', 101)")
        )
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('c@x.org', 'C')"))
    drain(mapped_settings, mapped_store)
    with mapped_store.connect() as conn:
        errors = conn.execute(sa.select(sync_error.c.error_code, sync_error.c.error_message)).all()
    assert [e.error_code for e in errors] == ["crmsync.invalid_value"] * 2
    messages = " | ".join(e.error_message for e in errors)
    assert "lead_score: 101 is outside" in messages
    assert "rating: 'lukewarm' is not one of the choices" in messages
    # The good record went; the two refused were not sent at all.
    assert sorted(r["emailaddress1"] for r in crm_rows(url, "leads", "emailaddress1")) == [
        "c@x.org",
        "old@x.org",
    ]


def test_an_update_of_only_a_custom_column_is_captured(
    mapped_settings: Settings, mapped_store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    url = mapped_settings.dynamics_url or ""
    drain(mapped_settings, mapped_store)
    with write_transaction(mapped_store) as conn:
        conn.execute(sa.text("UPDATE lead SET lead_score = 55"))
    drain(mapped_settings, mapped_store)
    [lead] = crm_rows(url, "leads", "emailaddress1,new_leadscore")
    assert lead["new_leadscore"] == 55


def test_a_column_gone_from_dynamics_pauses_that_object_alone_and_loses_nothing(
    mapped_settings: Settings, mapped_store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    url = mapped_settings.dynamics_url or ""
    with write_transaction(mapped_store) as conn:
        conn.execute(sa.text("UPDATE lead SET lead_score = 1"))
    drain(mapped_settings, mapped_store)
    # Someone deletes the column in Dynamics.
    lead_table = emulator_model.ENTITIES["leads"]
    column = lead_table.attributes.pop("new_leadscore")
    try:
        with write_transaction(mapped_store) as conn:
            conn.execute(sa.text("UPDATE lead SET lead_score = 9"))
            conn.execute(sa.text("INSERT INTO contact (email, last_name) VALUES ('k@x.org', 'K')"))
        drain(mapped_settings, mapped_store)
        # The other objects kept syncing.
        assert [r["emailaddress1"] for r in crm_rows(url, "contacts", "emailaddress1")] == [
            "k@x.org"
        ]
        with mapped_store.connect() as conn:
            paused = status.paused(conn)
            errors = conn.execute(
                sa.select(sync_error.c.object, sync_error.c.error_code, sync_error.c.status)
            ).all()
            waiting = (
                conn.execute(sa.select(sync_queue.c.state).where(sync_queue.c.object == "lead"))
                .scalars()
                .all()
            )
        assert [(p["object"], p["direction"]) for p in paused] == [("lead", "*")]
        assert "new_leadscore" in (paused[0]["reason"] or "")
        assert [(e.object, e.error_code, e.status) for e in errors] == [
            ("lead", "crmsync.mapping_mismatch", "open")
        ]
        assert waiting == ["pending"]  # still in the backlog, not parked
    finally:
        lead_table.attributes[column.name] = column
    # Dynamics is fixed; the operator resumes: the change waiting goes, nothing lost.
    with write_transaction(mapped_store) as conn:
        status.resume(conn, "lead", "*")
    drain(mapped_settings, mapped_store)
    [lead] = crm_rows(url, "leads", "emailaddress1,new_leadscore")
    assert lead["new_leadscore"] == 9
    assert count(mapped_store, sync_queue) == 0
    with mapped_store.connect() as conn:
        assert status.paused(conn) == []
        open_errors = conn.execute(
            sa.select(sa.func.count()).select_from(sync_error).where(sync_error.c.status == "open")
        ).scalar_one()
    assert open_errors == 0


CRM_WINS_EVENTS: dict[str, Any] = {
    "event_registration": {
        **{k: v for k, v in MAPPING["event_registration"].items() if k != "fields"},
        "conflict_rule": "crm_wins",
        "fields": {
            "name": {"attribute": "new_name", "type": "string", "max_length": 200},
            "registered": {"attribute": "new_registeredon", "type": "datetime"},
        },
    },
}


@pytest.fixture
def crm_wins_settings(sync_settings: Settings) -> Iterator[Settings]:
    settings = load_settings(**{**sync_settings.model_dump(), "objects": CRM_WINS_EVENTS})
    added = mapped.serve_mapping(settings.object_specs().values())
    yield settings
    mapped.forget(added)
    activate(default_objects())


def test_a_typed_field_loaded_initially_keeps_one_base_and_no_false_conflict(
    crm_wins_settings: Settings, store: sa.Engine, drain: Any
) -> None:
    """A datetime read by the initial load (where Dynamics sends it as text) has its base
    in the same JSON form as everything else: a later local edit of it is not taken for
    a conflict that Dynamics wins (found in review: PostgreSQL wrote the base as
    ``+00:00``, the comparison had ``Z``)."""
    migrate.upgrade(store, crm_wins_settings.object_specs().values())
    url = crm_wins_settings.dynamics_url or ""
    sales = Sales(url)
    try:
        crm_id = sales.create(
            "new_eventregistrations", {"new_name": "R", "new_registeredon": "2026-01-01T10:00:00Z"}
        )
        drain(crm_wins_settings, store)  # the initial full read
        with write_transaction(store) as conn:
            conn.execute(
                sa.text("UPDATE event_registration SET registered = :t"),
                {"t": datetime(2026, 2, 2, 10, tzinfo=UTC).replace(tzinfo=None)},
            )
        sales.update("new_eventregistrations", crm_id, {"new_name": "R2"})
        drain(crm_wins_settings, store)
        got = sales.http.get(f"new_eventregistrations({crm_id})").json()
    finally:
        sales.close()
    with store.connect() as conn:
        row = conn.execute(sa.text("SELECT name, registered FROM event_registration")).one()
        conflicts = conn.execute(sa.text("SELECT count(*) FROM sync_conflict")).scalar()
    assert conflicts == 0
    assert row.name == "R2" and "2026-02-02" in str(row.registered)
    assert got["new_registeredon"] == "2026-02-02T10:00:00Z"
