"""Two defects ``bench/soak.py --chaos`` found, each replayed deterministically here.

1. A write crmsync sent whose answer never came back is taken for Dynamics' change. A
   worker sends a contact's update, Dynamics applies it, and the worker is killed (or
   the answer is cut) before recording it; the application changes the same field
   again. Dynamics' value now differs from the last synced one (``synced_values``, the
   conflict base), so it counts as changed in Dynamics, and a contact's rule (Dynamics
   wins) overwrites the application's newer value on both sides with crmsync's own
   older one, journaled as a conflict Dynamics won. Leads (local wins) keep it.
2. A Dynamics delete read before the staged insert of the same record is applied is
   dropped: the store knows local rows and pushes in flight, not staged pulls.

Both replay here, on both stores, against the fixes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pull_support import Sales, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker


def crmsync_user(settings: Settings) -> httpx.Client:
    """Dynamics as crmsync's own application user sees it: what a worker sends."""
    url = settings.dynamics_url or ""
    token = httpx.post(
        f"{url}/{settings.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": settings.client_id,
            "client_secret": "test-secret",
        },
        timeout=10,
    ).json()["access_token"]
    return httpx.Client(
        base_url=f"{url}/api/data/v9.2/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.mark.parametrize(
    "entity_set, table",
    [("contacts", "contact"), ("leads", "lead")],
)
def test_a_local_change_after_an_unrecorded_push_of_the_same_field_is_kept(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    sql: Any,
    drain: Any,
    entity_set: str,
    table: str,
) -> None:
    crm_id = sales.create(entity_set, {"emailaddress1": f"{table}@example.com", "lastname": "Base"})
    drain(sync_settings, store)
    assert rows(store, table)[crm_id]["last_name"] == "Base"

    # A worker claims the entry of the first edit, sends it, Dynamics applies it, and
    # the worker dies before recording it (SIGKILL, or the answer cut): the entry is
    # still queued and the sync state still says "Base".
    sql(store, f"UPDATE {table} SET last_name = 'First'")
    with crmsync_user(sync_settings) as own:
        own.patch(f"{entity_set}({crm_id})", json={"lastname": "First"}).raise_for_status()
    # The application edits the field again before the entry is sent once more.
    sql(store, f"UPDATE {table} SET last_name = 'Second'")
    drain(sync_settings, store)

    assert rows(store, table)[crm_id]["last_name"] == "Second"
    assert sales.http.get(f"{entity_set}({crm_id})").json()["lastname"] == "Second"
    # crmsync's own write is not a conflict with itself.
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sync_conflict")).scalar() == 0


def test_a_dynamics_delete_pulled_before_the_insert_was_applied_still_deletes(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    """Found by ``bench/soak.py --chaos``: one pull stages a new Dynamics record; the
    record is deleted in Dynamics; the next pull (another worker's, in production) reads
    the deletion before the staged insert is applied. The store does not know the id
    yet (it knows local rows and pushes, not staged pulls), so the deletion is dropped;
    the insert is applied afterwards and the record lives on locally for good, with
    nothing queued and no error."""
    drain(sync_settings, store)  # the first read: delta links saved from here on
    crm_id = sales.create("leads", {"emailaddress1": "gone@example.com", "lastname": "Soon"})

    async def run() -> None:
        async with DataverseClient.from_settings(sync_settings) as client:
            worker = Worker(store, client, sync_settings, concurrency=1)
            assert await worker.pull_once() >= 1  # the insert is staged, not applied
            sales.delete("leads", crm_id)
            await worker.pull_once()  # the deletion, read before the insert is applied
            await worker.run(once=True)

    asyncio.run(asyncio.wait_for(run(), 60))
    assert crm_id not in rows(store, "lead")


@pytest.mark.parametrize("when", ["load_staged", "load_known"])
def test_the_delete_still_deletes_when_the_insert_is_applied_while_the_page_is_read(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    drain: Any,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """As above, with another lane applying the staged insert while the pull reads what
    the store knows: before or between its reads (PostgreSQL reads each statement's own
    snapshot; SQLite's pull holds the write lock, so there the race cannot happen)."""
    from crmsync.store import inbound

    drain(sync_settings, store)
    crm_id = sales.create("leads", {"emailaddress1": "gone@example.com", "lastname": "Soon"})
    real = getattr(inbound, when)

    async def run() -> None:
        async with DataverseClient.from_settings(sync_settings) as client:
            worker = Worker(store, client, sync_settings, concurrency=1)
            assert await worker.pull_once() >= 1
            sales.delete("leads", crm_id)
            applied: list[int] = []

            def racing(conn: Any, spec: Any, ids: Any) -> Any:
                if not applied and store.dialect.name == "postgresql":
                    applied.append(worker.applier.apply_batch_sync())
                return real(conn, spec, ids)

            monkeypatch.setattr(inbound, when, racing)
            await worker.pull_once()
            monkeypatch.setattr(inbound, when, real)
            await worker.run(once=True)

    asyncio.run(asyncio.wait_for(run(), 60))
    assert crm_id not in rows(store, "lead")
