"""The time to drain against a real drain: a ``crmsync worker`` process pushing a backlog
of several hundred leads to the emulator, on SQLite and PostgreSQL.

The estimate read early in the drain (as the API reads it: ``store.status`` in a
read-only transaction) must be within a factor of 3 of the time the rest of the drain
then took; while the object, or the direction holding its backlog, is paused, the API
and ``crmsync status`` say ``paused`` however recent the rate. The emulator is slowed
(``latency_ms``, ``per_record_ms``) so that the drain lasts seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.store import status
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.schema import sync_backlog_sample

LEADS = 600
FACTOR = 3


def lead_row(store: sa.Engine) -> dict[str, Any]:
    with read_transaction(store) as conn:
        (row,) = status.backlog(conn, ["lead"])["objects"]
    return dict(row)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def crmsync(settings: Settings, *args: str) -> str:
    """``crmsync ARGS`` on the test's store at 80 columns; its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(CRMSYNC_DATABASE_URL=settings.database_url, COLUMNS="80")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("crmsync")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def lead_drain_cell(table: str) -> str:
    (line,) = [line for line in table.splitlines() if line.startswith("lead ")]
    return line.split()[-1]


def test_the_estimate_matches_a_measured_drain_and_says_paused(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    insert_leads: Any,
    start_worker: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    # 20 records a request at 50 ms + 2.5 ms each, one batch at a time, a bulk message
    # and its read-back a batch: ~100/s, ~6 s. The backlog is fresh, so the lanes' own
    # (no fresh lane: Pusher.behind), and the rate steady.
    configure(url, latency_ms=50, per_record_ms=2.5)
    worker = start_worker("--concurrency", "1", batch_size=20)

    def sampled() -> bool:
        with store.connect() as conn:
            return conn.execute(sa.select(sync_backlog_sample).limit(1)).first() is not None

    # Running with nothing to do first: that idle time must not dilute the rate.
    wait_for(sampled, 30, "the worker to start")
    time.sleep(1)
    insert_leads(store, LEADS, "drain")

    early: tuple[float, int] | None = None
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, "the drain did not end"
        assert worker.poll() is None, "the worker exited"
        row = lead_row(store)
        now = time.monotonic()
        if row["total"] == 0:
            ended = now
            break
        if early is None and row["drain"] == "estimate" and row["total"] <= 0.9 * LEADS:
            assert row["total"] >= 0.5 * LEADS, "no estimate in the first half of the drain"
            early = (now, row["eta_seconds"])
        time.sleep(0.05)
    assert early is not None, "no estimate during the drain"
    taken, eta = early
    measured = ended - taken
    assert measured / FACTOR <= eta <= measured * FACTOR, (eta, measured)

    # Paused, with the rate as recent as it gets: no time.
    with write_transaction(store) as conn:
        status.pause(conn, "lead", "*")
    insert_leads(store, 50, "paused")
    row = lead_row(store)
    assert row["total"] == 50, row
    assert (row["drain"], row["eta_seconds"]) == ("paused", None)
    assert lead_drain_cell(crmsync(sync_settings, "status")) == "paused"
    body = json.loads(crmsync(sync_settings, "status", "--json"))
    lead = {r["object"]: r for r in body["objects"]}["lead"]
    assert (lead["drain"], lead["eta_seconds"]) == ("paused", None)
    # The direction holding the backlog paused, the other not: paused all the same.
    with write_transaction(store) as conn:
        status.resume(conn, "lead", "*")
        status.pause(conn, "lead", "to_crm")
    assert lead_drain_cell(crmsync(sync_settings, "status")) == "paused"
    # Resumed: it drains again.
    with write_transaction(store) as conn:
        status.resume(conn, "*", "*")
    wait_for(lambda: lead_row(store)["total"] == 0, 60, "the drain after the resume")
