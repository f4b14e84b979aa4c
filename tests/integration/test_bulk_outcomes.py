"""What a push records when part of its bulk work fails, on real stores, against the
in-process emulator with faults injected by hand (one named request answered 503, or
one object's bulk request refused for a column Dynamics no longer has).

A record Dynamics took is recorded as synced, whatever failed after it or beside it:

- the read-back of versions after a successful bulk write fails: the records were
  written (they used to be retried as if never sent; an insert deleted in Dynamics
  meanwhile would have been re-created by the retry);
- one half of a bisected request fails whole (an outage): the other half's records,
  written, are synced, the failing half retried (confirmed, not a defect: the client
  answers an outage per record);
- one object's bulk request is refused for a column gone from Dynamics, in a batch
  with another object: that object alone pauses, its entries wait unclaimed, the other
  object's write is recorded (the worker used to stop with a Fatal, giving back every
  claim, the other object's written records to be sent again).

A record Dynamics was never sent has no ``sent`` event: the read-back of versions
before ``UpdateMultiple`` fails (an outage), so the request never goes; each update is
retried (it used to be logged as sent, and counted so).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.emulator import create_app
from crmsync.engine.push import Pusher
from crmsync.store import status
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_error, sync_event, sync_queue, sync_record

BASE = "https://org.test"
Fault = Callable[[httpx.Request], httpx.Response | None]


class Faulty(httpx.AsyncBaseTransport):
    """The emulator, except for requests ``fault`` answers itself."""

    def __init__(self, app: Any, fault: Fault) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.fault = fault
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.seen.append(f"{request.method} {request.url.path}")
        answer = self.fault(request)
        if answer is not None:
            return answer
        return await self.inner.handle_async_request(request)


def unavailable() -> httpx.Response:
    return httpx.Response(503, json={"error": {"code": "", "message": "Service Unavailable"}})


def run_push(
    engine: sa.Engine, settings: Settings, fault: Fault, app: Any = None
) -> tuple[Pusher, Faulty]:
    app = app if app is not None else create_app()

    async def go() -> tuple[Pusher, Faulty]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE
        ) as plain:
            r = await plain.post(
                "/tenant-1/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "app-1",
                    "client_secret": "s3cret",
                    "scope": f"{BASE}/.default",
                },
            )
            token = str(r.json()["access_token"])
        transport = Faulty(app, fault)
        client = DataverseClient.with_static_token(BASE, token, transport=transport)
        async with client:
            pusher = Pusher(engine, client, settings, "w")
            await pusher.push_batch()
        return pusher, transport

    return asyncio.run(go())


def insert_leads(engine: sa.Engine, n: int) -> None:
    with write_transaction(engine) as conn:
        for i in range(1, n + 1):
            conn.execute(
                sa.text("INSERT INTO lead (id, email, last_name) VALUES (:i, :e, :l)"),
                {"i": i, "e": f"l{i}@x.org", "l": f"L{i}"},
            )


def queue_rows(engine: sa.Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                sync_queue.c.object,
                sync_queue.c.record_key,
                sync_queue.c.state,
                sync_queue.c.last_error_code,
            )
        ).all()
    return {f"{r.object} {r.record_key}": (r.state, r.last_error_code) for r in rows}


def synced_leads(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        records = conn.execute(
            sa.select(sync_record.c.record_id).where(sync_record.c.object == "lead")
        ).scalars()
        return set(records)


def test_a_failed_read_back_after_a_bulk_write_leaves_the_records_synced(
    engine: sa.Engine, settings: Settings
) -> None:
    insert_leads(engine, 6)
    written: list[bool] = []

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("UpsertMultiple"):
            written.append(True)
        elif request.method == "GET" and "Microsoft.Dynamics.CRM.In" in str(request.url):
            return unavailable()  # the read-back after the write
        return None

    run_push(engine, settings, fault)
    assert written == [True]
    # Written in Dynamics: synced, not retried (nor parked) as if never sent.
    assert queue_rows(engine) == {}
    assert synced_leads(engine) == set(range(1, 7))
    with engine.connect() as conn:
        crm_ids = conn.execute(sa.text("SELECT crm_id FROM lead")).scalars().all()
        kept = conn.execute(sa.select(sync_record.c.etag)).scalars().all()
        failed = conn.execute(
            sa.select(sa.func.count()).select_from(sync_event).where(sync_event.c.event == "failed")
        ).scalar_one()
    assert all(crm_ids)
    assert kept == [None] * 6  # no version known: the pull compares values
    assert failed == 0


def test_updates_whose_read_back_before_update_multiple_fails_were_not_sent(
    engine: sa.Engine, settings: Settings
) -> None:
    app = create_app()
    insert_leads(engine, 6)
    run_push(engine, settings, lambda request: None, app)  # synced, with their ETags
    assert synced_leads(engine) == set(range(1, 7))
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = last_name || '2'"))
    bulk: list[str] = []

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and "Multiple" in request.url.path:
            bulk.append(request.url.path)
        elif request.method == "GET" and "Microsoft.Dynamics.CRM.In" in str(request.url):
            return unavailable()  # the read-back before UpdateMultiple
        return None

    pusher, _ = run_push(engine, settings, fault, app)
    assert bulk == []  # nothing was sent
    assert queue_rows(engine) == {f"lead {i}": ("pending", "http_503") for i in range(1, 7)}
    with engine.connect() as conn:
        events = conn.execute(
            sa.select(sync_event.c.event, sa.func.count())
            .where(sync_event.c.event.in_(["sent", "retry_scheduled"]))
            .group_by(sync_event.c.event)
        ).all()
    # The first push's six sends, none of the second's (it sent nothing): each of its
    # records only failed and waits for its retry.
    assert dict(events) == {"sent": 6, "retry_scheduled": 6}
    assert pusher.stats.sent == 0 and pusher.stats.retried == 6


def test_a_half_of_a_bisected_request_failing_whole_keeps_the_other_halfs_syncs(
    engine: sa.Engine, settings: Settings
) -> None:
    ghost = "6a1f7d6e-0000-4000-8000-00000000beef"  # an account Dynamics does not have
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(
            sa.text("INSERT INTO account (id, name, crm_id) VALUES (1, 'Gone', :c)"), {"c": ghost}
        )
    with write_transaction(engine) as conn:
        for i in range(1, 7):
            conn.execute(
                sa.text(
                    "INSERT INTO contact (id, email, last_name, account_id) VALUES (:i, :e, :l, :a)"
                ),
                {"i": i, "e": f"c{i}@x.org", "l": f"C{i}", "a": 1 if i == 2 else None},
            )
    bulk_bodies: list[set[str]] = []

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("UpsertMultiple"):
            names = {t["lastname"] for t in json.loads(request.content)["Targets"]}
            bulk_bodies.append(names)
            if names == {"C4", "C5", "C6"}:
                return unavailable()  # the second half: an outage
        return None

    run_push(engine, settings, fault)
    assert {"C1", "C2", "C3"} in bulk_bodies and {"C4", "C5", "C6"} in bulk_bodies
    rows = queue_rows(engine)
    # 1 and 3 were written: synced; 2 refused: parked; 4-6 met the outage: retried.
    assert rows == {
        "contact 2": ("parked", "0x80040217"),
        "contact 4": ("pending", "http_503"),
        "contact 5": ("pending", "http_503"),
        "contact 6": ("pending", "http_503"),
    }
    with engine.connect() as conn:
        synced = set(
            conn.execute(
                sa.select(sync_record.c.record_id).where(sync_record.c.object == "contact")
            ).scalars()
        )
    assert synced == {1, 3}


def test_one_objects_unusable_bulk_request_pauses_it_alone_and_records_the_others(
    engine: sa.Engine, settings: Settings
) -> None:
    insert_leads(engine, 6)
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO contact (id, email, last_name) VALUES (1, 'k@x', 'K')"))

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith(
            "leads/Microsoft.Dynamics.CRM.UpsertMultiple"
        ):
            message = (
                "Invalid property 'lastname' was found in entity 'Microsoft.Dynamics.CRM.lead'."
            )
            return httpx.Response(400, json={"error": {"code": "0x80048d19", "message": message}})
        return None

    run_push(engine, settings, fault)
    rows = queue_rows(engine)
    # The contact went (a $batch or a single request beside the leads' bulk request).
    assert "contact 1" not in rows
    with engine.connect() as conn:
        contact_synced = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_record)
            .where(sync_record.c.object == "contact")
        ).scalar_one()
        paused = status.paused(conn)
        errors = conn.execute(sa.select(sync_error.c.object, sync_error.c.status)).all()
    assert contact_synced == 1
    # The leads wait in the backlog, unclaimed, while lead is paused.
    assert rows == {f"lead {i}": ("pending", None) for i in range(1, 7)}
    assert [(p["object"], p["direction"]) for p in paused] == [("lead", "*")]
    assert [(e.object, e.status) for e in errors] == [("lead", "open")]
    with engine.connect() as conn:
        claimed = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_queue)
            .where(sync_queue.c.claimed_by.is_not(None))
        ).scalar_one()
    assert claimed == 0
