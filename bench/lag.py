"""End-to-end lag: from a local commit to Dynamics' acknowledgement, under steady load.

Usage: ``.venv/bin/python bench/lag.py [--rate 50] [--seconds 30] [--backend sqlite]``

The emulator runs in its own process with Dataverse's limits scaled down in time (as in
``bench/push.py``: 200 requests / 10 s, 52 concurrent, 20 ms + 1 ms per record). A real
``crmsync worker`` process pushes while this script commits ``--rate`` changes per
second to ``lead`` through the store, as an application would: four in five insert a
new lead, one in five updates a lead inserted at least 3 s earlier (each lead is updated
at most once, so every change has its own acknowledgement to look up).

The lag of a change is ``sync_record.last_synced_at`` of its record (the worker stamps
it when Dynamics' response arrived, so the write was already visible in the emulator)
minus the time its commit returned, both on this machine's clock. An insert later
updated is left out (its stamp now belongs to the update). The first ``--warmup``
seconds are left out.

Baseline, same run and same emulator settings: the round trip of one direct upsert
through ``DataverseClient`` (sequential, 10 per second, well within the request
budget), i.e. the least a change can take to reach Dynamics. Printed: p50/p95/p99/max
of both, and the p95 against the target (2 s at 50 changes/s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.writes import Write
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.migrate import upgrade
from crmsync.store.schema import sync_change, sync_queue, sync_record
from push import start_emulator

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_P95_S = 2.0
UPDATE_AFTER_S = 3.0


def quantiles(values: list[float]) -> dict[str, float]:
    xs = sorted(values)

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {"n": len(xs), "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": xs[-1]}


def show(label: str, lags: list[float]) -> dict[str, float]:
    s = quantiles(lags)
    print(
        f"{label:34s} n={s['n']:5.0f}  p50 {s['p50'] * 1000:7.0f} ms  p95 {s['p95'] * 1000:7.0f} ms"
        f"  p99 {s['p99'] * 1000:7.0f} ms  max {s['max'] * 1000:7.0f} ms",
        flush=True,
    )
    return s


def configure(url: str, args: argparse.Namespace) -> None:
    httpx.post(f"{url}/_emulator/reset", timeout=10).raise_for_status()
    httpx.put(
        f"{url}/_emulator/config",
        json={
            "max_requests": args.max_requests,
            "window_s": args.window,
            "max_concurrency": args.max_concurrency,
            "latency_ms": args.latency_ms,
            "per_record_ms": args.per_record_ms,
        },
        timeout=10,
    ).raise_for_status()


def settings_for(url: str, database_url: str) -> Settings:
    return load_settings(
        database_url=database_url,
        dynamics_url=url,
        authority_url=url,
        tenant_id="bench",
        client_id="bench-app",
        client_secret="bench-secret",
    )


async def direct_round_trips(settings: Settings, n: int) -> list[float]:
    """Round trips of single upserts, one at a time, ten per second."""
    out: list[float] = []
    async with DataverseClient.from_settings(settings) as client:
        for i in range(n):
            body = {"emailaddress1": f"direct{i}@example.com", "lastname": f"D{i}"}
            started = time.perf_counter()
            result = await client.write(Write("upsert", "leads", str(uuid.uuid4()), body))
            out.append(time.perf_counter() - started)
            if result.error is not None:
                raise SystemExit(f"direct write failed: {result.error}")
            await asyncio.sleep(max(0.0, 0.1 - out[-1]))
    return out


def make_store(backend: str, tmp: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'lag.db'}", None
    name = f"crmsync_bench_lag_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), name


def drop_store(name: str | None) -> None:
    if name is None:
        return
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def start_worker(settings: Settings, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=settings.database_url,
        CRMSYNC_DYNAMICS_URL=settings.dynamics_url or "",
        CRMSYNC_AUTHORITY_URL=settings.authority_url or "",
        CRMSYNC_TENANT_ID="bench",
        CRMSYNC_CLIENT_ID="bench-worker",
        CRMSYNC_CLIENT_SECRET="bench-secret",
        CRMSYNC_BATCH_SIZE=str(args.batch_size),
    )
    crmsync = str(Path(sys.executable).with_name("crmsync"))
    cmd = [crmsync, "worker", "--concurrency", str(args.lanes)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def load(
    engine: sa.Engine, rate: float, seconds: float, took: list[float]
) -> dict[tuple[str, int], datetime]:
    """Commit ``rate`` changes a second for ``seconds``; when each commit returned.

    ``took`` receives how long each write transaction took (lock wait included): a
    stall of the store shows there, not in the push.
    """
    rnd = random.Random(5)
    committed: dict[tuple[str, int], datetime] = {}
    inserted: list[tuple[int, float]] = []  # (lead id, when), oldest first
    updatable = 0  # index into ``inserted`` of the next lead old enough to update
    start = time.monotonic()
    for k in range(int(rate * seconds)):
        time.sleep(max(0.0, start + k / rate - time.monotonic()))
        now = time.monotonic()
        while updatable < len(inserted) and inserted[updatable][1] <= now - UPDATE_AFTER_S:
            updatable += 1
        began = time.perf_counter()
        with write_transaction(engine) as conn:
            if rnd.random() < 0.2 and updatable > 0:
                lead_id, _ = inserted.pop(rnd.randrange(updatable))
                updatable -= 1
                conn.execute(
                    sa.text("UPDATE lead SET last_name = :l WHERE id = :i"),
                    {"l": f"U{k}", "i": lead_id},
                )
                key = ("update", lead_id)
            else:
                lead_id = conn.execute(
                    sa.text(
                        "INSERT INTO lead (email, last_name, company)"
                        " VALUES (:e, :l, 'Acme') RETURNING id"
                    ),
                    {"e": f"lag{k}@example.com", "l": f"L{k}"},
                ).scalar_one()
                inserted.append((lead_id, time.monotonic()))
                key = ("insert", lead_id)
        committed[key] = datetime.now(UTC)
        took.append(time.perf_counter() - began)
    return committed


def wait_drained(engine: sa.Engine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count())
                .select_from(sync_queue)
                .where(sync_queue.c.state == "pending")
            ).scalar_one()
            left += conn.execute(sa.select(sa.func.count()).select_from(sync_change)).scalar_one()
        if left == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"the worker did not drain the queue in {timeout:g} s ({left} left)")


def lags(
    engine: sa.Engine, committed: dict[tuple[str, int], datetime], skip_before: datetime
) -> dict[str, list[float]]:
    with engine.connect() as conn:
        acked = dict(
            conn.execute(
                sa.select(sync_record.c.record_id, sync_record.c.last_synced_at).where(
                    sync_record.c.object == "lead"
                )
            ).all()
        )
    updated = {lead_id for kind, lead_id in committed if kind == "update"}
    out: dict[str, list[float]] = {"insert": [], "update": []}
    for (kind, lead_id), at in committed.items():
        if at < skip_before or (kind == "insert" and lead_id in updated):
            continue
        if lead_id not in acked:
            raise SystemExit(f"lead {lead_id} has no sync record: not acknowledged")
        out[kind].append((acked[lead_id] - at).total_seconds())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=50, help="changes committed per second")
    p.add_argument("--seconds", type=float, default=30, help="length of the steady load")
    p.add_argument("--warmup", type=float, default=5, help="first seconds left out")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--lanes", type=int, default=4, help="the worker's --concurrency")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--direct", type=int, default=100, help="direct writes for the baseline")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--window", type=float, default=10)
    p.add_argument("--max-concurrency", type=int, default=52)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--per-record-ms", type=float, default=1)
    args = p.parse_args()
    logging.getLogger("crmsync").setLevel(logging.ERROR)

    emulator, url = start_emulator()
    tmp = Path(tempfile.mkdtemp(prefix="crmsync-lag-"))
    database_url, pg_name = make_store(args.backend, tmp)
    worker: subprocess.Popen[bytes] | None = None
    try:
        settings = settings_for(url, database_url)
        configure(url, args)
        direct = asyncio.run(direct_round_trips(settings, args.direct))
        configure(url, args)
        engine = create_store_engine(database_url)
        upgrade(engine, settings.object_specs().values())
        worker = start_worker(settings, args)
        time.sleep(2)  # let the worker start and find an empty queue
        started = datetime.now(UTC)
        took: list[float] = []
        committed = load(engine, args.rate, args.seconds, took)
        wait_drained(engine, timeout=120)
        stats = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
        skip = started.timestamp() + args.warmup
        found = lags(engine, committed, datetime.fromtimestamp(skip, UTC))
        engine.dispose()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        emulator.terminate()
        emulator.wait(timeout=10)
        drop_store(pg_name)

    print(
        f"\n{args.backend}; {args.rate:g} changes/s for {args.seconds:g} s (first {args.warmup:g} s"
        f" left out); worker: {args.lanes} lanes, batch {args.batch_size}; limits"
        f" {args.max_requests} req/{args.window:g} s, {args.max_concurrency} concurrent,"
        f" {args.latency_ms:g} ms + {args.per_record_ms:g} ms/record"
    )
    print(f"emulator answered: {stats['requests']['by_status']}")
    base = show("direct upsert round trip (baseline)", direct)
    show("local write transaction (load side)", took)
    both = show("commit -> acknowledged, all", found["insert"] + found["update"])
    show("  inserts", found["insert"])
    show("  updates", found["update"])
    print(
        f"p95 {both['p95']:.2f} s (target <= {TARGET_P95_S:g} s: "
        f"{'met' if both['p95'] <= TARGET_P95_S else 'NOT met'});"
        f" p50 = {both['p50'] / statistics.median(direct):.1f}x the direct round trip's p50"
        f" ({base['p50'] * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
