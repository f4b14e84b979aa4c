"""Every record's history end to end: the real worker against the emulator, both stores.

Each test checks a record's events EXACTLY, oldest first, as (event, direction,
operation), with the details that say what happened (columns, codes, who, values).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import sqlalchemy as sa
from pull_support import Sales, sales_fixture  # noqa: F401 (fixture)
from pydantic import SecretStr

from crmsync.config import Settings
from crmsync.store import history, status
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.schema import sync_queue


def timeline(engine: sa.Engine, obj: str, record_id: int, crm_id: str | None = None) -> list[Any]:
    """The record's events, oldest first (every page)."""
    items: list[dict[str, Any]] = []
    cursor = None
    with read_transaction(engine) as conn:
        while True:
            page = history.timeline(conn, obj, record_id, crm_id, limit=3, cursor=cursor)
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items[::-1]


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(e["event"], e["direction"], e["operation"]) for e in events]


def local_id(engine: sa.Engine, table: str, crm_id: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(f"SELECT id FROM {table} WHERE crm_id = :c"), {"c": crm_id}
        ).scalar_one()
    return int(found)


def insert_lead(sql: Any, store: sa.Engine, last_name: str) -> int:
    sql(
        store,
        "INSERT INTO lead (email, first_name, last_name, company)"
        " VALUES ('h@example.com', 'Ada', :n, 'Acme')",
        {"n": last_name},
    )
    with store.connect() as conn:
        return int(conn.execute(sa.text("SELECT max(id) FROM lead")).scalar_one())


def test_an_insert_that_syncs(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any
) -> None:
    lead = insert_lead(sql, store, "Lovelace")
    drain(sync_settings, store)
    events = timeline(store, "lead", lead)
    assert kinds(events) == [
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("synced", "to_crm", "insert"),
    ]
    # Never synced: the captured insert names the columns holding a value.
    assert events[0]["fields"] == ["company", "email", "first_name", "last_name"]
    assert events[0]["detail"] is None  # one write
    sent = events[1]
    assert sent["fields"] == ["company", "email", "first_name", "last_name"]
    assert sent["detail"]["batch"] and sent["detail"]["size"] == 1
    # crmsync's own write coming back from Dynamics is no event of the record.
    drain(sync_settings, store)
    assert len(timeline(store, "lead", lead)) == 3


def test_an_insert_refused_then_fixed(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any
) -> None:
    lead = insert_lead(sql, store, "x" * 60)  # Dataverse's lastname holds 50
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET last_name = 'Lovelace' WHERE id = :i", {"i": lead})
    drain(sync_settings, store)
    events = timeline(store, "lead", lead)
    assert kinds(events) == [
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("failed", "to_crm", "insert"),
        ("parked", "to_crm", "insert"),
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("synced", "to_crm", "insert"),
        ("resolved", "to_crm", None),
    ]
    failed = events[2]
    assert failed["error_code"] == "0x80044331" and "lastname" in failed["error_message"]
    # Still never synced: the fix's capture names every column holding a value again.
    assert events[4]["fields"] == ["company", "email", "first_name", "last_name"]
    assert events[3]["error_code"] == "0x80044331"


def test_a_pull_that_changes_two_fields(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    crm_id = sales.create(
        "leads", {"emailaddress1": "p@example.com", "lastname": "Base", "firstname": "F"}
    )
    drain(sync_settings, store)
    lead = local_id(store, "lead", crm_id)
    sales.update("leads", crm_id, {"lastname": "Changed", "companyname": "NewCo"})
    drain(sync_settings, store)
    events = timeline(store, "lead", lead, crm_id)
    assert kinds(events) == [
        # The first pull is a full read: new records are written in bulk, no queue.
        ("pulled", "from_crm", "insert"),
        ("applied", "from_crm", "insert"),
        ("pulled", "from_crm", "update"),
        ("applied", "from_crm", "update"),
        ("synced", "from_crm", "update"),
    ]
    assert events[0]["detail"] == {"full_read": True}
    pulled = events[2]
    assert pulled["fields"] == ["last_name", "company"]
    assert pulled["detail"]["attributes"] == ["lastname", "companyname"]
    assert pulled["detail"]["modifiedby"]  # Dynamics' user who changed it
    assert events[3]["fields"] == ["company", "last_name"]


def test_a_conflict(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    crm_id = sales.create("leads", {"emailaddress1": "c@example.com", "lastname": "Base"})
    drain(sync_settings, store)
    lead = local_id(store, "lead", crm_id)
    # Pushes wait while the pull settles the conflict, so the order is one.
    with write_transaction(store) as conn:
        status.pause(conn, "lead", "to_crm")
    sql(store, "UPDATE lead SET last_name = 'Local' WHERE id = :i", {"i": lead})
    sales.update("leads", crm_id, {"lastname": "Remote"})
    drain(sync_settings, store)
    with write_transaction(store) as conn:
        status.resume(conn, "lead", "to_crm")
    drain(sync_settings, store)
    events = timeline(store, "lead", lead, crm_id)
    assert kinds(events) == [
        ("pulled", "from_crm", "insert"),
        ("applied", "from_crm", "insert"),
        # The apply folds the capture log before its batch: the local change is then
        # in the queue, and settled against Dynamics' by the rule.
        ("pulled", "from_crm", "update"),
        ("captured", "to_crm", "update"),
        ("conflict", "from_crm", "update"),
        ("synced", "from_crm", "update"),
        ("sent", "to_crm", "update"),
        ("synced", "to_crm", "update"),
    ]
    assert events[3]["fields"] == ["last_name"]  # the captured change, against the base
    assert events[4]["fields"] == ["last_name"]
    assert events[4]["detail"] == {
        "field": "last_name",
        "local": "Local",
        "dynamics": "Remote",
        "winner": "local",
        "rule": "local_wins",
    }


async def _get(settings: Settings, store: sa.Engine, path: str, **kw: Any) -> Any:
    import httpx

    from crmsync.web.app import create_app

    app = create_app(settings, engine=store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": "Bearer t"},
    ) as c:
        if kw:
            r = await c.post(path, json=kw)
        else:
            r = await c.get(path)
        # ASGITransport runs no lifespan: close the app's Dynamics client here.
        dynamics = getattr(app.state, "dynamics", None)
        if dynamics is not None:
            await dynamics.aclose()
        return r


def test_compare_reads_dynamics_live_and_marks_the_difference(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    import asyncio

    settings = sync_settings.model_copy(update={"api_token": SecretStr("t")})
    lead = insert_lead(sql, store, "Lovelace")
    drain(settings, store)
    r = asyncio.run(_get(settings, store, f"/api/v1/records/lead/{lead}/compare"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["in_sync"] is True and body["record_id"] == lead and body["crm_id"]
    sales.update("leads", body["crm_id"], {"lastname": "Byron"})
    body = asyncio.run(_get(settings, store, f"/api/v1/records/lead/{lead}/compare")).json()
    fields = {f["field"]: f for f in body["fields"]}
    assert body["in_sync"] is False
    assert [f for f, v in fields.items() if not v["same"]] == ["last_name"]
    assert fields["last_name"] == {
        "field": "last_name",
        "local": "Lovelace",
        "dynamics": "Byron",
        "last_synced": "Lovelace",
        "same": False,
    }
    # Resync from Dynamics: its row is staged and applied like a pulled change.
    r = asyncio.run(
        _get(settings, store, f"/api/v1/records/lead/{lead}/resync", direction="from_crm")
    )
    assert r.status_code == 200, r.text
    # Resynced (why), then pulled (its staging), as every resync and repair writes them.
    assert kinds(timeline(store, "lead", lead))[-2:] == [
        ("resynced", "from_crm", None),
        ("pulled", "from_crm", "update"),
    ]
    drain(settings, store)
    with store.connect() as conn:
        name = conn.execute(sa.text("SELECT last_name FROM lead WHERE id = :i"), {"i": lead})
        assert name.scalar_one() == "Byron"


def test_a_send_refused_as_stale(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    """412 (Dynamics changed the record since the last sync): the refusal is in the
    history with the outcome that holds the push, before the pull that settles it."""
    crm_id = sales.create("leads", {"emailaddress1": "s@example.com", "lastname": "Base"})
    drain(sync_settings, store)
    lead = local_id(store, "lead", crm_id)
    with write_transaction(store) as conn:
        status.pause(conn, "lead", "from_crm")  # the push meets Dynamics' change first
    sql(store, "UPDATE lead SET last_name = 'Local' WHERE id = :i", {"i": lead})
    sales.update("leads", crm_id, {"lastname": "Remote"})
    drain(sync_settings, store)
    # The pull settles the conflict before the push goes again (one order).
    with write_transaction(store) as conn:
        status.pause(conn, "lead", "to_crm")
        status.resume(conn, "lead", "from_crm")
    drain(sync_settings, store)
    with write_transaction(store) as conn:
        status.resume(conn, "lead", "to_crm")
    drain(sync_settings, store)
    events = timeline(store, "lead", lead, crm_id)
    assert kinds(events) == [
        ("pulled", "from_crm", "insert"),
        ("applied", "from_crm", "insert"),
        ("captured", "to_crm", "update"),
        ("sent", "to_crm", "update"),
        ("failed", "to_crm", "update"),
        ("retry_scheduled", "to_crm", "update"),
        ("pulled", "from_crm", "update"),
        ("conflict", "from_crm", "update"),
        ("synced", "from_crm", "update"),
        ("sent", "to_crm", "update"),
        ("synced", "to_crm", "update"),
    ]
    assert events[2]["fields"] == ["last_name"]
    refused, held = events[4], events[5]
    assert (refused["error_code"], refused["error_message"]) == (
        "http_412",
        "changed in Dynamics since the last sync",
    )
    assert refused["detail"] == {"status": 412, "stale": True}
    assert held["detail"] == {"after": "pull", "held": "until the pull resumes"}
    assert events[3]["detail"]["batch"] != events[9]["detail"]["batch"]


def test_a_worker_killed_mid_batch_leaves_no_event_of_the_send(
    sync_settings: Settings,
    store: sa.Engine,
    insert_leads: Any,
    configure: Any,
    start_worker: Any,
    check_exactly_once: Any,
) -> None:
    """``kill -9`` of a ``crmsync worker`` while Dynamics has applied its batch but not
    answered yet: the outcome's transaction never ran, so no event claims the send
    (only the capture is in each record's history); the next worker sends again under
    the saved ids and each record's story is one send, once."""
    url = sync_settings.dynamics_url or ""
    insert_leads(store, 3)
    # The emulator applies a write, then holds its answer 1 s a record.
    configure(url, per_record_ms=1000)
    worker = start_worker("--concurrency", "1", lease_seconds=1)
    deadline = time.monotonic() + 20
    while crm_count(url) < 3 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    assert crm_count(url) == 3, "the batch never reached Dynamics"
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=10) == -signal.SIGKILL
    ids = lead_ids(store)
    with store.connect() as conn:
        claimed = conn.execute(
            sa.select(sa.func.count()).where(sync_queue.c.claimed_by.is_not(None))
        ).scalar_one()
    assert claimed == 3  # the killed worker's claims wait for their lease
    for lead in ids:
        assert kinds(timeline(store, "lead", lead)) == [("captured", "to_crm", "insert")]

    configure(url, per_record_ms=0)
    again = start_worker("--once", lease_seconds=1)
    assert again.wait(timeout=30) == 0, again.stderr.read().decode() if again.stderr else ""
    for lead in ids:
        events = timeline(store, "lead", lead)
        assert kinds(events) == [
            ("captured", "to_crm", "insert"),
            ("sent", "to_crm", "insert"),
            ("synced", "to_crm", "insert"),
        ]
        assert events[1]["detail"]["size"] == 3  # the second worker's batch
    result = check_exactly_once(store, url)
    assert result["synced"] == 3 and len(result["crm"]) == 3  # no record created twice


def crm_count(url: str) -> int:
    resp = httpx.get(f"{url}/_emulator/stats", timeout=10)
    resp.raise_for_status()
    return int(resp.json()["records"].get("leads", 0))


def lead_ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [int(i) for i in conn.execute(sa.text("SELECT id FROM lead ORDER BY id")).scalars()]
