"""A record with 10,000 events: its history API and its console page, against a record
with a handful, in the same run, over real HTTP.

Usage: ``.venv/bin/python bench/record_history.py [--events 10000] [--calls 50]
[--backend sqlite|postgresql|both] [--pg-url URL]``

For each backend a fresh migrated store gets two synced leads (both also in the
emulator, run on loopback), one with ``--events`` events in ``sync_event`` (and 100,000
events of other records around it), one with 10. ``crmsync serve``'s app runs on
loopback with the emulator as its Dynamics; each request runs ``--calls`` times:

- history: ``GET /api/v1/records/lead/{id}/history`` (first page, 50 events), and the
  last page reached through the cursors' chain start (a cursor deep in the history);
- page: ``GET /admin/microsoft-dynamics/records/lead/{id}`` (logged in): the record,
  its errors, the timeline's first page and the live read of Dynamics for both sides.

Prints median and p95 per request and the ratio big / small (the baseline), with the
load average. The target is under 50 ms p95 for the big record.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ThreadServer, free_port
from crmsync.config import Settings, load_settings
from crmsync.domain import EventKind
from crmsync.store import history
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.migrate import upgrade
from crmsync.store.types import utcnow

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench password for the console"
TOKEN = "bench-token"
PAGE = "/admin/microsoft-dynamics/records/lead"


def make_store(backend: str, pg_url: str) -> tuple[str, Any]:
    if backend == "sqlite":
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='crmsync-hist-')) / 'store.db'}"
        return url, None
    name = f"crmsync_hist_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False), (
        admin,
        name,
    )


def create_in_dynamics(emulator: str, email: str) -> str:
    token = httpx.post(
        f"{emulator}/t/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "bench", "client_secret": "s"},
    ).json()["access_token"]
    r = httpx.post(
        f"{emulator}/api/data/v9.2/leads",
        json={"emailaddress1": email, "lastname": "Bench"},
        headers={"Authorization": f"Bearer {token}", "Prefer": "return=representation"},
    )
    r.raise_for_status()
    return str(r.json()["leadid"])


def fill(engine: sa.Engine, emulator: str, events: int) -> tuple[int, int]:
    ids = []
    with write_transaction(engine) as conn:
        for email, n in (("big@example.com", events), ("small@example.com", 10)):
            crm_id = create_in_dynamics(emulator, email)
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name, crm_id) VALUES (:e, 'Bench', :c)"),
                {"e": email, "c": crm_id},
            )
            ids.append((int(conn.execute(sa.text("SELECT max(id) FROM lead")).scalar_one()), n))
        conn.execute(sa.text("DELETE FROM sync_change"))
    now = utcnow()
    kinds = [EventKind.CAPTURED, EventKind.SENT, EventKind.SYNCED, EventKind.PULLED]
    for record_id, n in [*ids, *((10_000 + i, 1_000) for i in range(100))]:
        with write_transaction(engine) as conn:
            for start in range(0, n, 5_000):
                history.write(
                    conn,
                    [
                        history.event(
                            "lead",
                            str(record_id),
                            kinds[i % 4],
                            now,
                            direction="to_crm",
                            operation="update",
                            fields=["last_name"],
                            detail={"batch": "b", "size": 100},
                        )
                        for i in range(start, min(n, start + 5_000))
                    ],
                )
    with write_transaction(engine) as conn:
        conn.execute(sa.text("ANALYZE"))
    return ids[0][0], ids[1][0]


def timed(client: httpx.Client, path: str, calls: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def login(client: httpx.Client) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    r = client.post(
        "/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token[1]}
    )
    assert r.status_code == 303, r.text


def run(backend: str, args: argparse.Namespace, emulator: str) -> None:
    from crmsync.web.app import create_app

    url, pg = make_store(backend, args.pg_url)
    engine = create_store_engine(url)
    try:
        upgrade(engine, Settings().object_specs().values())
        big, small = fill(engine, emulator, args.events)
        settings = load_settings(
            database_url=url,
            dynamics_url=emulator,
            authority_url=emulator,
            tenant_id="bench",
            client_id="crmsync-app",
            client_secret="s",
            admin_password=PASSWORD,
            api_token=TOKEN,
        )
        import uvicorn

        port = free_port()
        app = create_app(settings, engine=engine)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        with ThreadServer(config), httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            login(c)
            results = {}
            for name, record in (("big", big), ("small", small)):
                api = f"/api/v1/records/lead/{record}/history"
                deep = c.get(api, params={"limit": 1000}).json()["next_cursor"]
                results[name] = {
                    "history": timed(c, api, args.calls),
                    "history, deep cursor": timed(c, f"{api}?cursor={deep}", args.calls)
                    if deep
                    else [],
                    "page": timed(
                        c, f"/admin/microsoft-dynamics/records/lead/{record}", args.calls
                    ),
                }
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n{backend}: {args.events} events vs 10, {args.calls} calls (load {load})")
        for request, times in results["big"].items():
            if not times:
                continue
            base = results["small"][request] or results["small"]["history"]
            med, small_med = statistics.median(times), statistics.median(base)
            print(
                f"  {request:22s} median {med:6.1f} ms  p95 {p95(times):6.1f} ms"
                f"   small record {small_med:6.1f} ms   ratio {med / small_med:.2f}"
            )
    finally:
        engine.dispose()
        if pg is not None:
            admin, name = pg
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--pg-url", default=DEFAULT_PG)
    args = p.parse_args()
    from crmsync.emulator.server import config

    port = free_port()
    with ThreadServer(config("127.0.0.1", port)):
        emulator = f"http://127.0.0.1:{port}"
        for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
            run(backend, args, emulator)


if __name__ == "__main__":
    main()
