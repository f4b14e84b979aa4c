"""Soak: the demo's generator at 100 changes/s for 30 minutes against faults; nothing
lost, nothing duplicated, lag bounded, memory flat.

Usage: ``.venv/bin/python bench/soak.py [--minutes 30] [--rate 100] [--database-url URL]``
(``make soak``; not part of the test suite).

Three processes, as in production:

- the emulator (``crmsync emulator``) with Dataverse's limits (6,000 requests per 300 s,
  52 concurrent), 30 ms + 1 ms per record, duplicate detection on, and faults: 1% of
  requests answered 429 with ``Retry-After``, 1% answered 503;
- the product under test, ``crmsync run`` (console/API and workers in one process), on a
  SQLite file (default) or the PostgreSQL database given;
- this script: the demo's traffic generator (plain SQL, the records API with the token,
  and a separate Dynamics user) at ``--rate`` changes per second, with 2% bad data, and
  the samplers.

At the end the generator stops; the script waits for a pull of every object that began
after the stop (the Dynamics user's last edits, and the conflicts they raise, reach the
store only then) and for the backlog to drain; the faults are switched off, and the
local tables, the queue, the errors and the emulator are compared (differing records
are listed with their sync state and queue entries; on failure the store is kept):

- no pending entry is left;
- every local lead and contact without an open error is in Dynamics exactly once with
  its current values (no change lost);
- every record crmsync created in Dynamics belongs to exactly one local row (no
  duplicate creates, no missed delete);
- every parked entry has an open error.

Lag: the age of the oldest waiting change, sampled every second (an upper bound of
every change's lag at that moment), and for inserts, Dynamics' ``createdon`` minus the
local ``created_at`` (both whole seconds). Memory: resident set size of the
``crmsync run`` process after the warm-up versus at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from crmsync.config import load_settings
from crmsync.demo.generator import CrmUser, Traffic, TrafficConfig
from crmsync.emulator.auth import user_id_for
from crmsync.store.db import create_store_engine
from crmsync.store.migrate import upgrade

CLIENT_ID = "crmsync-soak"
TOKEN = "soak-token-0123456789abcdef"
FIELDS = {
    "lead": {
        "email": "emailaddress1",
        "first_name": "firstname",
        "last_name": "lastname",
        "company": "companyname",
    },
    "contact": {"email": "emailaddress1", "first_name": "firstname", "last_name": "lastname"},
}
ENTITY_SET = {"lead": "leads", "contact": "contacts"}
PULLED = ("lead", "contact", "account", "opportunity")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/_emulator/stats", timeout=2).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the emulator did not start")


def configure(url: str, **values: Any) -> None:
    httpx.put(f"{url}/_emulator/config", json=values, timeout=10).raise_for_status()


def start_product(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "run", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline and proc.poll() is None and "on http" not in line:
        time.sleep(0.1)
        line = log.read_text()
    match = re.search(r"on (http://\S+),", line)
    if not match:
        proc.kill()
        raise SystemExit(f"crmsync run did not start: {line}")
    return proc, match.group(1)


def inspector_token(url: str) -> str:
    resp = httpx.post(
        f"{url}/soak/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "soak-inspector",
            "client_secret": "x",
            "scope": f"{url}/.default",
        },
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def crm_rows(url: str, entity_set: str) -> list[dict[str, Any]]:
    token = inspector_token(url)
    rows: list[dict[str, Any]] = []
    next_url: str | None = f"{url}/api/data/v9.2/{entity_set}"
    headers = {"Authorization": f"Bearer {token}", "Prefer": "odata.maxpagesize=5000"}
    while next_url:
        resp = httpx.get(next_url, headers=headers, timeout=60)
        resp.raise_for_status()
        body = resp.json()
        rows.extend(body["value"])
        next_url = body.get("@odata.nextLink")
    return rows


# A change's wait starts when it was captured; for a record whose earlier change was
# refused (an open error), at its latest change: the refused ones are accounted as errors.
WAIT_START = """
    CASE WHEN EXISTS (
        SELECT 1 FROM sync_error e WHERE e.status = 'open' AND e.object = q.object
        AND e.direction = q.direction AND e.record_key = q.record_key
    ) THEN q.last_changed_at ELSE q.first_queued_at END
"""


def pending(engine: sa.Engine) -> tuple[int, float]:
    """(pending to_crm entries, seconds the oldest waiting change has waited)."""
    with engine.connect() as conn:
        n, oldest = conn.execute(
            sa.text(
                f"SELECT count(*), min({WAIT_START}) FROM sync_queue q "
                "WHERE q.state = 'pending' AND q.direction = 'to_crm'"
            )
        ).one()
        # Changes captured but not folded into the queue yet wait too.
        logged, first_logged = conn.execute(
            sa.text("SELECT count(*), min(changed_at) FROM sync_change")
        ).one()
    n += logged
    if first_logged and (not oldest or str(first_logged) < str(oldest)):
        oldest = first_logged
    if not oldest:
        return int(n), 0.0
    if isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(n), max(0.0, (datetime.now(UTC) - oldest).total_seconds())


async def settle(engine: sa.Engine, stopped_at: datetime, deadline: float) -> None:
    """Wait until both sides have seen everything: a pull of every object that began
    after the generator stopped (Dynamics users' last edits, and the conflicts they
    raise, are only known to the store after it), and then no entry pending in either
    direction."""
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            pulled = conn.execute(sa.text("SELECT object, updated_at FROM sync_cursor")).all()
            waiting = conn.execute(
                sa.text("SELECT count(*) FROM sync_queue WHERE state = 'pending'")
            ).scalar()
        seen = {obj: _utc(at) for obj, at in pulled}
        # A page is saved when read, so a cursor saved after the stop covers the stop
        # (plus a second for the emulator's clock granularity).
        fresh = len(seen) >= len(PULLED) and all(
            seen.get(obj, stopped_at) > stopped_at + timedelta(seconds=1) for obj in PULLED
        )
        if fresh and not waiting:
            return
        await asyncio.sleep(0.5)


def _utc(value: Any) -> datetime:
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def oldest_entry(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "SELECT object, record_key, operation, attempts, first_queued_at, "
                    "next_attempt_at, claimed_by, claimed_until, last_error_code "
                    "FROM sync_queue WHERE state = 'pending' AND direction = 'to_crm' "
                    "ORDER BY first_queued_at LIMIT 1"
                )
            )
            .mappings()
            .first()
        )
    return {k: str(v) for k, v in (row or {}).items()}


def compare(engine: sa.Engine, url: str) -> dict[str, Any]:
    """The closing accounting: local, queue, errors and Dynamics agree."""
    sync_user = user_id_for(CLIENT_ID)
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM sync_queue WHERE state = 'pending'")
        ).scalar()
        open_errors = {
            (r.object, r.record_key)
            for r in conn.execute(
                sa.text("SELECT object, record_key FROM sync_error WHERE status = 'open'")
            )
        }
        parked = {
            (r.object, r.record_key)
            for r in conn.execute(
                sa.text("SELECT object, record_key FROM sync_queue WHERE state = 'parked'")
            )
        }
        local = {
            obj: [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {obj}")).mappings()]
            for obj in FIELDS
        }
    if left:
        problems.append(f"{left} entries still pending")
    if not parked <= open_errors:
        problems.append(f"{len(parked - open_errors)} parked entries without an open error")
    for obj, columns in FIELDS.items():
        crm = {r[f"{obj}id"]: r for r in crm_rows(url, ENTITY_SET[obj])}
        ours = {k: r for k, r in crm.items() if r.get("_createdby_value") == sync_user}
        known: dict[str, int] = {}
        checked = mismatched = missing = with_error = 0
        for row in local[obj]:
            key = (obj, str(row["id"]))
            if row["crm_id"]:
                known[row["crm_id"]] = known.get(row["crm_id"], 0) + 1
            if key in open_errors:
                with_error += 1
                continue
            record = crm.get(row["crm_id"]) if row["crm_id"] else None
            if record is None:
                missing += 1
                continue
            checked += 1
            differs = {
                c: [row[c], record.get(a)]
                for c, a in columns.items()
                if (row[c] or None) != (record.get(a) or None)
            }
            if differs:
                mismatched += 1
                if len(samples) < 5:
                    samples.append({"object": obj, "id": row["id"], "differs": differs})
        doubles = [k for k, n in known.items() if n > 1]
        orphans = [k for k in ours if k not in known]
        if missing:
            problems.append(f"{obj}: {missing} local rows neither in Dynamics nor in error")
        if mismatched:
            problems.append(f"{obj}: {mismatched} rows differ from Dynamics (a change lost)")
        if doubles:
            problems.append(f"{obj}: {len(doubles)} crm_ids shared by several local rows")
        if orphans:
            problems.append(f"{obj}: {len(orphans)} records crmsync created that no row knows")
        report[obj] = {
            "local": len(local[obj]),
            "in_dynamics_checked": checked,
            "with_open_error": with_error,
            "dynamics_total": len(crm),
            "created_by_crmsync": len(ours),
            "created_by_others": len(crm) - len(ours),
        }
    report["open_errors"] = len(open_errors)
    report["problems"] = problems
    report["differing_samples"] = explain(engine, samples)
    return report


def explain(engine: sa.Engine, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the store says of each differing record: its sync state and queue entries."""
    with engine.connect() as conn:
        for sample in samples:
            key = {"o": sample["object"], "i": sample["id"], "k": str(sample["id"])}
            state = (
                conn.execute(
                    sa.text(
                        "SELECT crm_version, last_synced_at, synced_values, excluded "
                        "FROM sync_record WHERE object = :o AND record_id = :i"
                    ),
                    key,
                )
                .mappings()
                .first()
            )
            entries = (
                conn.execute(
                    sa.text(
                        "SELECT direction, operation, state, attempts, last_error_code "
                        "FROM sync_queue WHERE object = :o AND record_key = :k"
                    ),
                    key,
                )
                .mappings()
                .all()
            )
            sample["sync_record"] = {k: str(v) for k, v in (state or {}).items()}
            sample["queue"] = [dict(e) for e in entries]
    return samples


def insert_lag(engine: sa.Engine, url: str) -> list[float]:
    """Seconds from a local lead's creation to its creation in Dynamics."""
    crm = {r["leadid"]: r for r in crm_rows(url, "leads")}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT crm_id, created_at FROM lead WHERE crm_id IS NOT NULL")
        ).all()
    lags = []
    for crm_id, created_at in rows:
        record = crm.get(crm_id)
        if record is None or not record.get("createdon"):
            continue
        local = (
            created_at
            if isinstance(created_at, datetime)
            else datetime.fromisoformat(str(created_at))
        )
        if local.tzinfo is None:
            local = local.replace(tzinfo=UTC)
        remote = datetime.fromisoformat(record["createdon"].replace("Z", "+00:00"))
        lags.append((remote - local).total_seconds())
    return lags


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    emu_port = free_port()
    emulator = start_emulator(emu_port)
    emu_url = f"http://127.0.0.1:{emu_port}"
    db_url = args.database_url or f"sqlite:///{work / 'soak.db'}"
    engine = create_store_engine(db_url)
    upgrade(engine, load_settings(database_url=db_url).object_specs().values())
    configure(
        emu_url,
        latency_ms=30,
        per_record_ms=1,
        max_requests=6000,
        window_s=300,
        max_concurrency=52,
        throttle_rate=args.throttle,
        fail_rate=args.fail,
        retry_after_s=1,
        duplicate_detection=True,
        seed=7,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=db_url,
        CRMSYNC_DYNAMICS_URL=emu_url,
        CRMSYNC_AUTHORITY_URL=emu_url,
        CRMSYNC_TENANT_ID="soak",
        CRMSYNC_CLIENT_ID=CLIENT_ID,
        CRMSYNC_CLIENT_SECRET="soak-secret",
        CRMSYNC_API_TOKEN=TOKEN,
    )
    product_log = Path(args.log) if args.log else work / "product.log"
    product, api_url = start_product(env, product_log)
    samples: list[float] = []
    slow: list[dict[str, Any]] = []
    rss: list[tuple[float, int]] = []
    started = time.monotonic()
    duration = args.minutes * 60
    try:
        async with (
            httpx.AsyncClient(
                base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            ) as api,
            httpx.AsyncClient(timeout=30) as crm_http,
        ):
            crm = CrmUser(emu_url, "soak", "soak-sales-team", "x", crm_http)
            config = TrafficConfig(rate=args.rate, bad_share=0.02, burst_every_s=None, seed=11)
            traffic = Traffic(engine, api, crm, config, tag="s")
            generating = asyncio.create_task(traffic.run())
            next_print = started + 30
            while time.monotonic() - started < duration:
                await asyncio.sleep(1)
                n, age = await asyncio.to_thread(pending, engine)
                samples.append(age)
                if age > 5:
                    slow.append(await asyncio.to_thread(oldest_entry, engine))
                rss.append((time.monotonic() - started, rss_kib(product.pid)))
                if product.poll() is not None:
                    raise SystemExit(f"crmsync run exited with {product.returncode}")
                if time.monotonic() >= next_print:
                    next_print += 30
                    made = sum(v for k, v in traffic.stats.items() if "_missed" not in k)
                    print(
                        f"{time.monotonic() - started:6.0f} s  backlog {n:5d}  oldest {age:5.1f} s"
                        f"  rss {rss[-1][1] / 1024:6.1f} MiB  writes {made}",
                        flush=True,
                    )
            traffic.stop()
            await generating
        drain_started = time.monotonic()
        await settle(engine, datetime.now(UTC), drain_started + 300)
        drain_seconds = time.monotonic() - drain_started
        configure(emu_url, throttle_rate=0, fail_rate=0, latency_ms=0, per_record_ms=0)
        result = compare(engine, emu_url)
        lags = insert_lag(engine, emu_url)
        stats = httpx.get(f"{emu_url}/_emulator/stats", timeout=10).json()
    finally:
        product.send_signal(signal.SIGINT)
        try:
            product_rc = product.wait(timeout=30)
        except subprocess.TimeoutExpired:
            product.kill()
            product_rc = -9
        emulator.kill()
        emulator.wait()
        engine.dispose()
    warm = [kib for t, kib in rss if t >= min(60.0, duration * 0.2)]
    growth = (warm[-1] - warm[0]) / warm[0] if len(warm) > 1 and warm[0] else 0.0
    writes = {k: v for k, v in sorted(traffic.stats.items())}
    # Writes that happened: "<channel>_<operation>_<object>" counters only.
    changes = sum(
        v
        for k, v in writes.items()
        if k.count("_") == 2 and not k.endswith(("_missed", "_failed")) and "_http_" not in k
    )
    return {
        "minutes": args.minutes,
        "rate_asked": args.rate,
        "changes_made": changes,
        "rate_achieved": round(changes / duration, 1),
        "generator": writes,
        "drain_seconds_after_stop": round(drain_seconds, 1),
        "oldest_waiting_age_s": {
            "p50": pct(samples, 0.5),
            "p99": pct(samples, 0.99),
            "max": max(samples, default=0.0),
        },
        "insert_lag_s": {
            "n": len(lags),
            "p50": pct(lags, 0.5),
            "p99": pct(lags, 0.99),
            "max": max(lags, default=0.0),
        },
        "rss_mib": {
            "after_warmup": round(warm[0] / 1024, 1) if warm else None,
            "end": round(warm[-1] / 1024, 1) if warm else None,
            "growth": round(growth, 4),
            "per_minute": [round(kib / 1024, 1) for t, kib in rss if int(t) % 60 == 0],
        },
        "emulator_requests": stats["requests"],
        "accounting": result,
        "slow_entries": slow[:10],
        "product_exit_code": product_rc,
        "product_log_tail": product_log.read_text()[-2000:],
        "generator_last_failure": traffic.last_failure,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=100.0, help="changes per second")
    ap.add_argument("--throttle", type=float, default=0.01, help="share of requests → 429")
    ap.add_argument("--fail", type=float, default=0.01, help="share of requests → 503")
    ap.add_argument("--log", help="file for the product's log (default: a temp file)")
    ap.add_argument("--database-url", help="store URL (default: a SQLite file in a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crmsync-soak-"))
    result = asyncio.run(soak(args, work))
    print(json.dumps(result, indent=2, default=str))
    ok = (
        not result["accounting"]["problems"]
        and result["oldest_waiting_age_s"]["p99"] < 10
        and result["rss_mib"]["growth"] < 0.10
        and result["product_exit_code"] == 0
    )
    if ok:
        shutil.rmtree(work, ignore_errors=True)
        print("PASS", flush=True)
    else:
        print(f"FAIL (the store and the product's log are kept in {work})", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
