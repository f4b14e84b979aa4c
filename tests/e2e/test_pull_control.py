"""Operator control of the pull, end to end over HTTP against the emulator: pausing
``from_crm`` stops the reads themselves, and resuming continues from the saved delta link;
an object Dynamics will not let crmsync read is a ``from_crm`` sync error of that object,
listed by the API, and resolved once the object pulls again.

The worker runs in process (as ``worker --once`` does) so that its pull statistics can
be read; the emulator's request counter shows what reached Dynamics.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import sqlalchemy as sa
from pull_support import Sales, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store import status
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_conflict, sync_cursor, sync_error, sync_queue
from crmsync.web.app import create_app


def run_once(
    settings: Settings, engine: sa.Engine, entity_sets: dict[str, str] | None = None
) -> Worker:
    """One in-process ``worker --once``; returns the worker, for its statistics.
    ``entity_sets`` maps objects to other entity sets (a mapping mistake)."""

    async def go() -> Worker:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(engine, client, settings, concurrency=2)
            for obj, entity_set in (entity_sets or {}).items():
                specs = worker.puller.specs
                specs[obj] = replace(specs[obj], entity_set=entity_set)
            await worker.run(once=True)
            return worker

    return asyncio.run(asyncio.wait_for(go(), timeout=60))


def requests_made(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/stats", timeout=10).json()["requests"]["total"])


def cursor(engine: sa.Engine, obj: str) -> str | None:
    with engine.connect() as conn:
        link = conn.execute(
            sa.select(sync_cursor.c.delta_link).where(sync_cursor.c.object == obj)
        ).scalar()
    return str(link) if link else None


def test_pausing_from_crm_stops_reading_and_resume_continues_from_the_delta_link(
    sync_settings: Settings, store: sa.Engine, sales: Sales
) -> None:
    url = sync_settings.dynamics_url or ""
    first = sales.create("leads", {"lastname": "First"})
    run_once(sync_settings, store)
    link = cursor(store, "lead")
    assert link and first in rows(store, "lead")

    with write_transaction(store) as conn:
        status.pause(conn, "*", "from_crm")
    second = sales.create("leads", {"lastname": "Second"})
    sales.update("leads", first, {"lastname": "First, changed"})
    account = sales.create("accounts", {"name": "Acme"})
    before = requests_made(url)
    worker = run_once(sync_settings, store)
    # Paused everywhere: not one request reached Dynamics, nothing was read or staged.
    assert requests_made(url) == before
    assert worker.puller.stats.read == 0
    assert set(rows(store, "lead")) == {first} and rows(store, "account") == {}

    # Paused for leads only: the other objects pull, leads keep their delta link.
    with write_transaction(store) as conn:
        status.resume(conn, "*", "*")
        status.pause(conn, "lead", "from_crm")
    worker = run_once(sync_settings, store)
    assert set(rows(store, "account")) == {account}
    assert "lead" not in worker.puller.stats.by_object
    assert set(rows(store, "lead")) == {first} and cursor(store, "lead") == link

    # Resumed: the changes made while paused arrive from the saved link, no full read.
    with write_transaction(store) as conn:
        status.resume(conn, "lead", "from_crm")
    worker = run_once(sync_settings, store)
    assert worker.puller.stats.full_reads == 0
    assert worker.puller.stats.by_object["lead"] == 2
    local = rows(store, "lead")
    assert set(local) == {first, second}
    assert local[first]["last_name"] == "First, changed"
    assert cursor(store, "lead") != link


def errors(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(sync_error).order_by(sync_error.c.id)).mappings()
        return [dict(r) for r in found]


def listed(settings: Settings, engine: sa.Engine, **params: str) -> dict[str, Any]:
    """``GET /api/v1/sync/errors`` through the real app (in process)."""

    async def go() -> dict[str, Any]:
        app = create_app(
            load_settings(database_url=settings.database_url, api_token="t"), engine=engine
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test"
        ) as c:
            r = await c.get(
                "/api/v1/sync/errors", params=params, headers={"Authorization": "Bearer t"}
            )
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

    return asyncio.run(go())


def test_a_table_dynamics_refuses_to_read_is_an_error_until_it_pulls_again(
    sync_settings: Settings, store: sa.Engine, sales: Sales, configure: Any
) -> None:
    url = sync_settings.dynamics_url or ""
    lead = sales.create("leads", {"lastname": "Fine"})
    contact = sales.create("contacts", {"lastname": "Hidden"})
    configure(url, denied_entity_sets=["contacts"])
    # What Dynamics answers crmsync's own application user, verbatim.
    as_crmsync = Sales(url, client_id=sync_settings.client_id or "")
    refusal = as_crmsync.http.get("contacts").json()["error"]
    as_crmsync.close()

    run_once(sync_settings, store)
    run_once(sync_settings, store)
    assert lead in rows(store, "lead") and rows(store, "contact") == {}
    [error] = errors(store)
    assert (error["object"], error["direction"], error["status"]) == ("contact", "from_crm", "open")
    assert (error["error_code"], error["error_message"]) == (refusal["code"], refusal["message"])
    assert error["error_code"] == "0x80040220" and "prvReadContact" in error["error_message"]
    assert (error["record_id"], error["crm_id"], error["record_label"]) == (None, None, None)
    assert error["attempts"] == 2  # one error per object, however often it fails

    body = listed(sync_settings, store, direction="from_crm")
    assert body["total"] == 1
    item = body["items"][0]
    assert item["object"] == "contact" and item["error_message"] == refusal["message"]
    assert (item["record_id"], item["crm_id"], item["record_label"]) == (None, None, None)
    assert item["operation"] in ("insert", "update", "delete")

    # The privilege is granted: the next pull reads the table and resolves the error.
    configure(url, denied_entity_sets=[])
    run_once(sync_settings, store)
    assert contact in rows(store, "contact")
    [error] = errors(store)
    assert error["status"] == "resolved" and error["resolved_at"] is not None
    assert listed(sync_settings, store)["total"] == 0


def test_an_unknown_entity_set_is_that_objects_error_and_the_others_pull(
    sync_settings: Settings, store: sa.Engine, sales: Sales
) -> None:
    lead = sales.create("leads", {"lastname": "Fine"})
    account = sales.create("accounts", {"name": "Acme"})
    sales.create("opportunities", {"name": "Deal"})
    worker = run_once(sync_settings, store, {"opportunity": "opportunitys"})
    assert lead in rows(store, "lead") and account in rows(store, "account")
    assert "opportunity" not in worker.puller.stats.by_object
    [error] = errors(store)
    assert (error["object"], error["direction"], error["error_code"]) == (
        "opportunity",
        "from_crm",
        "crmsync.mapping_mismatch",
    )
    # Dynamics' own code and message, and what to do.
    assert (
        "0x8006088a: Resource not found for the segment 'opportunitys'." in (error["error_message"])
    )
    assert "then resume opportunity" in error["error_message"]
    # The object alone is paused: fixed mapping, still paused until resumed.
    with store.connect() as conn:
        assert [(p["object"], p["direction"]) for p in status.paused(conn)] == [
            ("opportunity", "*")
        ]
    run_once(sync_settings, store)
    assert len(rows(store, "opportunity")) == 0
    with write_transaction(store) as conn:
        status.resume(conn, "opportunity", "*")
    run_once(sync_settings, store)
    assert [e["status"] for e in errors(store)] == ["resolved"]
    assert len(rows(store, "opportunity")) == 1


def run_for(settings: Settings, engine: sa.Engine, seconds: float) -> Worker:
    """A worker running (not ``--once``) for ``seconds``, then stopped."""

    async def go() -> Worker:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(engine, client, settings, concurrency=2)
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(seconds)
            worker.stop()
            await asyncio.wait_for(task, 30)
            return worker

    return asyncio.run(go())


def lead_push(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        [entry] = conn.execute(
            sa.select(sync_queue).where(sync_queue.c.direction == "to_crm")
        ).mappings()
        return dict(entry)


def test_a_push_refused_as_stale_waits_for_a_paused_pull_without_resending(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any
) -> None:
    """A 412 (Dynamics changed the record) can only be resolved by pulling the record;
    with ``from_crm`` paused the push is held, not re-sent, until the resume, and then
    goes the ordinary way: pulled, decided by the rule (local wins for leads), sent."""
    url = sync_settings.dynamics_url or ""
    lead = sales.create("leads", {"emailaddress1": "h@example.com", "lastname": "Base"})
    run_once(sync_settings, store)
    with write_transaction(store) as conn:
        status.pause(conn, "*", "from_crm")
    sql(store, "UPDATE lead SET last_name = 'Local'")
    sales.update("leads", lead, {"lastname": "Remote", "companyname": "Co"})

    before = requests_made(url)
    worker = run_for(sync_settings, store, 4)
    # One token and one $batch (refused with 412), then nothing more: it used to be
    # re-sent about once a second.
    assert requests_made(url) - before <= 2
    assert (worker.pusher.stats.stale, worker.pusher.stats.held) == (1, 1)
    entry = lead_push(store)
    assert (entry["state"], entry["last_error_code"]) == ("pending", status.AWAITING_PULL)
    with store.connect() as conn:
        [row] = [r for r in status.backlog(conn, ["lead"])["objects"]]
    assert (row["updates"], row["total"]) == (1, 1)  # visible in the backlog

    # Its hold runs out while the pull is still paused: held again, nothing sent.
    sql(store, "UPDATE sync_queue SET next_attempt_at = :t", {"t": entry["first_queued_at"]})
    before = requests_made(url)
    worker = run_once(sync_settings, store)  # --once ends: a held push is not due
    assert requests_made(url) == before
    assert worker.pusher.stats.held == 1 and worker.pusher.stats.sent == 0
    assert lead_push(store)["last_error_code"] == status.AWAITING_PULL

    with write_transaction(store) as conn:
        status.resume(conn, "*", "from_crm")
    assert lead_push(store)["last_error_code"] is None
    run_once(sync_settings, store)
    local = rows(store, "lead")[lead]
    assert (local["last_name"], local["company"]) == ("Local", "Co")
    crm = sales.http.get(f"leads({lead})?$select=lastname,companyname").json()
    assert (crm["lastname"], crm["companyname"]) == ("Local", "Co")
    with store.connect() as conn:
        journal = conn.execute(sa.select(sync_conflict)).mappings().all()
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
    assert [(j["field"], j["winner"]) for j in journal] == [("last_name", "local")]


def test_a_held_push_that_becomes_a_delete_no_longer_waits_for_the_pull(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any
) -> None:
    lead = sales.create("leads", {"emailaddress1": "d@example.com", "lastname": "Base"})
    run_once(sync_settings, store)
    with write_transaction(store) as conn:
        status.pause(conn, "*", "from_crm")
    sql(store, "UPDATE lead SET last_name = 'Local'")
    sales.update("leads", lead, {"lastname": "Remote"})
    run_once(sync_settings, store)
    assert lead_push(store)["last_error_code"] == status.AWAITING_PULL
    # Deleted here meanwhile: the delete needs no pull (its hold may run out as usual).
    sql(store, "DELETE FROM lead")
    sql(store, "UPDATE sync_queue SET next_attempt_at = first_queued_at")
    worker = run_once(sync_settings, store)
    assert worker.pusher.stats.held == 0
    assert sales.http.get(f"leads({lead})").status_code == 404
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
