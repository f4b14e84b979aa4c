"""Pull end to end: a Dynamics user's writes -> change tracking -> worker -> local tables.

Dynamics users here are separate application users of the emulator writing over real
HTTP (``Sales``); ``test_pull_sdk.py`` does the same with Microsoft's own SDK. Every
test drains with an in-process ``worker --once`` and compares both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.store.schema import sync_cursor, sync_error, sync_queue, sync_record


class Sales:
    """A Dynamics user (its own application user in the emulator) writing records."""

    def __init__(self, url: str, client_id: str = "sales-user") -> None:
        token = httpx.post(
            f"{url}/t/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "s"},
            timeout=10,
        ).json()["access_token"]
        self.http = httpx.Client(
            base_url=f"{url}/api/data/v9.2/",
            headers={"Authorization": f"Bearer {token}", "Prefer": "return=representation"},
            timeout=30,
        )

    def create(self, entity_set: str, body: dict[str, Any]) -> str:
        resp = self.http.post(entity_set, json=body)
        resp.raise_for_status()
        data = resp.json()
        key = next(k for k in data if k.endswith("id") and not k.startswith("_"))
        return str(data[key])

    def update(self, entity_set: str, crm_id: str, body: dict[str, Any]) -> None:
        self.http.patch(f"{entity_set}({crm_id})", json=body).raise_for_status()

    def delete(self, entity_set: str, crm_id: str) -> None:
        self.http.delete(f"{entity_set}({crm_id})").raise_for_status()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def sales(sync_settings: Settings) -> Iterator[Sales]:
    s = Sales(sync_settings.dynamics_url or "")
    yield s
    s.close()


def rows(engine: sa.Engine, table: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings().all()
    return {r["crm_id"]: dict(r) for r in found if r["crm_id"]}


def count(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        )


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
