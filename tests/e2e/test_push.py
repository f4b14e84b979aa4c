"""Push end to end: local writes -> capture -> worker -> real HTTP -> the emulator.

Each test ends by comparing the local tables, the queue, the errors and the emulator's
records: every change is in Dynamics exactly once, or listed as an error.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.store.schema import sync_error, sync_queue, sync_throughput


def local_leads(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM lead")).mappings().all()
    return {r["crm_id"]: dict(r) for r in rows if r["crm_id"]}


def test_inserts_updates_and_deletes_arrive_with_their_values(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    for i in range(30):
        sql(
            store,
            "INSERT INTO lead (email, first_name, last_name, company) VALUES (:e, :f, :l, :c)",
            {"e": f"p{i}@example.com", "f": f"F{i}", "l": f"L{i}", "c": "Acme"},
        )
    drain(sync_settings, store)
    crm = {r["leadid"]: r for r in crm_rows(sync_settings.dynamics_url or "")}
    local = local_leads(store)
    assert len(crm) == 30 and set(crm) == set(local)
    for crm_id, row in local.items():
        assert crm[crm_id]["emailaddress1"] == row["email"]
        assert crm[crm_id]["lastname"] == row["last_name"]

    sql(store, "UPDATE lead SET last_name = 'Changed' WHERE id <= 10")
    sql(store, "DELETE FROM lead WHERE id > 25")
    drain(sync_settings, store)
    crm = {r["leadid"]: r for r in crm_rows(sync_settings.dynamics_url or "")}
    local = local_leads(store)
    assert set(crm) == set(local) and len(crm) == 25
    assert sorted(r["lastname"] for r in crm.values()).count("Changed") == 10
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
        counted = dict(
            conn.execute(
                sa.select(
                    sync_throughput.c.operation, sa.func.sum(sync_throughput.c.synced)
                ).group_by(sync_throughput.c.operation)
            ).all()
        )
    assert counted == {"insert": 30, "update": 10, "delete": 5}


def test_contact_waits_for_its_account_and_binds_the_lookup(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    # Accounts flow from Dynamics by default; here the account is already known there.
    sql(store, "INSERT INTO account (id, name) VALUES (1, 'Acme')")
    sql(store, "INSERT INTO contact (email, account_id) VALUES ('c@example.com', 1)")
    drain(sync_settings, store)
    with store.connect() as conn:
        err = conn.execute(sa.select(sync_error)).mappings().one()
    assert err["error_code"] == "crmsync.missing_reference"
    assert err["object"] == "contact" and err["status"] == "open"


def test_rejected_records_become_errors_while_the_rest_sync(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    crm_rows: Any,
    configure: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    configure(url, duplicate_detection=True, denied_entity_sets=["contacts"])
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('ok1@example.com', 'Fine')")
    sql(
        store,
        "INSERT INTO lead (email, last_name) VALUES ('long@example.com', :l)",
        {"l": "x" * 51},
    )
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('dup@example.com', 'One')")
    drain(sync_settings, store)
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('dup@example.com', 'Two')")
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('ok2@example.com', 'Fine')")
    sql(store, "INSERT INTO contact (email) VALUES ('denied@example.com')")
    drain(sync_settings, store)

    with store.connect() as conn:
        errors = {r["record_label"]: r for r in conn.execute(sa.select(sync_error)).mappings()}
        pending = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_queue)
            .where(sync_queue.c.state == "pending")
        ).scalar()
    assert pending == 0
    # Contacts cannot be read either: one error for the whole object, no record.
    whole = errors.pop(None)
    assert (whole["object"], whole["direction"], whole["error_code"]) == (
        "contact",
        "from_crm",
        "0x80040220",
    )
    assert set(errors) == {"long@example.com", "dup@example.com", "denied@example.com"}
    assert errors["long@example.com"]["error_code"] == "0x80044331"
    assert "lastname" in errors["long@example.com"]["error_message"]
    assert errors["dup@example.com"]["error_code"] == "0x80040333"
    assert errors["denied@example.com"]["error_code"] == "0x80040220"
    for e in errors.values():
        assert e["direction"] == "to_crm" and e["operation"] == "insert" and e["attempts"] == 1
    emails = sorted(r["emailaddress1"] for r in crm_rows(url))
    assert emails == ["dup@example.com", "ok1@example.com", "ok2@example.com"]


def test_fixing_a_parked_record_syncs_it_and_resolves_its_error(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    sql(
        store, "INSERT INTO lead (email, last_name) VALUES ('fix@example.com', :l)", {"l": "y" * 60}
    )
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET last_name = 'Short' WHERE id = 1")
    drain(sync_settings, store)
    with store.connect() as conn:
        status = conn.execute(sa.select(sync_error.c.status)).scalar_one()
    assert status == "resolved"
    assert [r["lastname"] for r in crm_rows(sync_settings.dynamics_url or "")] == ["Short"]
