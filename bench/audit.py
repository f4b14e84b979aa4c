"""Drift audit: exact findings, read rate against a bare paging loop, peak memory.

Usage: ``.venv/bin/python bench/audit.py [--records 100000] [--drift 0.001] [--rounds 3]
[--database-url sqlite:///...]`` (the issue's target is ``--records 1000000``)

Both sides are written directly (the emulator's SQLite file, the store's tables with
capture suppressed) as a completed sync leaves them: ``--records`` leads on each side
with their sync state. Then ``--drift`` of the records for each kind is planted: changed
in Dynamics behind change tracking's back (new version, new last name), changed locally
with capture suppressed, deleted in Dynamics unseen, deleted locally unseen.

The emulator runs in its own process with the scaled limits of ``bench/push.py``
(``--max-requests`` per ``--window`` s, ``--latency-ms`` per request). Per round, in the
same run: a bare loop pages the ids and versions (``$select`` of ``leadid``,
``versionnumber``, ``modifiedon``, pages of 5,000) and does nothing with them; then an
audit runs in a child process (so its peak RSS is its own), which must find exactly the
planted drift. Printed: the medians, the ratio of the audit's rate (records checked per
second over the whole audit) to the bare loop's, and the audit's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

SERVE = (
    "import sys, uvicorn; from pathlib import Path; from crmsync.emulator.server import config; "
    "uvicorn.Server(config('127.0.0.1', int(sys.argv[1]), db=Path(sys.argv[2]))).run()"
)
SELECT = "leadid,versionnumber,modifiedon"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_emulator(db: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port), str(db)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("emulator did not start")


def settings_for(url: str, database_url: str) -> Any:
    from crmsync.config import load_settings

    return load_settings(
        database_url=database_url,
        dynamics_url=url,
        authority_url=url,
        tenant_id="bench",
        client_id="bench-audit",
        client_secret="bench-secret",
        lease_seconds=60,
    )


def template(db: Path) -> dict[str, Any]:
    """A lead as the emulator stores it, made through its Web API once."""
    from crmsync.dynamics.client import DataverseClient
    from crmsync.dynamics.writes import Write

    proc, url = start_emulator(db)
    try:

        async def make() -> None:
            async with DataverseClient.from_settings(settings_for(url, "sqlite://")) as client:
                body = {"emailaddress1": "t@x.org", "lastname": "T", "companyname": "Acme"}
                await client.write(Write("upsert", "leads", str(uuid.uuid4()), body))

        asyncio.run(make())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        (data,) = conn.execute("SELECT data FROM records WHERE entity_set = 'leads'").fetchone()
        conn.execute("DELETE FROM records")
    return dict(json.loads(data))


def seed(args: argparse.Namespace, db: Path, database_url: str) -> dict[str, int]:
    """Both sides as a finished sync leaves them, with the planted drift; returns the
    planted counts by kind."""
    import sqlalchemy as sa

    from crmsync.config import load_settings
    from crmsync.store import migrate
    from crmsync.store.db import create_store_engine, suppress_capture, write_transaction

    row0 = template(db)
    n, k = args.records, max(1, int(args.records * args.drift))
    rnd = random.Random(20)
    picked = rnd.sample(range(n), 4 * k)
    changed_there, changed_here = set(picked[:k]), set(picked[k : 2 * k])
    gone_there, gone_here = set(picked[2 * k : 3 * k]), set(picked[3 * k :])
    version = 2_000_000
    at = datetime(2026, 11, 1, tzinfo=UTC)
    engine = create_store_engine(database_url)
    migrate.upgrade(engine, load_settings(database_url=database_url).object_specs().values())
    emu = sqlite3.connect(db)
    emu.execute("BEGIN")
    for start in range(0, n, 10_000):
        remote, local, synced = [], [], []
        for i in range(start, min(n, start + 10_000)):
            crm_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            version += 1
            modified = (at + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            values = {
                "email": f"a{i}@x.org",
                "first_name": None,
                "last_name": f"L{i}",
                "company": "Acme",
            }
            if i not in gone_there:
                there = {
                    **row0,
                    "leadid": crm_id,
                    "emailaddress1": values["email"],
                    "lastname": values["last_name"],
                    "versionnumber": version,
                    "modifiedon": modified,
                }
                if i in changed_there:
                    there["lastname"] = f"There{i}"
                    there["versionnumber"] = version + 10 * n  # a later write
                remote.append(("leads", crm_id, there["versionnumber"], json.dumps(there)))
            if i not in gone_here:
                last = f"Here{i}" if i in changed_here else values["last_name"]
                local.append(
                    {
                        "id": i + 1,
                        "crm_id": crm_id,
                        "email": values["email"],
                        "last_name": last,
                        "company": "Acme",
                    }
                )
            synced.append(
                {
                    "object": "lead",
                    "record_id": i + 1,
                    "crm_id": crm_id,
                    "etag": f'W/"{version}"',
                    "crm_version": version,
                    "crm_modified_at": at,
                    "last_synced_at": at,
                    "synced_values": values,
                }
            )
        emu.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", remote)
        with write_transaction(engine) as conn:
            suppress_capture(conn)
            if local:
                conn.execute(
                    sa.text(
                        "INSERT INTO lead (id, crm_id, email, last_name, company)"
                        " VALUES (:id, :crm_id, :email, :last_name, :company)"
                    ),
                    local,
                )
            from crmsync.store.schema import sync_record

            conn.execute(sa.insert(sync_record), synced)
    emu.execute("COMMIT")
    emu.close()
    if engine.dialect.name == "postgresql":
        # As autovacuum would after a load this size: the planner needs the row counts.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return {"only_local": k, "only_dynamics": k, "different": 2 * k}


def bare(url: str) -> tuple[int, float]:
    """Page the ids and versions and do nothing else: the audit's floor."""
    from crmsync.dynamics.client import DataverseClient

    async def run() -> int:
        rows = 0
        async with DataverseClient.from_settings(settings_for(url, "sqlite://")) as client:
            async for page in client.query("leads", select=SELECT.split(","), page_size=5000):
                rows += len(page.rows)
        return rows

    started = time.monotonic()
    rows = asyncio.run(run())
    return rows, time.monotonic() - started


def peak_mb() -> float:
    """This process's peak RSS since it started its program. Not ``ru_maxrss``: Linux
    carries that across ``execve``, so a child spawned by this bench would report the
    parent's peak (its bare loops') whenever it is the larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str, database_url: str) -> None:
    """Run one audit of lead here and print its figures (this process's peak RSS)."""
    from crmsync.domain import JobKind
    from crmsync.engine.jobs import run_here
    from crmsync.mapping import activate
    from crmsync.store import jobs
    from crmsync.store.db import create_store_engine, write_transaction

    settings = settings_for(url, database_url)
    activate(settings.object_specs())
    engine = create_store_engine(database_url)
    with write_transaction(engine) as conn:
        job = jobs.create(conn, JobKind.AUDIT, "lead", None, {})
    started = time.monotonic()
    ended = asyncio.run(run_here(settings, engine, job.id, "bench-audit"))
    seconds = time.monotonic() - started
    assert ended is not None, "the audit did not run"
    found = (ended.result or {}).get("objects", {}).get("lead", {})
    with write_transaction(engine) as conn:
        from crmsync.store.schema import sync_job

        conn.execute(sync_job.delete())
    peak = peak_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "found": found, "state": ended.state}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--drift", type=float, default=0.001, help="share of records per kind")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=None, help="default: a SQLite file in a temp dir")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--window", type=float, default=10)
    p.add_argument("--max-concurrency", type=int, default=52)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--child", nargs=2, metavar=("URL", "DATABASE_URL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = Path(tempfile.mkdtemp(prefix="crmsync-audit-bench-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'store.db'}"
    started = time.monotonic()
    planted = seed(args, tmp / "emulator.db", database_url)
    print(
        f"seeded {args.records:,} records a side in {time.monotonic() - started:.0f} s;"
        f" planted {planted}"
    )
    proc, url = start_emulator(tmp / "emulator.db")
    try:
        httpx.put(
            f"{url}/_emulator/config",
            json={
                "max_requests": args.max_requests,
                "window_s": args.window,
                "max_concurrency": args.max_concurrency,
                "latency_ms": args.latency_ms,
            },
            timeout=10,
        ).raise_for_status()
        bare_rates, audit_rates, peaks = [], [], []
        for r in range(args.rounds):
            rows, seconds = bare(url)
            bare_rates.append(rows / seconds)
            out = subprocess.run(
                [sys.executable, __file__, "--child", url, database_url],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            found = result["found"]
            got = {kind: found.get(kind) for kind in planted}
            exact = got == planted
            audit_rates.append(found["checked"] / result["seconds"])
            peaks.append(result["peak_mb"])
            print(
                f"round {r + 1}: bare {rows / seconds:,.0f} ids/s;"
                f" audit {found['checked']:,} checked in {result['seconds']:.1f} s"
                f" ({audit_rates[-1]:,.0f}/s), peak {result['peak_mb']:.0f} MB,"
                f" found {got} {'exactly as planted' if exact else 'NOT AS PLANTED'}"
            )
            if not exact:
                raise SystemExit(f"the audit found {got}, planted {planted}")
        ratio = statistics.median(audit_rates) / statistics.median(bare_rates)
        # The audit's requests are paced to this share of Dataverse's 20 a second
        # (engine/throttle.Pacer): 0.5 caps it at 10 pages, 50,000 ids, a second.
        share = settings_for(url, database_url).job_request_share
        print(f"job_request_share {share} (CRMSYNC_JOB_REQUEST_SHARE)")
        print(
            f"median: bare {statistics.median(bare_rates):,.0f} ids/s, audit"
            f" {statistics.median(audit_rates):,.0f} records/s, ratio {ratio:.2f} (target >= 0.5);"
            f" peak RSS {max(peaks):.0f} MB (target < 200); load {os.getloadavg()[0]:.2f}"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
