"""``crmsync audit``, ``crmsync resync`` and ``crmsync jobs`` as an operator runs them.

Real processes against a real store and the emulator over HTTP: a clean audit finds
nothing, a local change made behind capture's back shows in a dry run (which changes
nothing) and is sent by a resync of its id; bad input is one line and status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pull_support import count

from crmsync.config import Settings
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_change, sync_queue


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
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
    )
    command = str(Path(sys.executable).with_name("crmsync"))
    return subprocess.run(
        [command, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_audit_and_resync_from_the_command_line(
    sync_settings: Settings, store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    with write_transaction(store) as conn:
        for i in range(3):
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name) VALUES (:e, :n)"),
                {"e": f"c{i}@x.org", "n": f"C{i}"},
            )
    drain(sync_settings, store)

    clean = _cli(sync_settings, "audit", "--object", "lead", "--json")
    assert clean.returncode == 0, clean.stderr
    (lead,) = json.loads(clean.stdout)["objects"]
    assert (lead["checked"], lead["only_local"], lead["only_dynamics"], lead["different"]) == (
        3,
        0,
        0,
        0,
    )

    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(sa.text("UPDATE lead SET last_name = 'Quiet' WHERE id = 2"))
    dry = _cli(sync_settings, "resync", "lead", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["matched"], report["would_change"]) == (3, 1)
    assert report["samples"][0]["fields"] == [
        {"field": "last_name", "local": "Quiet", "dynamics": "C1"}
    ]
    assert count(store, sync_queue) == 0 and count(store, sync_change) == 0

    done = _cli(sync_settings, "resync", "lead", "--id", "2", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["state"], job["done"], job["total"], job["result"]) == ("done", 1, 1, {"queued": 1})
    drain(sync_settings, store)
    assert {r["lastname"] for r in crm_rows(sync_settings.dynamics_url)} == {"C0", "Quiet", "C2"}

    listed = _cli(sync_settings, "jobs", "list", "--json")
    assert [j["kind"] for j in json.loads(listed.stdout)] == ["resync", "audit"]

    bad = _cli(sync_settings, "resync", "lead", "--direction", "sideways")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["crmsync: --direction: must be to_crm or from_crm"]
    ids = _cli(sync_settings, "resync", "lead", "--id", "x")
    assert ids.returncode == 2 and "--id:" in ids.stderr and "Traceback" not in ids.stderr
