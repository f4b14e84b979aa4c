"""Bulk messages end to end: a real worker, real HTTP, the emulator charging execution
time as Dataverse does (``cost_model: dataverse``).

Inserts go as UpsertMultiple and updates as UpdateMultiple; a record Dynamics refuses
fails its whole request (a standard table): text over a limit Dynamics names takes every
record over it out at once, any other refusal halves the request until the bad record
stands alone; each parks with its own code; nothing is lost or duplicated under a 429 in
the middle of a drain; the ETag read back after a bulk update still lets a conflict
check see a concurrent Dynamics change; pacing keeps execution-time 429s few.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_error, sync_event, sync_record

Check = Callable[..., dict[str, Any]]


def stats(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/_emulator/stats", timeout=10)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def spent(url: str) -> dict[str, float]:
    by_message: dict[str, float] = stats(url)["execution_ms"]["by_message"]
    return by_message


def dataverse(configure: Any, url: str, **more: Any) -> None:
    configure(url, cost_model="dataverse", **more)


def test_inserts_and_updates_go_as_bulk_messages_deletes_as_batch(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    check_exactly_once: Check,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    insert_leads(store, 120)
    drain(sync_settings, store)
    after_insert = spent(url)
    assert after_insert["UpsertMultiple"] > 0
    assert after_insert["$batch"] == 0 and after_insert["single"] == 0
    sql(store, "UPDATE lead SET last_name = 'B' || id WHERE id <= 100")
    sql(store, "DELETE FROM lead WHERE id > 110")
    drain(sync_settings, store)
    after = spent(url)
    assert after["UpdateMultiple"] > 0
    assert after["$batch"] > 0  # the deletes: no standard-table bulk message
    assert after["single"] == 0
    result = check_exactly_once(store, url)
    assert result["synced"] == 110 and len(result["crm"]) == 110
    assert {r["lastname"] for r in result["crm"].values()} >= {"B1", "B100"}


def test_batch_only_switch_sends_no_bulk_message(
    sync_settings: Settings,
    store: sa.Engine,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    check_exactly_once: Check,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    insert_leads(store, 30)
    drain(sync_settings.model_copy(update={"push_bulk": False}), store)
    by = spent(url)
    assert by["$batch"] > 0 and by["UpsertMultiple"] == 0 and by["UpdateMultiple"] == 0
    check_exactly_once(store, url)


def test_a_refused_record_parks_alone_with_its_code_and_the_rest_sync(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    crm_rows: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    insert_leads(store, 64)
    drain(sync_settings, store)
    # Two updates Dynamics refuses (lastname longer than its 50 characters), one of
    # them in the first and one in the second half of the claimed batch.
    sql(store, "UPDATE lead SET last_name = 'U' || id")
    sql(store, "UPDATE lead SET last_name = :l WHERE id IN (5, 40)", {"l": "x" * 51})
    before = stats(url)["requests"]["by_status"].get("400", 0)
    drain(sync_settings, store)
    with store.connect() as conn:
        errors = conn.execute(sa.select(sync_error).where(sync_error.c.status == "open")).all()
    assert sorted(e.record_key for e in errors) == ["40", "5"]
    assert {(e.error_code, e.operation, e.attempts) for e in errors} == {
        ("0x80044331", "update", 1)
    }
    assert all("lastname" in e.error_message for e in errors)
    refused = stats(url)["requests"]["by_status"].get("400", 0) - before
    # Dynamics named lastname's limit: both records over it out at once, one refusal.
    assert refused == 1
    crm = {r["leadid"]: r for r in crm_rows(url)}
    assert len(crm) == 64  # nothing duplicated
    with store.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.text("SELECT id, crm_id FROM lead"))}
    for lead_id, row in rows.items():
        expected = f"L{lead_id - 1}" if lead_id in (5, 40) else f"U{lead_id}"
        assert crm[row.crm_id]["lastname"] == expected


def test_a_limit_dynamics_named_takes_later_records_out_before_sending(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    insert_leads: Any,
) -> None:
    """One lane, batches of 32: lead 5 (first batch) is refused and names lastname's
    limit; lead 40 (second batch) gets the same refusal without being sent, and its
    history says so (failed, parked: no "sent" event)."""
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    insert_leads(store, 64)
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET last_name = 'U' || id")
    sql(store, "UPDATE lead SET last_name = :l WHERE id IN (5, 40)", {"l": "x" * 51})
    before = stats(url)["requests"]["by_status"].get("400", 0)
    settings = sync_settings.model_copy(update={"batch_size": 32})

    async def one_lane() -> None:
        async with DataverseClient.from_settings(settings) as client:
            await Worker(store, client, settings, concurrency=1).run(once=True)

    asyncio.run(asyncio.wait_for(one_lane(), timeout=60))
    assert stats(url)["requests"]["by_status"].get("400", 0) - before == 1
    with store.connect() as conn:
        errors = conn.execute(sa.select(sync_error).where(sync_error.c.status == "open")).all()
        events = conn.execute(
            sa.select(sync_event.c.record_key, sync_event.c.event)
            .where(sync_event.c.record_key.in_(["5", "40"]), sync_event.c.event != "captured")
            .order_by(sync_event.c.id)
        ).all()
    assert {(e.record_key, e.error_code) for e in errors} == {
        ("5", "0x80044331"),
        ("40", "0x80044331"),
    }
    assert all("lastname" in e.error_message for e in errors)
    last = {key: [ev for k, ev in events if k == key][-3:] for key in ("5", "40")}
    assert last["5"] == ["sent", "failed", "parked"]
    assert last["40"][-2:] == ["failed", "parked"] and last["40"][0] != "sent"


def test_a_refusal_naming_no_limit_halves_the_request_until_the_bad_records_stand_alone(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    crm_rows: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    ghost = "6a1f7d6e-0000-4000-8000-00000000beef"  # an account Dynamics does not have
    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(
            sa.text("INSERT INTO account (id, name, crm_id) VALUES (1, 'Gone', :c)"), {"c": ghost}
        )
    for i in range(1, 25):
        account = 1 if i in (7, 19) else None
        sql(
            store,
            "INSERT INTO contact (id, email, last_name, account_id) VALUES (:i, :e, :l, :a)",
            {"i": i, "e": f"c{i}@x.org", "l": f"C{i}", "a": account},
        )
    before = stats(url)["requests"]["by_status"]
    drain(sync_settings, store)
    after = stats(url)["requests"]["by_status"]
    with store.connect() as conn:
        errors = conn.execute(sa.select(sync_error).where(sync_error.c.status == "open")).all()
    assert sorted(int(e.record_key) for e in errors) == [7, 19]
    assert {e.error_code for e in errors} == {"0x80040217"}
    refused = sum(after.get(k, 0) - before.get(k, 0) for k in ("400", "404"))
    # Halving: a handful of refused requests, far fewer than one per record.
    assert 2 <= refused <= 16
    contacts = crm_rows(url, "contacts", "contactid,lastname")
    assert sorted(r["lastname"] for r in contacts) == sorted(
        f"C{i}" for i in range(1, 25) if i not in (7, 19)
    )


def test_nothing_lost_or_duplicated_under_429s_mid_drain(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    check_exactly_once: Check,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url, throttle_rate=0.3, retry_after_s=0, seed=7)
    insert_leads(store, 300)
    drain(sync_settings, store, 120)
    sql(store, "UPDATE lead SET last_name = 'T' || id")
    drain(sync_settings, store, 120)
    assert stats(url)["requests"]["by_status"].get("429", 0) > 0
    result = check_exactly_once(store, url)
    assert result["synced"] == 300
    assert {r["lastname"] for r in result["crm"].values()} == {f"T{i}" for i in range(1, 301)}


def test_the_version_kept_after_a_bulk_update_still_catches_a_dynamics_change(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    crm_rows: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    dataverse(configure, url)
    insert_leads(store, 10)
    drain(sync_settings, store)
    sql(store, "UPDATE lead SET last_name = 'Local' || id")
    drain(sync_settings, store)
    crm = {r["leadid"]: r for r in crm_rows(url)}
    with store.connect() as conn:
        kept = dict(conn.execute(sa.select(sync_record.c.crm_id, sync_record.c.etag)).all())
    # The base kept is the version Dynamics has after crmsync's bulk update.
    assert all(kept[i] == f'W/"{r["versionnumber"]}"' for i, r in crm.items())
    # A Dynamics user changes lead 3; then crmsync updates it again locally. The update
    # must not overwrite that change unseen: it is refused as stale and the record pulled.
    with store.connect() as conn:
        target = conn.execute(sa.text("SELECT crm_id FROM lead WHERE id = 3")).scalar_one()
    token = inspector_token(url)
    httpx.patch(
        f"{url}/api/data/v9.2/leads({target})",
        json={"companyname": "Changed in Dynamics"},
        headers={"Authorization": f"Bearer {token}", "If-Match": "*"},
        timeout=10,
    ).raise_for_status()
    sql(store, "UPDATE lead SET last_name = 'Again' WHERE id = 3")
    drain(sync_settings, store)
    record = {r["leadid"]: r for r in crm_rows(url, select="leadid,lastname,companyname")}[target]
    with store.connect() as conn:
        company = conn.execute(sa.text("SELECT company FROM lead WHERE id = 3")).scalar_one()
    # The pull took Dynamics' change (lead: crmsync wins only for the field it changed).
    assert record["lastname"] == "Again"
    assert record["companyname"] == "Changed in Dynamics" == company


def test_pacing_keeps_execution_time_429s_few(
    sync_settings: Settings,
    store: sa.Engine,
    drain: Any,
    configure: Any,
    insert_leads: Any,
    check_exactly_once: Check,
) -> None:
    url = sync_settings.dynamics_url or ""
    # A budget the drain needs about three windows of: 600 upserts x ~19 ms.
    dataverse(configure, url, max_execution_ms=4_000, window_s=1)
    settings = sync_settings.model_copy(
        update={"execution_budget_ms": 4_000, "execution_window_seconds": 1.0}
    )
    insert_leads(store, 600)
    drain(settings, store, 120)
    throttled = stats(url)["requests"]["by_status"].get("429", 0)
    assert throttled <= 3
    check_exactly_once(store, url)


def inspector_token(url: str) -> str:
    resp = httpx.post(
        f"{url}/crmsync-tests/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "inspector",
            "client_secret": "x",
            "scope": f"{url}/.default",
        },
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])
