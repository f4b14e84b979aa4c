"""Helpers shared by the end-to-end push tests, as fixtures.

``sql``, ``configure``, ``crm_rows`` and ``drain`` are handed out as callables so the
test files import nothing from one another. ``check_exactly_once`` is the closing
assertion of every fault test: every local change is in the emulator exactly once, or
listed as a sync error; nothing is left pending.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.schema import sync_error, sync_queue

LEAD_SELECT = "leadid,emailaddress1,firstname,lastname,companyname,versionnumber"

Sql = Callable[..., None]
Configure = Callable[..., None]
CrmRows = Callable[..., list[dict[str, Any]]]
Drain = Callable[..., None]


def _sql(engine: sa.Engine, statement: str, params: Any = None) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text(statement), params or {})


def _configure(url: str, **values: Any) -> None:
    httpx.put(f"{url}/_emulator/config", json=values, timeout=10).raise_for_status()


def inspector_token(url: str) -> str:
    """A token of a separate application user, to look at the emulator's records."""
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


def _crm_rows(
    url: str, entity_set: str = "leads", select: str = LEAD_SELECT
) -> list[dict[str, Any]]:
    """Every record of ``entity_set``, following ``@odata.nextLink``."""
    token = inspector_token(url)
    rows: list[dict[str, Any]] = []
    next_url: str | None = f"{url}/api/data/v9.2/{entity_set}?$select={select}"
    while next_url:
        resp = httpx.get(next_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        resp.raise_for_status()
        body = resp.json()
        rows.extend(body["value"])
        next_url = body.get("@odata.nextLink")
    return rows


def _drain(settings: Settings, engine: sa.Engine, timeout: float = 60) -> None:
    async def go() -> None:
        async with DataverseClient.from_settings(settings) as client:
            await Worker(engine, client, settings, concurrency=2).run(once=True)

    asyncio.run(asyncio.wait_for(go(), timeout=timeout))


@pytest.fixture
def sql() -> Sql:
    """``sql(engine, statement, params)``: one statement in a write transaction."""
    return _sql


@pytest.fixture
def configure() -> Configure:
    """``configure(url, **settings)``: ``PUT /_emulator/config``."""
    return _configure


@pytest.fixture
def crm_rows() -> CrmRows:
    """``crm_rows(url, entity_set="leads", select=LEAD_SELECT)``: all records, paged."""
    return _crm_rows


@pytest.fixture
def drain() -> Drain:
    """``drain(settings, engine)``: an in-process ``worker --once`` (2 lanes), 60 s cap."""
    return _drain


@pytest.fixture
def store(sync_settings: Settings) -> Iterator[sa.Engine]:
    engine = create_store_engine(sync_settings.database_url)
    yield engine
    engine.dispose()


# --- worker processes -----------------------------------------------------------------


def worker_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment of a ``crmsync worker`` process using ``settings``' store and CRM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=settings.database_url,
        CRMSYNC_DYNAMICS_URL=settings.dynamics_url or "",
        CRMSYNC_AUTHORITY_URL=settings.authority_url or "",
        CRMSYNC_TENANT_ID=settings.tenant_id or "",
        CRMSYNC_CLIENT_ID=settings.client_id or "",
        CRMSYNC_CLIENT_SECRET=(
            settings.client_secret.get_secret_value() if settings.client_secret else ""
        ),
        CRMSYNC_RETRY_BASE_SECONDS=str(settings.retry_base_seconds),
        CRMSYNC_RETRY_MAX_SECONDS=str(settings.retry_max_seconds),
        CRMSYNC_LEASE_SECONDS=str(settings.lease_seconds),
    )
    env.update({f"CRMSYNC_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def crmsync_command() -> list[str]:
    return [str(Path(sys.executable).with_name("crmsync"))]


@pytest.fixture
def start_worker(
    sync_settings: Settings,
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start_worker(*args, **env)``: a ``crmsync worker`` process; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **extra: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*crmsync_command(), "worker", *args],
            env=worker_env(sync_settings, **extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


# --- the closing assertion ------------------------------------------------------------


def _check_exactly_once(
    engine: sa.Engine, url: str, *, expect_errors: bool = False
) -> dict[str, Any]:
    """Every local lead is in the emulator exactly once with its values, or an error.

    - the queue holds nothing pending (parked entries belong to open errors);
    - each local lead with a ``crm_id`` is a record of the emulator with its email and
      last name, and no two local leads share a ``crm_id``;
    - each local lead without a ``crm_id`` has an open ``sync_error``;
    - the emulator holds no lead that no local row knows (no duplicate creates).
    """
    with engine.connect() as conn:
        leads = [dict(r) for r in conn.execute(sa.text("SELECT * FROM lead")).mappings()]
        pending = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_queue)
            .where(sync_queue.c.state == "pending")
        ).scalar()
        parked = {
            r.record_key
            for r in conn.execute(
                sa.select(sync_queue.c.record_key).where(sync_queue.c.state == "parked")
            )
        }
        errors = {
            r.record_key: r
            for r in conn.execute(
                sa.select(sync_error).where(
                    sync_error.c.object == "lead", sync_error.c.status == "open"
                )
            )
        }
    assert pending == 0, f"{pending} entries still pending"
    assert parked <= set(errors), "a parked entry without an open error"
    # Look at the emulator without its injected faults.
    _configure(url, fail_rate=0, throttle_rate=0, cut_rate=0, latency_ms=0, per_record_ms=0)
    crm = {r["leadid"]: r for r in _crm_rows(url, "leads", LEAD_SELECT)}
    synced = [r for r in leads if r["crm_id"]]
    unsynced = [r for r in leads if not r["crm_id"]]
    assert len({r["crm_id"] for r in synced}) == len(synced), "two local leads, one crm_id"
    for row in synced:
        record = crm.get(row["crm_id"])
        assert record is not None, f"lead {row['id']} has crm_id {row['crm_id']} not in CRM"
        assert record["emailaddress1"] == row["email"]
        assert record["lastname"] == row["last_name"]
    for row in unsynced:
        assert str(row["id"]) in errors, f"lead {row['id']} neither synced nor an error"
    extra = set(crm) - {r["crm_id"] for r in synced}
    assert not extra, f"{len(extra)} emulator leads no local row knows (duplicates?)"
    if not expect_errors:
        assert not errors, {k: (e.error_code, e.error_message) for k, e in errors.items()}
    return {"leads": len(leads), "synced": len(synced), "errors": len(errors), "crm": crm}


@pytest.fixture
def check_exactly_once() -> Callable[..., dict[str, Any]]:
    """``check_exactly_once(engine, url)``: the closing assertion of a fault test."""
    return _check_exactly_once


def _insert_leads(engine: sa.Engine, n: int, prefix: str = "p") -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, first_name, last_name, company) VALUES (:e, :f, :l, :c)"
            ),
            [
                {"e": f"{prefix}{i}@example.com", "f": f"F{i}", "l": f"L{i}", "c": "Acme"}
                for i in range(n)
            ],
        )


@pytest.fixture
def insert_leads() -> Callable[..., None]:
    """``insert_leads(engine, n, prefix)``: ``n`` leads in one transaction."""
    return _insert_leads
