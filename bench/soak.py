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

Chaos mode, ``--chaos [--minutes 2.5] [--rate 8] [--crm-rate 2] [--no-pg-restart]``:
a fresh PostgreSQL database (on ``--pg-url``), three ``crmsync worker`` processes, the
emulator with 20% 503s, 5% 429s and 5% of writes cut after they were applied. An
application inserts, updates and deletes leads and contacts with plain SQL; a Dynamics
user does the same through the Web API. Each side owns fields (the application
``last_name`` and ``company``, Dynamics ``first_name``), so every field's final value is
known; either side deletes any record. Meanwhile a worker is killed with SIGKILL every
``--kill-every`` seconds on average and started again 0.5-3 s later, PostgreSQL is
restarted once at 35% of the run (``pg_ctlcluster``, as root; it is started again at the
end whatever happens), and the emulator is stopped at 55% for ``--emulator-down``
seconds and started again on the same port and file. Then the writers stop, the workers
drain, and both sides are compared record by record with the writers' ledger: lost (on
one side only), duplicated, mismatched (a field or id not as last written), resurrected
(deleted on either side, present on one). All must be 0, and no worker may exit by
itself; exit status 1 otherwise, with the database and the logs kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


# --- chaos mode ------------------------------------------------------------------------
#
# PostgreSQL, three `crmsync worker` processes, the emulator with heavy faults, and two
# writers whose every change is kept in a ledger: an application on the local tables
# and a person in Dynamics. Each writer owns fields (the application last_name and
# company, Dynamics first_name), so every field's final value is known exactly; either
# may delete any record, and a deleted record must stay deleted on both sides.

PG_URL = os.environ.get(
    "CRMSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
CHAOS_FIELDS = {
    # local column -> (Dynamics attribute, the writer that changes it after the insert)
    "lead": {
        "first_name": ("firstname", "crm"),
        "last_name": ("lastname", "app"),
        "company": ("companyname", "app"),
    },
    "contact": {"first_name": ("firstname", "crm"), "last_name": ("lastname", "app")},
}
CHAOS_FAULTS = {"fail_rate": 0.20, "throttle_rate": 0.05, "cut_rate": 0.05}


@dataclass
class Rec:
    """One record as the writers made it: what both sides must show at the end."""

    obj: str
    email: str
    origin: str  # app | crm
    local_id: int | None = None
    crm_id: str | None = None
    # Each field's acceptable final values: one, unless a write's outcome is unknown
    # (a commit or a response lost), when the value before it is acceptable too.
    values: dict[str, set[str]] = field(default_factory=dict)
    deleted: bool = False
    maybe_deleted: bool = False  # a delete whose outcome is unknown
    maybe_created: bool = False  # an insert whose outcome is unknown


class Ledger:
    def __init__(self, tag: str, seed: int) -> None:
        self.tag = tag
        self.lock = threading.Lock()
        self.by_email: dict[str, Rec] = {}
        self.rng = random.Random(seed)
        self.n = 0
        self.stats: Counter[str] = Counter()

    def value(self, prefix: str) -> str:
        with self.lock:
            self.n += 1
            return f"{prefix}{self.n}"

    def email(self, origin: str) -> str:
        return f"{self.value(origin[0])}.{self.tag}@soak.test"

    def add(self, rec: Rec) -> None:
        with self.lock:
            self.by_email[rec.email] = rec

    def pick(self, side: str) -> Rec | None:
        """A record ``side`` can see and has not seen deleted."""
        with self.lock:
            live = [
                r
                for r in self.by_email.values()
                if not r.deleted
                and not r.maybe_deleted
                and (r.local_id if side == "app" else r.crm_id) is not None
            ]
            return self.rng.choice(live) if live else None

    def learn(self, obj: str, rows: Sequence[Any]) -> None:
        """Local ids of records pulled from Dynamics, crm ids of records pushed."""
        with self.lock:
            for row in rows:
                rec = self.by_email.get(row.email)
                if rec is None or rec.obj != obj:
                    continue
                if rec.local_id is None:
                    rec.local_id = int(row.id)
                if rec.crm_id is None and row.crm_id:
                    rec.crm_id = str(row.crm_id)


def _paced(
    rate: float, stop: threading.Event, stats: Counter[str], step: Callable[[], None]
) -> None:
    """Call ``step`` ``rate`` times a second until ``stop``; more than 2 s behind (a
    store or Dynamics outage) is written off, as people would not catch up either."""
    started = time.monotonic()
    done = 0
    while not stop.is_set():
        owed = int((time.monotonic() - started) * rate) - done
        if owed > 2 * rate:
            stats["written_off"] += owed - int(2 * rate)
            done += owed - int(2 * rate)
            owed = int(2 * rate)
        if owed <= 0:
            time.sleep(min(0.05, 1 / rate))
            continue
        step()
        done += 1


class App:
    """The application: plain SQL on the local tables, over its own connections."""

    def __init__(self, url: str, ledger: Ledger, seed: int) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2)
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()

    def run(self, rate: float, stop: threading.Event) -> None:
        _paced(rate, stop, self.stats, self.step)

    def step(self) -> None:
        roll = self.rng.random()
        obj = "lead" if self.rng.random() < 0.6 else "contact"
        try:
            if roll < 0.30:
                self.insert(obj)
            elif roll < 0.85:
                self.update()
            else:
                self.delete()
        except sa.exc.DBAPIError as exc:  # the store restarting: nothing was written
            self.stats["failed"] += 1
            self.stats[f"failed_{type(exc.orig).__name__}"] += 1
            time.sleep(0.2)

    def _write(self, statement: str, params: dict[str, Any]) -> tuple[bool, Any]:
        """(certain, result rows). Not certain: the commit's answer was lost."""
        with self.engine.connect() as conn:
            conn.begin()
            rows = conn.execute(sa.text(statement), params).all()
            try:
                conn.commit()
            except sa.exc.DBAPIError:
                self.stats["uncertain"] += 1
                return False, rows
        return True, rows

    def insert(self, obj: str) -> None:
        ledger = self.ledger
        rec = Rec(obj, ledger.email("app"), "app")
        params = {
            "email": rec.email,
            "first_name": ledger.value("F"),
            "last_name": ledger.value("L"),
        }
        if obj == "lead":
            params["company"] = ledger.value("C")
        rec.values = {k: {v} for k, v in params.items() if k != "email"}
        columns = ", ".join(params)
        marks = ", ".join(f":{k}" for k in params)
        certain, rows = self._write(
            f"INSERT INTO {obj} ({columns}) VALUES ({marks}) RETURNING id", params
        )
        rec.local_id = int(rows[0].id)
        rec.maybe_created = not certain
        ledger.add(rec)
        self.stats[f"insert_{obj}"] += 1

    def update(self) -> None:
        rec = self.ledger.pick("app")
        if rec is None:
            return
        column = self.rng.choice(
            [c for c, (_a, owner) in CHAOS_FIELDS[rec.obj].items() if owner == "app"]
        )
        value = self.ledger.value(column[0].upper())
        certain, rows = self._write(
            f"UPDATE {rec.obj} SET {column} = :v WHERE id = :id RETURNING id",
            {"v": value, "id": rec.local_id},
        )
        if not rows:  # deleted by a pull meanwhile
            self.stats["update_missed"] += 1
            return
        with self.ledger.lock:
            if certain:
                rec.values[column] = {value}
            else:
                rec.values[column].add(value)
        self.stats[f"update_{rec.obj}"] += 1

    def delete(self) -> None:
        rec = self.ledger.pick("app")
        if rec is None:
            return
        certain, rows = self._write(
            f"DELETE FROM {rec.obj} WHERE id = :id RETURNING crm_id", {"id": rec.local_id}
        )
        if not rows:
            self.stats["delete_missed"] += 1
            return
        with self.ledger.lock:
            if certain:
                rec.deleted = True
            else:
                rec.maybe_deleted = True
        self.stats[f"delete_{rec.obj}"] += 1

    def discover(self) -> None:
        """Learn the local ids of pulled records and the crm ids of pushed ones."""
        try:
            with self.engine.connect() as conn:
                for obj in CHAOS_FIELDS:
                    rows = conn.execute(sa.text(f"SELECT id, email, crm_id FROM {obj}")).all()
                    self.ledger.learn(obj, rows)
        except sa.exc.DBAPIError:
            pass


class Person:
    """Someone working in Dynamics through the Web API, who retries until each change
    is known to have happened or not (a cut answer is sent again: creates carry their
    id, so a repeated create is refused as a duplicate key, not made twice)."""

    def __init__(self, url: str, ledger: Ledger, seed: int) -> None:
        self.url = url
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.http = httpx.Client(timeout=30)
        self.token: str | None = None
        self.stats: Counter[str] = Counter()

    def run(self, rate: float, stop: threading.Event) -> None:
        self.stop = stop
        _paced(rate, stop, self.stats, self.step)

    def step(self) -> None:
        roll = self.rng.random()
        obj = "lead" if self.rng.random() < 0.6 else "contact"
        if roll < 0.35:
            self.insert(obj)
        elif roll < 0.85:
            self.update()
        else:
            self.delete()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """The final status of a request, retried through faults and outages."""
        while True:
            try:
                if self.token is None:
                    resp = self.http.post(
                        f"{self.url}/soak/oauth2/v2.0/token",
                        data={
                            "grant_type": "client_credentials",
                            "client_id": "soak-sales",
                            "client_secret": "x",
                            "scope": f"{self.url}/.default",
                        },
                    )
                    resp.raise_for_status()
                    self.token = str(resp.json()["access_token"])
                headers = {"Authorization": f"Bearer {self.token}", "OData-Version": "4.0"}
                if method == "PATCH":
                    headers["If-Match"] = "*"  # an update, never a create
                resp = self.http.request(
                    method, f"{self.url}/api/data/v9.2/{path}", json=body, headers=headers
                )
            except httpx.HTTPError:
                self.stats["retried_transport"] += 1
                time.sleep(0.5)
                continue
            if resp.status_code == 401:
                self.token = None
                continue
            if resp.status_code in (429, 503):
                self.stats[f"retried_{resp.status_code}"] += 1
                time.sleep(0.2)
                continue
            return resp.status_code

    def insert(self, obj: str) -> None:
        ledger = self.ledger
        crm_id = str(uuid.uuid4())
        rec = Rec(obj, ledger.email("crm"), "crm", crm_id=crm_id)
        values = {"first_name": ledger.value("F"), "last_name": ledger.value("L")}
        if obj == "lead":
            values["company"] = ledger.value("C")
        rec.values = {k: {v} for k, v in values.items()}
        body = {CHAOS_FIELDS[obj][k][0]: v for k, v in values.items()}
        body |= {"emailaddress1": rec.email, f"{obj}id": crm_id}
        status = self.call("POST", ENTITY_SET[obj], body)
        if status == 412:  # a retry of a create that was applied
            status = 204
        if status >= 300:
            raise SystemExit(f"the Dynamics user's create was refused: {status}")
        # Known to the writers only now: nobody deletes it while a retry could create it.
        ledger.add(rec)
        self.stats[f"insert_{obj}"] += 1

    def update(self) -> None:
        rec = self.ledger.pick("crm")
        if rec is None:
            return
        column = "first_name"
        value = self.ledger.value("F")
        status = self.call(
            "PATCH",
            f"{ENTITY_SET[rec.obj]}({rec.crm_id})",
            {CHAOS_FIELDS[rec.obj][column][0]: value},
        )
        if status == 404:  # deleted meanwhile (by crmsync, for the application)
            self.stats["update_missed"] += 1
            return
        if status >= 300:
            raise SystemExit(f"the Dynamics user's update was refused: {status}")
        with self.ledger.lock:
            rec.values[column] = {value}
        self.stats[f"update_{rec.obj}"] += 1

    def delete(self) -> None:
        rec = self.ledger.pick("crm")
        if rec is None:
            return
        status = self.call("DELETE", f"{ENTITY_SET[rec.obj]}({rec.crm_id})")
        if status >= 300 and status != 404:
            raise SystemExit(f"the Dynamics user's delete was refused: {status}")
        with self.ledger.lock:
            rec.deleted = True
        self.stats[f"delete_{rec.obj}"] += 1


class Workers:
    """Three ``crmsync worker`` processes; a slot killed is started again."""

    def __init__(self, env: dict[str, str], work: Path, count: int) -> None:
        self.env = env
        self.logs = [work / f"worker-{n}.log" for n in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.starts = 0
        self.kills = 0
        self.crashes: list[dict[str, Any]] = []

    def start(self, slot: int) -> None:
        with self.logs[slot].open("ab") as log:
            self.procs[slot] = subprocess.Popen(
                [sys.executable, "-m", "crmsync", "worker"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.starts += 1

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.kills += 1
        self.procs[slot] = None

    def alive(self) -> list[int]:
        return [n for n, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def check(self) -> None:
        """A worker that exited by itself is a defect: noted, and started again."""
        for slot, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                tail = self.logs[slot].read_text(errors="replace")[-1500:]
                self.crashes.append({"slot": slot, "exit": proc.returncode, "log_tail": tail})
                print(f"worker {slot} exited by itself with {proc.returncode}", flush=True)
                self.start(slot)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for slot, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.procs[slot] = None


class Emulator:
    """``crmsync emulator`` on a fixed port with its records in a SQLite file, so that
    it can be taken away and brought back with its data."""

    def __init__(self, port: int, db: Path, faults: dict[str, Any]) -> None:
        self.port = port
        self.db = db
        self.url = f"http://127.0.0.1:{port}"
        self.faults = faults
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crmsync",
                "emulator",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_emulator/stats", timeout=2).status_code == 200:
                    # Settings live in memory: a restarted emulator gets them again.
                    configure(self.url, **self.faults)
                    return
            time.sleep(0.1)
        raise SystemExit("the emulator did not start")

    def collect(self) -> None:
        """Its request counters (kept in memory), before it stops."""
        with contextlib.suppress(httpx.HTTPError):
            requests = httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()["requests"]
            self.stats["total"] += requests["total"]
            self.stats["cut"] += requests["cut"]
            for status, n in requests["by_status"].items():
                self.stats[f"status_{status}"] += n

    def stop(self, collect: bool = True) -> None:
        if self.proc is None:
            return
        if collect:
            self.collect()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def pg_cluster(spec: str | None) -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster: ``--pg-cluster 15/main`` or the
    only one under /etc/postgresql."""
    if spec:
        version, _, name = spec.partition("/")
        return version, name or "main"
    root = Path("/etc/postgresql")
    found = sorted((v.name, c.name) for v in root.glob("*") for c in v.glob("*") if c.is_dir())
    if len(found) != 1:
        raise SystemExit(f"give --pg-cluster VERSION/NAME (found {found or 'none'})")
    return found[0]


def pg_up(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.DBAPIError:
        return False
    finally:
        engine.dispose()


def pg_ctl(cluster: tuple[str, str], action: str) -> None:
    mode = ["--mode", "fast"] if action != "start" else []
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *mode, *cluster, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def pg_restart(cluster: tuple[str, str], url: str) -> float:
    """Restart PostgreSQL; seconds until it answers again."""
    started = time.monotonic()
    pg_ctl(cluster, "restart")
    while not pg_up(url):
        if time.monotonic() - started > 120:
            raise SystemExit("PostgreSQL did not come back after its restart")
        time.sleep(0.1)
    return time.monotonic() - started


def ensure_pg_up(cluster: tuple[str, str] | None, url: str) -> None:
    """Whatever happened, leave PostgreSQL running (other people use it)."""
    if cluster is None or pg_up(url):
        return
    print("PostgreSQL is down: starting it", flush=True)
    with contextlib.suppress(subprocess.SubprocessError):
        pg_ctl(cluster, "start")
    deadline = time.monotonic() + 60
    while not pg_up(url) and time.monotonic() < deadline:
        time.sleep(0.5)


def drained(engine: sa.Engine, stopped_at: datetime) -> bool:
    """Nothing left to do: a pull of each object begun after the writers stopped (the
    Dynamics user's last changes are known only after it), nothing pending,
    nothing captured and not yet folded (parked entries are open errors, reported)."""
    with engine.connect() as conn:
        cursors = dict(conn.execute(sa.text("SELECT object, updated_at FROM sync_cursor")).all())
        waiting = conn.execute(
            sa.text("SELECT count(*) FROM sync_queue WHERE state = 'pending'")
        ).scalar()
        logged = conn.execute(sa.text("SELECT count(*) FROM sync_change")).scalar()
    fresh = all(
        obj in cursors and _utc(cursors[obj]) > stopped_at + timedelta(seconds=1) for obj in PULLED
    )
    return fresh and not waiting and not logged


def drain(engine: sa.Engine, workers: Workers, stopped_at: datetime, timeout: float) -> float:
    """Seconds until ``drained`` holds at two looks a second apart."""
    started = time.monotonic()
    settled = 0
    while settled < 2:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"not drained after {timeout:.0f} s")
        time.sleep(1)
        workers.check()
        with contextlib.suppress(sa.exc.DBAPIError):
            settled = settled + 1 if drained(engine, stopped_at) else 0
    return time.monotonic() - started - 1  # the second look


def open_error_codes(engine: sa.Engine) -> dict[str, int]:
    """Open sync errors by object, direction, operation and code."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT object, direction, operation, error_code, count(*) FROM sync_error "
                "WHERE status = 'open' GROUP BY object, direction, operation, error_code"
            )
        ).all()
    return {f"{o} {d} {op} {code}": int(n) for o, d, op, code, n in found}


def chaos_compare(engine: sa.Engine, url: str, ledger: Ledger) -> dict[str, Any]:
    """Both sides, record by record, against the ledger."""
    problems: dict[str, list[dict[str, Any]]] = {
        "lost": [],
        "duplicated": [],
        "mismatched": [],
        "resurrected": [],
    }
    checked = deleted = 0
    with engine.connect() as conn:
        local = {
            obj: [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {obj}")).mappings()]
            for obj in CHAOS_FIELDS
        }
        open_errors = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT object, direction, operation, record_key, crm_id, error_code, "
                    "error_message FROM sync_error WHERE status = 'open'"
                )
            ).mappings()
        ]
        queued = conn.execute(
            sa.text("SELECT count(*) FROM sync_queue WHERE state = 'pending'")
        ).scalar()
    for obj, columns in CHAOS_FIELDS.items():
        local_by: dict[str, list[dict[str, Any]]] = {}
        for row in local[obj]:
            local_by.setdefault(row["email"], []).append(row)
        crm_by: dict[str, list[dict[str, Any]]] = {}
        for record in crm_rows(url, ENTITY_SET[obj]):
            crm_by.setdefault(record.get("emailaddress1") or "", []).append(record)
        recs = [r for r in ledger.by_email.values() if r.obj == obj]
        for email in (set(local_by) | set(crm_by)) - {r.email for r in recs}:
            problems["duplicated"].append(
                {"object": obj, "email": email, "why": "a record no writer made"}
            )
        for rec in recs:
            rows, records = local_by.get(rec.email, []), crm_by.get(rec.email, [])
            where = {
                "object": obj,
                "email": rec.email,
                "origin": rec.origin,
                "local_ids": [r["id"] for r in rows],
                "crm_ids": [r[f"{obj}id"] for r in records],
            }
            if rec.deleted:
                deleted += 1
                if rows or records:
                    problems["resurrected"].append(where)
                continue
            if (rec.maybe_deleted or rec.maybe_created) and not rows and not records:
                continue
            checked += 1
            if len(rows) > 1 or len(records) > 1:
                problems["duplicated"].append(where)
                continue
            if not rows or not records:
                kind = "resurrected" if rec.maybe_deleted else "lost"
                problems[kind].append(where)
                continue
            row, record = rows[0], records[0]
            differs = {
                column: {
                    "want": sorted(rec.values[column]),
                    "local": row[column],
                    "dynamics": record.get(attribute),
                }
                for column, (attribute, _owner) in columns.items()
                if row[column] not in rec.values[column] or record.get(attribute) != row[column]
            }
            if row["crm_id"] != record[f"{obj}id"]:
                differs["crm_id"] = {"local": row["crm_id"], "dynamics": record[f"{obj}id"]}
            if rec.local_id is not None and row["id"] != rec.local_id:
                differs["id"] = {"want": rec.local_id, "local": row["id"]}
            if differs:
                problems["mismatched"].append({**where, "differs": differs})
    with_error = {(e["object"], e["crm_id"]) for e in open_errors} | {
        (e["object"], e["record_key"]) for e in open_errors
    }
    for kind in problems.values():
        for where in kind:
            keys = [*where.get("crm_ids", []), *(str(i) for i in where.get("local_ids", []))]
            where["open_error"] = any((where["object"], k) in with_error for k in keys)
    return {
        "counts": {kind: len(found) for kind, found in problems.items()},
        "records_checked": checked,
        "records_deleted": deleted,
        "left_pending": queued,
        "open_errors": len(open_errors),
        "open_error_samples": open_errors[:10],
        "samples": {kind: found[:5] for kind, found in problems.items() if found},
    }


def chaos(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cluster = None if args.no_pg_restart else pg_cluster(args.pg_cluster)
    if not pg_up(args.pg_url):
        raise SystemExit(f"PostgreSQL is not reachable at {args.pg_url}")
    rng = random.Random(args.seed)
    name = f"crmsync_chaos_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = sa.make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
    engine = create_store_engine(db_url)
    upgrade(engine, load_settings(database_url=db_url).object_specs().values())
    emulator = Emulator(
        free_port(),
        work / "emulator.db",
        {"latency_ms": 10, "per_record_ms": 0.5, "retry_after_s": 1, "seed": args.seed}
        | {"fail_rate": args.fail, "throttle_rate": args.throttle, "cut_rate": args.cut},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=db_url,
        CRMSYNC_DYNAMICS_URL=emulator.url,
        CRMSYNC_AUTHORITY_URL=emulator.url,
        CRMSYNC_TENANT_ID="soak",
        CRMSYNC_CLIENT_ID=CLIENT_ID,
        CRMSYNC_CLIENT_SECRET="soak-secret",
        CRMSYNC_POLL_SECONDS=str(args.poll_seconds),
    )
    workers = Workers(env, work, args.workers)
    ledger = Ledger(uuid.uuid4().hex[:6], args.seed)
    app = App(db_url, ledger, args.seed + 1)
    person = Person(emulator.url, ledger, args.seed + 2)
    stop = threading.Event()
    writers = [
        threading.Thread(target=app.run, args=(args.rate, stop), daemon=True),
        threading.Thread(target=person.run, args=(args.crm_rate, stop), daemon=True),
    ]
    duration = args.minutes * 60
    events: list[str] = []
    figures: dict[str, Any] = {"pg_restarts": 0, "pg_outage_s": None, "emulator_down_s": None}
    oldest: list[float] = []
    passed = False
    try:
        emulator.start()
        for slot in range(args.workers):
            workers.start(slot)
        for thread in writers:
            thread.start()
        started = time.monotonic()
        pg_at = None if cluster is None else duration * 0.35
        down_at: float | None = duration * 0.55 if args.emulator_down > 0 else None
        up_at: float | None = None
        next_kill = rng.expovariate(1 / args.kill_every)
        restart_at: dict[int, float] = {}
        next_look = next_print = 0.0
        while True:
            now = time.monotonic() - started
            if now >= duration and up_at is None and not restart_at:
                break
            time.sleep(0.1)
            for slot, at in list(restart_at.items()):
                if now >= at:
                    workers.start(slot)
                    del restart_at[slot]
            workers.check()
            if now >= next_kill and now < duration:
                alive = workers.alive()
                if alive:
                    slot = rng.choice(alive)
                    workers.kill(slot)
                    restart_at[slot] = now + rng.uniform(0.5, 3.0)
                next_kill = now + rng.expovariate(1 / args.kill_every)
            if pg_at is not None and cluster is not None and now >= pg_at:
                pg_at = None
                outage = pg_restart(cluster, args.pg_url)
                figures["pg_restarts"] += 1
                figures["pg_outage_s"] = round(outage, 1)
                events.append(f"{now:.0f} s: PostgreSQL restarted ({outage:.1f} s)")
                print(events[-1], flush=True)
            if down_at is not None and now >= down_at:
                down_at = None
                emulator.stop()
                up_at = now + args.emulator_down
                events.append(f"{now:.0f} s: emulator stopped")
                print(events[-1], flush=True)
            if up_at is not None and now >= up_at:
                emulator.start()
                figures["emulator_down_s"] = round(now - up_at + args.emulator_down, 1)
                up_at = None
                events.append(f"{now:.0f} s: emulator back")
                print(events[-1], flush=True)
            if now >= next_look:
                next_look = now + 2
                app.discover()
            if now >= next_print:
                next_print = now + 15
                with contextlib.suppress(sa.exc.DBAPIError):
                    n, age = pending(engine)
                    oldest.append(age)
                    print(
                        f"{now:6.0f} s  backlog {n:5d}  oldest {age:5.1f} s  kills "
                        f"{workers.kills}  app {sum(app.stats.values())}  dynamics "
                        f"{sum(person.stats.values())}",
                        flush=True,
                    )
        stop.set()
        for thread in writers:
            thread.join(timeout=60)
        writing = time.monotonic() - started
        stopped_at = datetime.now(UTC)
        drain_seconds = drain(engine, workers, stopped_at, args.drain_timeout)
        # What the retries gave up on is an open error, as an operator sees it: retried
        # once, as they would, and drained again.
        figures["errors_after_drain"] = open_error_codes(engine)
        if figures["errors_after_drain"]:
            subprocess.run(
                [sys.executable, "-m", "crmsync", "errors", "retry", "--all"],
                env=env,
                check=True,
                capture_output=True,
            )
            figures["drain_after_retry_s"] = round(
                drain(engine, workers, stopped_at, args.drain_timeout), 1
            )
        emulator.collect()
        configure(
            emulator.url, fail_rate=0, throttle_rate=0, cut_rate=0, latency_ms=0, per_record_ms=0
        )
        accounting = chaos_compare(engine, emulator.url, ledger)
        passed = not any(accounting["counts"].values()) and not workers.crashes
    finally:
        stop.set()
        workers.stop()
        emulator.stop(collect=False)
        ensure_pg_up(cluster, args.pg_url)
        app.engine.dispose()
        engine.dispose()
        if passed:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            print(f"the store is kept: database {name}; logs in {work}", flush=True)
        admin.dispose()

    def changes(stats: Counter[str]) -> dict[str, int]:
        return {
            k: v
            for k, v in sorted(stats.items())
            if k.startswith(("insert_", "update_", "delete_"))
        }

    app_changes, crm_changes = changes(app.stats), changes(person.stats)
    return {
        "mode": "chaos",
        "minutes": args.minutes,
        "writing_s": round(writing, 1),
        "drain_s": round(drain_seconds, 1),
        "local_changes": sum(app_changes.values()),
        "dynamics_changes": sum(crm_changes.values()),
        "local_by_kind": app_changes,
        "dynamics_by_kind": crm_changes,
        "app_other": {k: v for k, v in app.stats.items() if k not in app_changes},
        "dynamics_other": {k: v for k, v in person.stats.items() if k not in crm_changes},
        "workers": args.workers,
        "kills": workers.kills,
        "worker_starts": workers.starts,
        "worker_crashes": workers.crashes,
        **figures,
        "events": events,
        "oldest_waiting_s_sampled": {"max": max(oldest, default=0.0), "p50": pct(oldest, 0.5)},
        "emulator_requests": dict(emulator.stats),
        "accounting": accounting,
        "passed": passed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, help="default: 30, or 2.5 with --chaos")
    ap.add_argument("--rate", type=float, help="local changes per second (default 100; chaos 8)")
    ap.add_argument("--throttle", type=float, help="share of requests → 429 (0.01; chaos 0.05)")
    ap.add_argument("--fail", type=float, help="share of requests → 503 (0.01; chaos 0.20)")
    ap.add_argument("--log", help="file for the product's log (default: a temp file)")
    ap.add_argument("--database-url", help="store URL (default: a SQLite file in a temp dir)")
    chaos_args = ap.add_argument_group("chaos mode (see the docstring)")
    chaos_args.add_argument("--chaos", action="store_true", help="run the chaos mode instead")
    chaos_args.add_argument(
        "--cut", type=float, default=0.05, help="share of writes cut after apply"
    )
    chaos_args.add_argument("--crm-rate", type=float, default=2.0, help="Dynamics changes/s")
    chaos_args.add_argument("--workers", type=int, default=3, help="crmsync worker processes")
    chaos_args.add_argument(
        "--kill-every",
        type=float,
        default=5.0,
        help="mean seconds between two SIGKILLs of a worker",
    )
    chaos_args.add_argument(
        "--emulator-down", type=float, default=30.0, help="seconds the emulator is away (0: never)"
    )
    chaos_args.add_argument(
        "--no-pg-restart",
        action="store_true",
        help="leave PostgreSQL alone (for development: others use it)",
    )
    chaos_args.add_argument(
        "--pg-cluster", help="VERSION/NAME for pg_ctlcluster (default: the only one)"
    )
    chaos_args.add_argument(
        "--pg-url", default=PG_URL, help="PostgreSQL server (a database is created)"
    )
    chaos_args.add_argument(
        "--poll-seconds", type=float, default=2.0, help="workers' pull interval"
    )
    chaos_args.add_argument("--drain-timeout", type=float, default=600.0)
    chaos_args.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crmsync-soak-"))
    if args.chaos:
        args.minutes = 2.5 if args.minutes is None else args.minutes
        args.rate = 8.0 if args.rate is None else args.rate
        args.throttle = 0.05 if args.throttle is None else args.throttle
        args.fail = 0.20 if args.fail is None else args.fail
        if args.emulator_down and args.minutes * 60 * 0.55 + args.emulator_down > args.minutes * 60:
            ap.error("--minutes too short for --emulator-down (it starts at 55% of the run)")
        # So that a SIGTERM runs chaos()'s clean-up too: workers, emulator, PostgreSQL up.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        result = chaos(args, work)
        print(json.dumps(result, indent=2, default=str))
        counts = result["accounting"]["counts"]
        print(
            "changes: {} local, {} in Dynamics; kills {}; PostgreSQL restarts {} ({} s); "
            "emulator away {} s; writing {} s; drain {} s".format(
                result["local_changes"],
                result["dynamics_changes"],
                result["kills"],
                result["pg_restarts"],
                result["pg_outage_s"],
                result["emulator_down_s"],
                result["writing_s"],
                result["drain_s"],
            )
        )
        print(
            "lost {lost}, duplicated {duplicated}, mismatched {mismatched}, "
            "resurrected {resurrected}".format(**counts)
            + f"; worker crashes {len(result['worker_crashes'])}; open errors after the drain "
            f"{sum(result['errors_after_drain'].values())} (retried), at the end "
            f"{result['accounting']['open_errors']}",
            flush=True,
        )
        if result["passed"]:
            shutil.rmtree(work, ignore_errors=True)
            print("PASS", flush=True)
        else:
            print(f"FAIL (logs kept in {work})", flush=True)
        sys.exit(0 if result["passed"] else 1)
    args.minutes = 30.0 if args.minutes is None else args.minutes
    args.rate = 100.0 if args.rate is None else args.rate
    args.throttle = 0.01 if args.throttle is None else args.throttle
    args.fail = 0.01 if args.fail is None else args.fail
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
