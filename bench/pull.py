"""Initial-load throughput: crmsync's pull versus a bare httpx loop over the same pages.

Usage: ``.venv/bin/python bench/pull.py [--records 200000] [--rounds 3] [--database-url URL]
[--object lead|wide]`` (``wide``: 40 mapped fields of mixed types, ``bench/wide.py``,
seeded with the values ``bench/push.py`` sends)

The emulator runs with uvicorn in a separate process and is seeded with ``--records``
leads (``UpsertMultiple``, by another application user). Each round then measures, in
alternation:

- bare: one httpx client reads every page of the change-tracking initial load
  (``Prefer: odata.track-changes, odata.maxpagesize=5000``, the same ``$select``,
  following ``@odata.nextLink``), parses each page's JSON and stores nothing;
- crmsync: ``worker --once`` in-process on a fresh store (SQLite file by default): the
  initial load read, staged and applied until every lead is a local row with its sync
  state and the delta link is saved.

Both figures are records per second over the same pages in the same run; the printed
ratio (crmsync / bare, medians over rounds) is what the target (>= 0.5) refers to.

``--mode reconcile`` measures the full reconciliation that an expired delta token
triggers, where every record is already known: each round loads the leads into a fresh
store (not timed), then another user updates ``--changed`` of them and deletes
``--deleted`` of them, the emulator expires its delta tokens, and ``worker --once`` is
timed reading everything again, staging and applying only what changed and detecting
the deletions. It is checked to end exact (local leads = remote leads, changes applied,
nothing queued) and compared with the bare loop reading the same pages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.writes import Write
from crmsync.engine import changes
from crmsync.engine.plan import body_for
from crmsync.engine.worker import Worker
from crmsync.mapping import build
from crmsync.store.db import capture_suppressed, create_store_engine
from crmsync.store.migrate import upgrade
from push import start_emulator, wide_value
from wide import wide_mapping  # bench/wide.py

SEED_CHUNK = 1000
# What is loaded: the four-field lead, or the wide object (bench/wide.py).
OBJECT = {"name": "lead"}


def settings_for(url: str, database_url: str, client_id: str, batch_size: int) -> Settings:
    return load_settings(
        database_url=database_url,
        dynamics_url=url,
        authority_url=url,
        tenant_id="bench",
        client_id=client_id,
        client_secret="bench-secret",
        batch_size=batch_size,
        objects=wide_mapping() if OBJECT["name"] == "wide" else {},
    )


async def seed(url: str, records: int) -> list[str]:
    async with DataverseClient.from_settings(
        settings_for(url, "sqlite://", "bench-seeder", 100)
    ) as client:
        sem = asyncio.Semaphore(8)
        ids = [str(uuid.uuid4()) for _ in range(records)]

        async def chunk(start: int) -> None:
            if OBJECT["name"] == "wide":
                await wide_chunk(client, sem, ids, start, records)
                return
            writes = [
                Write(
                    "upsert",
                    "leads",
                    ids[i],
                    {
                        "emailaddress1": f"lead{i}@example.com",
                        "firstname": f"First{i}",
                        "lastname": f"Last{i}",
                        "companyname": f"Company {i % 997}",
                    },
                )
                for i in range(start, min(records, start + SEED_CHUNK))
            ]
            async with sem:
                results = await client.write_multiple(
                    "UpsertMultiple", "leads", "lead", "leadid", writes
                )
            failed = [r.error for r in results if r.error is not None]
            if failed:
                raise SystemExit(f"seeding failed: {failed[0]}")

        await asyncio.gather(*(chunk(s) for s in range(0, records, SEED_CHUNK)))
    return ids


async def wide_chunk(
    client: DataverseClient, sem: asyncio.Semaphore, ids: list[str], start: int, records: int
) -> None:
    spec = build(wide_mapping())["wide"]
    writes = []
    for i in range(start, min(records, start + SEED_CHUNK)):
        row = {c: wide_value(f.type.value, i) for c, f in spec.field_specs.items()}
        writes.append(Write("upsert", spec.entity_set, ids[i], body_for(spec, row, {})[0]))
    async with sem:
        results = await client.write_multiple(
            "UpsertMultiple", spec.entity_set, spec.logical_name, spec.primary_key, writes
        )
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise SystemExit(f"seeding failed: {failed[0]}")


async def disturb(url: str, changed: Sequence[str], deleted: Sequence[str]) -> None:
    """Another user updates ``changed`` and deletes ``deleted``, 1,000 per request."""
    async with DataverseClient.from_settings(
        settings_for(url, "sqlite://", "bench-seeder", 100)
    ) as client:
        for start in range(0, len(changed), SEED_CHUNK):
            writes = [
                Write("upsert", "leads", crm_id, {"companyname": f"Changed {crm_id[:8]}"})
                for crm_id in changed[start : start + SEED_CHUNK]
            ]
            results = await client.write_multiple(
                "UpsertMultiple", "leads", "lead", "leadid", writes
            )
            if any(r.error is not None for r in results):
                raise SystemExit("updating failed")
        for start in range(0, len(deleted), SEED_CHUNK):
            writes = [Write("delete", "leads", i) for i in deleted[start : start + SEED_CHUNK]]
            if any(r.error is not None for r in await client.write_batch(writes)):
                raise SystemExit("deleting failed")


def bare(url: str, select: str) -> tuple[int, float]:
    """Rows read per second by a loop that only fetches and parses the pages."""
    form = {"grant_type": "client_credentials", "client_id": "bench-bare", "client_secret": "s"}
    token = httpx.post(f"{url}/bench/oauth2/v2.0/token", data=form, timeout=10).json()
    headers = {
        "Authorization": f"Bearer {token['access_token']}",
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
        "Prefer": "odata.track-changes,odata.maxpagesize=5000",
    }
    rows = 0
    started = time.perf_counter()
    with httpx.Client(headers=headers, timeout=120) as http:
        entity_set = "new_wides" if OBJECT["name"] == "wide" else "leads"
        link: str | None = f"{url}/api/data/v9.2/{entity_set}?$select={select}"
        while link:
            body = http.get(link).json()
            rows += len(body["value"])
            link = body.get("@odata.nextLink")
    return rows, time.perf_counter() - started


def crmsync_load(url: str, database_url: str, batch_size: int) -> tuple[int, float]:
    """Leads loaded into the local table per second by ``worker --once``."""
    settings = settings_for(url, database_url, "bench-crmsync", batch_size)
    engine = create_store_engine(database_url)
    upgrade(engine, settings.object_specs().values())

    async def run() -> None:
        async with DataverseClient.from_settings(settings) as client:
            await Worker(engine, client, settings, concurrency=1).run(once=True)

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        table = OBJECT["name"]
        loaded = int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
        left = int(conn.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar_one())
    engine.dispose()
    if left:
        raise SystemExit(f"{left} entries left in the queue")
    return loaded, elapsed


def bare_round(r: int, url: str, select: str) -> float:
    rows, seconds = bare(url, select)
    print(
        f"round {r + 1} bare    {rows:,} rows in {seconds:6.2f} s = {rows / seconds:9,.0f} rows/s",
        flush=True,
    )
    return rows / seconds


def check_reconciled(database_url: str, remote: set[str], changed: Sequence[str]) -> None:
    """Local leads are exactly the remote ones, the changes applied, nothing left."""
    engine = create_store_engine(database_url)
    with engine.connect() as conn:
        local = {
            crm_id: company
            for crm_id, company in conn.execute(sa.text("SELECT crm_id, company FROM lead"))
        }
        states = int(conn.execute(sa.text("SELECT count(*) FROM sync_record")).scalar_one())
    engine.dispose()
    if set(local) != remote or len(local) != states:
        raise SystemExit(
            f"not reconciled: {len(local):,} local, {len(remote):,} remote, {states:,} states"
        )
    wrong = [i for i in changed if i in remote and local[i] != f"Changed {i[:8]}"]
    if wrong:
        raise SystemExit(f"{len(wrong):,} changes not applied")


def reconcile_round(
    url: str, database_url: str, batch_size: int, ids: list[str], changed: int, deleted: int
) -> tuple[int, float]:
    """Load (not timed), disturb, expire the delta tokens; the timed reconciliation."""
    crmsync_load(url, database_url, batch_size)
    random.shuffle(ids)
    gone, moved = ids[:deleted], ids[deleted : deleted + changed]
    del ids[:deleted]
    asyncio.run(disturb(url, moved, gone))
    httpx.put(f"{url}/_emulator/config", json={"expire_delta_tokens": True}, timeout=30)
    loaded, seconds = crmsync_load(url, database_url, batch_size)
    check_reconciled(database_url, set(ids), moved)
    return loaded, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=200_000, help="leads in the emulator")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1000, help="entries applied per batch")
    p.add_argument("--mode", choices=["load", "reconcile"], default="load")
    p.add_argument("--object", choices=["lead", "wide"], default="lead")
    p.add_argument("--changed", type=float, default=0.01, help="reconcile: share updated")
    p.add_argument("--deleted", type=float, default=0.01, help="reconcile: share deleted")
    p.add_argument(
        "--database-url",
        default=None,
        help="store for crmsync (default: a fresh SQLite file per round); a PostgreSQL"
        " database is emptied of local rows and sync state before each round",
    )
    args = p.parse_args()
    if args.object == "wide" and args.mode == "reconcile":
        p.error("--object wide measures the initial load only")
    OBJECT["name"] = args.object
    logging.getLogger("crmsync").setLevel(logging.ERROR)
    objects = wide_mapping() if args.object == "wide" else {}
    spec = load_settings(database_url="sqlite://", objects=objects).object_specs()[args.object]
    select = ",".join(changes.select_for(spec, None))

    proc, url = start_emulator(objects)
    bare_rates: list[float] = []
    ours: list[float] = []
    try:
        started = time.perf_counter()
        ids = asyncio.run(seed(url, args.records))
        print(f"seeded {args.records:,} leads in {time.perf_counter() - started:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                if args.mode == "load":
                    bare_rates.append(bare_round(r, url, select))
                database_url = args.database_url or f"sqlite:///{Path(tmp) / f'r{r}.db'}"
                if args.database_url:
                    reset(database_url)
                if args.mode == "reconcile":
                    loaded, seconds = reconcile_round(
                        url,
                        database_url,
                        args.batch_size,
                        ids,
                        int(len(ids) * args.changed),
                        int(len(ids) * args.deleted),
                    )
                else:
                    loaded, seconds = crmsync_load(url, database_url, args.batch_size)
                    if loaded != args.records:
                        raise SystemExit(f"loaded {loaded:,} leads, expected {args.records:,}")
                ours.append(loaded / seconds)
                print(
                    f"round {r + 1} crmsync {loaded:,} rows in {seconds:6.2f} s"
                    f" = {loaded / seconds:9,.0f} rows/s",
                    flush=True,
                )
                if args.mode == "reconcile":  # the pages the reconciliation read
                    bare_rates.append(bare_round(r, url, select))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    b, c = statistics.median(bare_rates), statistics.median(ours)
    # Both sides and the emulator share the machine's cores: say how busy it was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{args.records:,} {args.object} records, {args.rounds} rounds (medians);"
        f" load average {load}"
    )
    print(f"bare httpx loop  {b:10,.0f} records/s")
    print(f"crmsync {args.mode:9}{c:10,.0f} records/s")
    print(f"ratio            {c / b:10.2f}   (target >= 0.5)")


def reset(database_url: str) -> None:
    engine = create_store_engine(database_url)
    present = set(sa.inspect(engine).get_table_names())
    # Without capture: a logged delete would be pushed to Dynamics by the next round.
    with engine.begin() as conn, capture_suppressed(conn):
        for table in (
            OBJECT["name"],
            "sync_queue",
            "sync_record",
            "sync_cursor",
            "sync_throughput",
        ):
            if table in present:
                conn.execute(sa.text(f"DELETE FROM {table}"))
    engine.dispose()


if __name__ == "__main__":
    main()
