"""A 429 seen by one ``crmsync worker`` process pauses every process using the credential.

Two worker processes share one store (SQLite and PostgreSQL) and one application user.
Once both are sending,
the emulator answers exactly one request 429 with ``Retry-After: N`` (``throttle_next``).
Dataverse counts the limits per user, so neither process may send during those N
seconds: the emulator's request log must show no request in the window, apart from a
short grace for the news to travel (the worker that got the 429 records it in the
store; the other polls the store every ``POLL_SECONDS``). Afterwards every change is in
Dynamics exactly once. Without the shared throttle the other process keeps sending
through the window and the test fails (checked by disabling ``SharedThrottle.run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.engine.throttle import POLL_SECONDS
from crmsync.store import throttle as shared
from crmsync.store.db import write_transaction
from crmsync.store.throttle import credential_key

LEADS = 240
RETRY_AFTER = 5
# The 429's response reaching its worker, one store write, one poll interval, slack for
# a loaded machine.
GRACE = timedelta(seconds=POLL_SECONDS + 1.0)


def active_workers(engine: sa.Engine) -> set[str]:
    """Processes holding claims right now (the worker id is host:pid:suffix)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT DISTINCT claimed_by FROM sync_queue WHERE claimed_until IS NOT NULL")
        )
        return {str(r[0]).split(":")[1] for r in rows if r[0]}


def api_requests(url: str) -> list[dict[str, Any]]:
    log = httpx.get(f"{url}/_emulator/requests", timeout=10).json()["requests"]
    return [r for r in log if r["path"].startswith("/api/data/")]


def test_a_429_pauses_every_worker_process_sharing_the_credential(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    insert_leads: Any,
    start_worker: Callable[..., Any],
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    # Slow enough that the backlog outlasts the window; small batches, many requests.
    configure(url, latency_ms=150, retry_after_s=RETRY_AFTER)
    insert_leads(store, LEADS)
    procs = [start_worker("--once", "--concurrency", "2", batch_size=10) for _ in range(2)]
    pids = {str(p.pid) for p in procs}
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while not pids <= seen:  # both processes are sending
        assert time.monotonic() < deadline, f"workers never both active: {seen}"
        assert all(p.poll() is None for p in procs), "a worker ended before the test began"
        seen |= active_workers(store)
        time.sleep(0.02)
    configure(url, throttle_next=1)

    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    log = api_requests(url)
    throttled = [r for r in log if r["status"] == 429]
    assert len(throttled) == 1, throttled
    t0 = datetime.fromisoformat(throttled[0]["at"])
    window_end = t0 + timedelta(seconds=RETRY_AFTER)
    during = [r for r in log if t0 + GRACE <= datetime.fromisoformat(r["at"]) < window_end]
    assert not during, f"{len(during)} requests while the credential was throttled: {during[:5]}"
    after = [r for r in log if datetime.fromisoformat(r["at"]) >= window_end]
    assert after, "nothing was left to send after the window: the test proved nothing"
    assert {r["status"] for r in log} == {200, 429}
    result = check_exactly_once(store, url)
    assert result["synced"] == LEADS


def test_a_worker_started_during_a_shared_wait_sends_nothing_until_it_ends(
    sync_settings: Settings,
    store: sa.Engine,
    insert_leads: Any,
    drain: Any,
    check_exactly_once: Any,
) -> None:
    """Another process was told to wait just before this one started: its first request
    (the pull's) already waits for the instant in the store."""
    url = sync_settings.dynamics_url or ""
    insert_leads(store, 20)
    until = datetime.now(UTC) + timedelta(seconds=2)
    key = credential_key(
        sync_settings.dynamics_url, sync_settings.tenant_id, sync_settings.client_id
    )
    with write_transaction(store) as conn:
        shared.record(conn, key, until, datetime.now(UTC))
    drain(sync_settings, store)
    log = api_requests(url)
    assert log, "the worker sent nothing"
    first = min(datetime.fromisoformat(r["at"]) for r in log)
    assert first >= until, f"first request {(until - first).total_seconds():.2f} s early"
    assert check_exactly_once(store, url)["synced"] == 20
