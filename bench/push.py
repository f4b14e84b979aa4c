"""Push throughput against the emulator under Dataverse's limits scaled down in time.

Usage: ``.venv/bin/python bench/push.py [--seconds 20] [--rounds 3] [--batch-size 100]
[--object lead|wide]`` (``wide``: 40 mapped fields of mixed types, ``bench/wide.py``, the
bodies built and converted as the engine builds them). ``--cost-model dataverse
[--records N] [--bad 0.01] [--edits]`` runs the engine's drain instead
(``bench/bulk_drain.py``), ending with the contract's ``drain:`` line.

The emulator runs with uvicorn on 127.0.0.1 in a separate process, configured with
Dataverse's service-protection limits scaled down in time (6,000 requests per 300 s
becomes ``--max-requests`` per ``--window`` s; 52 concurrent requests; ``--latency-ms``
per request plus ``--per-record-ms`` per record). Three clients, each through
``DataverseClient`` with 52 requests in flight, send fresh lead upserts for
``--seconds`` (a whole number of windows) per round:

- ``$batch``: ``write_batch`` of ``--batch-size`` upserts per request (what the engine
  uses);
- ``UpsertMultiple``: ``write_multiple`` of ``--batch-size`` records per request;
- naive: one ``PATCH`` per record.

The ceiling those limits allow, in records per second, for ``B`` records per request::

    ceiling = min(max_requests / window_s * B,                      # request budget
                  max_concurrency * B / (latency + per_record * B))  # in-flight bound

A sliding window admits at most ``max_requests`` requests in any ``window_s``, so over a
run of ``k`` whole windows at most ``k * max_requests`` requests succeed: the first term
is exact for such runs. The second: at most ``max_concurrency`` requests are in flight
and each takes at least ``latency + per_record * B``. Figures are medians over rounds,
printed as ratios of the ceiling and of the naive client measured in the same run (a
2-core machine is noisy; only same-run ratios mean anything).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

import bulk_drain  # bench/bulk_drain.py
from crmsync.config import load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.writes import ItemResult, Write
from crmsync.engine.plan import body_for
from crmsync.mapping import build
from wide import wide_mapping  # bench/wide.py

SERVE = (
    "import sys, uvicorn; from crmsync.emulator.server import config; "
    "from crmsync.config import load_settings; "
    "import ast; objects = ast.literal_eval(sys.argv[2]); "
    "specs = load_settings(objects=objects).object_specs().values(); "
    "uvicorn.Server(config('127.0.0.1', int(sys.argv[1]), specs=specs)).run()"
)
# What the writes are: the four-field lead, or the wide object (bench/wide.py).
OBJECT = {"name": "lead"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_emulator(objects: dict[str, Any] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port), repr(objects or {})])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("emulator did not start")


def ceiling(args: argparse.Namespace, per_request: int) -> float:
    by_budget = args.max_requests / args.window * per_request
    seconds = (args.latency_ms + args.per_record_ms * per_request) / 1000
    by_concurrency = args.max_concurrency * per_request / seconds
    return min(by_budget, by_concurrency)


def lead(i: int) -> Write:
    if OBJECT["name"] == "wide":
        return wide_write(i)
    body = {"emailaddress1": f"b{i}@example.com", "lastname": f"L{i}", "companyname": "Acme"}
    return Write("upsert", "leads", str(uuid.uuid4()), body)


def wide_write(i: int) -> Write:
    """A wide record's upsert, its body built as the engine builds it (``body_for``)."""
    spec = WIDE[0]
    row = {c: wide_value(f.type.value, i) for c, f in spec.field_specs.items()}
    return Write("upsert", spec.entity_set, str(uuid.uuid4()), body_for(spec, row, {})[0])


def wide_value(kind: str, n: int) -> Any:
    return {
        "string": f"text {n}",
        "integer": n,
        "decimal": Decimal(n % 10_000) / 100,
        "money": Decimal(n % 10_000) / 10,
        "boolean": n % 2 == 0,
        "datetime": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        "date": date(2026, 1, 1) + timedelta(days=n % 365),
        "choice": ("low", "mid", "high")[n % 3],
    }[kind]


WIDE: list[Any] = []


Send = Callable[[DataverseClient, Sequence[Write]], Awaitable[list[ItemResult]]]


async def _batch(client: DataverseClient, writes: Sequence[Write]) -> list[ItemResult]:
    return await client.write_batch(writes)


async def _multiple(client: DataverseClient, writes: Sequence[Write]) -> list[ItemResult]:
    if OBJECT["name"] == "wide":
        spec = WIDE[0]
        return await client.write_multiple(
            "UpsertMultiple", spec.entity_set, spec.logical_name, spec.primary_key, writes
        )
    return await client.write_multiple("UpsertMultiple", "leads", "lead", "leadid", writes)


async def _naive(client: DataverseClient, writes: Sequence[Write]) -> list[ItemResult]:
    return [await client.write(writes[0])]


async def run_mode(url: str, send: Send, per_request: int, seconds: float, lanes: int) -> float:
    """Records acknowledged per second by ``lanes`` concurrent senders for ``seconds``."""
    settings = load_settings(
        database_url="sqlite://",
        dynamics_url=url,
        authority_url=url,
        tenant_id="bench",
        client_id="bench-app",
        client_secret="bench-secret",
    )
    ok = 0
    counter = 0
    end = time.monotonic() + seconds
    async with DataverseClient.from_settings(settings) as client:

        async def lane() -> None:
            nonlocal ok, counter
            while time.monotonic() < end:
                writes = [lead(counter + i) for i in range(per_request)]
                counter += per_request
                try:
                    results = await send(client, writes)
                except Exception:  # a benchmark counts successes only
                    await asyncio.sleep(0.05)
                    continue
                if time.monotonic() <= end:
                    ok += sum(r.error is None for r in results)

        started = time.monotonic()
        tasks = [asyncio.create_task(lane()) for _ in range(lanes)]
        await asyncio.wait(tasks, timeout=seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started
    return ok / elapsed


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=20, help="run per mode and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=int(os.environ.get("CRMSYNC_BATCH_SIZE", 100)))
    p.add_argument("--lanes", type=int, default=52, help="requests in flight per client")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--window", type=float, default=10)
    p.add_argument("--max-concurrency", type=int, default=52)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--per-record-ms", type=float, default=1)
    p.add_argument("--modes", default="batch,multiple,naive")
    p.add_argument("--object", choices=["lead", "wide"], default="lead")
    p.add_argument(
        "--cost-model",
        choices=["flat", "dataverse"],
        default="flat",
        help="dataverse: the drain of bench/bulk_drain.py (bulk vs $batch-only engine)",
    )
    p.add_argument("--records", type=int, default=25_000, help="dataverse: backlog (1000000 ok)")
    p.add_argument("--baseline-records", type=int, default=10_000)
    p.add_argument(
        "--baseline-batch-size", type=int, default=100, help="the $batch-only engine's claim"
    )
    p.add_argument("--baseline-seconds", type=float, default=None, help="default 3 windows")
    p.add_argument("--bad", type=float, default=0.0, help="dataverse: share of refused records")
    p.add_argument("--edits", action="store_true", help="dataverse: an edit a second meanwhile")
    p.add_argument(
        "--resync",
        action="store_true",
        help="dataverse: the backlog is a resync job of every lead (changed unseen)",
    )
    p.add_argument("--timeout", type=float, default=7200)
    args = p.parse_args()
    if args.cost_model == "dataverse":
        if "--window" not in sys.argv:
            args.window = 60.0
        if "--lanes" not in sys.argv:
            args.lanes = 4
        if "--batch-size" not in sys.argv:
            args.batch_size = 1000
        if "--latency-ms" not in sys.argv:
            args.latency_ms = 50
        args.baseline_seconds = args.baseline_seconds or 3 * args.window
        logging.getLogger("crmsync").setLevel(logging.ERROR)
        proc, url = start_emulator({})
        try:
            bulk_drain.main(args, url)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return
    logging.getLogger("crmsync").setLevel(logging.ERROR)
    objects = wide_mapping() if args.object == "wide" else {}
    OBJECT["name"] = args.object
    WIDE[:] = [build(objects)["wide"]] if args.object == "wide" else []

    proc, url = start_emulator(objects)
    modes: dict[str, tuple[Send, int]] = {
        "batch": (_batch, args.batch_size),
        "multiple": (_multiple, args.batch_size),
        "naive": (_naive, 1),
    }
    wanted = args.modes.split(",")
    figures: dict[str, list[float]] = {m: [] for m in wanted}
    try:
        for r in range(args.rounds):
            for mode in wanted:
                configure(url, args)
                send, per_request = modes[mode]
                rate = asyncio.run(run_mode(url, send, per_request, args.seconds, args.lanes))
                figures[mode].append(rate)
                print(f"round {r + 1} {mode:9s} {rate:10.1f} records/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    naive = statistics.median(figures["naive"]) if "naive" in figures else None
    print(
        f"\nlimits: {args.max_requests} req/{args.window:g} s, {args.max_concurrency} concurrent,"
        f" {args.latency_ms:g} ms + {args.per_record_ms:g} ms/record; batch {args.batch_size};"
        f" {args.seconds:g} s x {args.rounds} rounds (medians)"
    )
    print(f"{'mode':10s} {'records/s':>10s} {'ceiling':>9s} {'of ceiling':>11s} {'x naive':>8s}")
    for mode in wanted:
        med = statistics.median(figures[mode])
        ceil = ceiling(args, modes[mode][1])
        vs = f"{med / naive:8.1f}" if naive else "       -"
        print(f"{mode:10s} {med:10.1f} {ceil:9.1f} {med / ceil:11.2f} {vs}")


if __name__ == "__main__":
    main()
