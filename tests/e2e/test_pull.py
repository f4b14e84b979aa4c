"""Pull end to end: a Dynamics user's writes -> change tracking -> worker -> local tables.

Dynamics users here are separate application users of the emulator writing over real
HTTP (``Sales``); ``test_pull_sdk.py`` does the same with Microsoft's own SDK. Every
test drains with an in-process ``worker --once`` and compares both sides.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pull_support import Sales, count, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings, load_settings
from crmsync.store.schema import sync_cursor, sync_error, sync_queue, sync_record


def test_creates_updates_and_deletes_reach_local_tables_with_lookups(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    acme = sales.create("accounts", {"name": "Acme"})
    globex = sales.create("accounts", {"name": "Globex"})
    lead = sales.create("leads", {"emailaddress1": "ada@example.com", "lastname": "Lovelace"})
    contact = sales.create(
        "contacts",
        {
            "emailaddress1": "c@example.com",
            "lastname": "Curie",
            "parentcustomerid_account@odata.bind": f"/accounts({acme})",
        },
    )
    deal = sales.create(
        "opportunities", {"name": "Big deal", "parentaccountid@odata.bind": f"/accounts({acme})"}
    )
    drain(sync_settings, store)

    accounts = rows(store, "account")
    assert {a["name"] for a in accounts.values()} == {"Acme", "Globex"}
    assert rows(store, "lead")[lead]["email"] == "ada@example.com"
    assert rows(store, "contact")[contact]["account_id"] == accounts[acme]["id"]
    assert rows(store, "opportunity")[deal]["account_id"] == accounts[acme]["id"]
    # Nothing applied from Dynamics was captured to go back.
    assert count(store, sync_queue) == 0
    assert count(store, sync_cursor, sync_cursor.c.delta_link.is_not(None)) == 4

    sales.update("leads", lead, {"lastname": "King"})
    sales.update(
        "contacts", contact, {"parentcustomerid_account@odata.bind": f"/accounts({globex})"}
    )
    sales.update("opportunities", deal, {"name": "Bigger deal"})
    sales.delete("accounts", acme)
    drain(sync_settings, store)
    assert rows(store, "lead")[lead]["last_name"] == "King"
    assert rows(store, "contact")[contact]["account_id"] == accounts[globex]["id"]
    assert rows(store, "opportunity")[deal]["name"] == "Bigger deal"
    assert acme not in rows(store, "account")
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
    with store.connect() as conn:
        state = conn.execute(
            sa.select(sync_record.c.synced_values).where(
                sync_record.c.object == "lead",
                sync_record.c.record_id == rows(store, "lead")[lead]["id"],
            )
        ).scalar_one()
    assert state["last_name"] == "King"


def test_local_edit_is_pushed_once_and_does_not_come_back(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('me@example.com', 'Mine')")
    drain(sync_settings, store)
    drain(sync_settings, store)
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 1
    assert count(store, sync_queue) == 0
    assert [r["lastname"] for r in crm_rows(sync_settings.dynamics_url or "")] == ["Mine"]


def test_delete_behaviour_mark_keeps_the_row(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    marking = load_settings(**{**sync_settings.model_dump(), "delete_behaviour": "mark"})
    lead = sales.create("leads", {"emailaddress1": "m@example.com", "lastname": "Mark"})
    drain(marking, store)
    sales.delete("leads", lead)
    drain(marking, store)
    row = rows(store, "lead")[lead]
    assert row["crm_deleted_at"] is not None
    assert count(store, sync_queue) == 0
