"""Conflicts end to end: both sides change the same field; the rule decides, once.

Leads default to local wins, contacts to Dynamics wins; the journal has one row per
conflicting field, and afterwards both sides hold the winner's value.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from pull_support import Sales, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.schema import sync_conflict, sync_error, sync_queue


def journal(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(sync_conflict)).mappings()]


def crm_value(sales: Sales, entity_set: str, crm_id: str, attribute: str) -> Any:
    return sales.http.get(f"{entity_set}({crm_id})?$select={attribute}").json()[attribute]


def test_lead_local_wins_contact_crm_wins_and_both_sides_agree(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    lead = sales.create("leads", {"emailaddress1": "l@example.com", "lastname": "Base"})
    contact = sales.create("contacts", {"emailaddress1": "c@example.com", "lastname": "Base"})
    drain(sync_settings, store)

    sql(store, "UPDATE lead SET last_name = 'Local', first_name = 'OnlyLocal'")
    sql(store, "UPDATE contact SET last_name = 'Local'")
    sales.update("leads", lead, {"lastname": "Remote", "companyname": "OnlyRemote"})
    sales.update("contacts", contact, {"lastname": "Remote"})
    drain(sync_settings, store)

    local_lead, local_contact = rows(store, "lead")[lead], rows(store, "contact")[contact]
    assert local_lead["last_name"] == "Local" and local_lead["company"] == "OnlyRemote"
    assert local_lead["first_name"] == "OnlyLocal"
    assert crm_value(sales, "leads", lead, "lastname") == "Local"
    assert crm_value(sales, "leads", lead, "companyname") == "OnlyRemote"
    assert crm_value(sales, "leads", lead, "firstname") == "OnlyLocal"
    assert local_contact["last_name"] == "Remote"
    assert crm_value(sales, "contacts", contact, "lastname") == "Remote"

    entries = {(j["object"], j["field"]): j for j in journal(store)}
    assert set(entries) == {("lead", "last_name"), ("contact", "last_name")}
    assert entries[("lead", "last_name")]["winner"] == "local"
    assert entries[("lead", "last_name")]["rule"] == "local_wins"
    assert entries[("lead", "last_name")]["local_value"] == "Local"
    assert entries[("lead", "last_name")]["crm_value"] == "Remote"
    assert entries[("contact", "last_name")]["winner"] == "crm"
    assert entries[("contact", "last_name")]["rule"] == "crm_wins"
    assert entries[("contact", "last_name")]["crm_id"] == contact

    # Nothing moves any more, and the journal does not grow.
    drain(sync_settings, store)
    assert len(journal(store)) == 2
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_error)).scalar() == 0


def test_push_refused_by_a_newer_dynamics_version_resolves_first(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    """Dynamics changed after the pull: the update's If-Match fails (412); the record is
    fetched, the rule decides, and only then is the local winner sent."""
    lead = sales.create("leads", {"emailaddress1": "x@example.com", "lastname": "Base"})
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET last_name = 'Local'")
    sales.update("leads", lead, {"lastname": "Remote", "companyname": "Co"})

    async def push_first() -> Worker:
        async with DataverseClient.from_settings(sync_settings) as client:
            worker = Worker(store, client, sync_settings, concurrency=1)
            await worker.pusher.push_batch()  # before any pull: refused, refetched
            await worker.run(once=True)
            return worker

    worker = asyncio.run(asyncio.wait_for(push_first(), 60))
    assert worker.pusher.stats.stale >= 1
    assert rows(store, "lead")[lead]["company"] == "Co"
    assert crm_value(sales, "leads", lead, "lastname") == "Local"
    assert crm_value(sales, "leads", lead, "companyname") == "Co"
    assert [(j["field"], j["winner"]) for j in journal(store)] == [("last_name", "local")]


def test_worker_once_finishes_when_dynamics_changes_right_after_its_pull(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    """The push meets a 412 after the only pull of ``--once``: the refetched change must
    still be applied (the apply lanes wait for pending pushes) and the run must end."""
    lead = sales.create("leads", {"emailaddress1": "y@example.com", "lastname": "Base"})
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET first_name = 'LocalFirst'")

    class EditAfterPull(Worker):
        async def pull_once(self) -> int:
            staged = await super().pull_once()
            sales.update("leads", lead, {"companyname": "Changed meanwhile"})
            return staged

    async def once() -> Worker:
        async with DataverseClient.from_settings(sync_settings) as client:
            worker = EditAfterPull(store, client, sync_settings, concurrency=2)
            await worker.run(once=True)
            return worker

    worker = asyncio.run(asyncio.wait_for(once(), 60))
    assert worker.pusher.stats.stale >= 1
    assert rows(store, "lead")[lead]["company"] == "Changed meanwhile"
    assert crm_value(sales, "leads", lead, "firstname") == "LocalFirst"
    assert crm_value(sales, "leads", lead, "companyname") == "Changed meanwhile"
    assert journal(store) == []
