"""Push under faults, end to end over real HTTP, on SQLite and PostgreSQL.

Each test injects one kind of fault into the emulator (429 storms with ``Retry-After``,
503s, responses cut after the write was applied, tokens that expire mid-run, a worker
process killed with SIGKILL in the middle of a batch), drains, and ends with
``check_exactly_once``: every local change is in the emulator exactly once, or listed
as a sync error; nothing is left pending; the emulator holds no lead no local row knows.
Faults are drawn from a seeded RNG so a failure replays.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.store.schema import sync_queue

N = 120


def stats(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/_emulator/stats", timeout=10)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def small_batches(settings: Settings, size: int = 20) -> Settings:
    """Several batches per run; a retry budget that injected fault rates cannot exhaust.

    The fault draws come from one seeded RNG shared by all requests; two lanes taking
    alternate draws can keep one batch unlucky for 8 tries in a row, which would park
    it (the budget's own behaviour is tested elsewhere).
    """
    return settings.model_copy(update={"batch_size": size, "max_attempts": 30})


def test_429_storm_with_retry_after_syncs_everything_once(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    drain: Any,
    insert_leads: Any,
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    configure(url, throttle_rate=0.15, retry_after_s=1, seed=4)
    insert_leads(store, N)
    started = time.monotonic()
    drain(small_batches(sync_settings, 30), store)
    elapsed = time.monotonic() - started
    seen = stats(url)["requests"]["by_status"]
    assert seen.get("429", 0) >= 1
    # Retry-After: 1 was honoured: the drain waited at least once for the gate.
    assert elapsed >= 1.0
    result = check_exactly_once(store, url)
    assert result["synced"] == N


def test_503s_are_retried_until_everything_synced_once(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    drain: Any,
    insert_leads: Any,
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    configure(url, fail_rate=0.3, seed=7)
    insert_leads(store, N)
    drain(small_batches(sync_settings), store)
    assert stats(url)["requests"]["by_status"].get("503", 0) >= 1
    assert check_exactly_once(store, url)["synced"] == N


def test_cut_responses_after_applied_inserts_create_no_duplicates(
    sync_settings: Settings,
    store: sa.Engine,
    sql: Any,
    configure: Any,
    drain: Any,
    insert_leads: Any,
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    configure(url, cut_rate=0.35, seed=3)
    insert_leads(store, N)
    drain(small_batches(sync_settings), store)
    assert stats(url)["requests"]["cut"] >= 1
    result = check_exactly_once(store, url)
    assert result["synced"] == N and len(result["crm"]) == N
    # Updates under cuts too: the last value wins, still one record per lead.
    sql(store, "UPDATE lead SET last_name = 'After' WHERE id % 3 = 0")
    drain(small_batches(sync_settings), store)
    result = check_exactly_once(store, url)
    assert len(result["crm"]) == N
    assert sum(r["lastname"] == "After" for r in result["crm"].values()) == N // 3


# The token's life is the client's business, not the store's: one store is enough.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_token_expiry_mid_run_is_refreshed_without_errors(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    drain: Any,
    insert_leads: Any,
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    # 12 batches of 10 at ~0.3 s a request over 2 lanes: the run outlives several 1 s
    # tokens. (The client renews a token 300 s before it expires, so with 1 s tokens it
    # asks for a fresh one per request; a 401 on a stale one is refreshed once, resent.)
    configure(url, token_lifetime_s=1, latency_ms=250, per_record_ms=5)
    insert_leads(store, N)
    started = time.monotonic()
    drain(small_batches(sync_settings, 10), store)
    assert time.monotonic() - started > 2.0
    seen = stats(url)["requests"]["by_status"]
    assert set(seen) <= {"200", "401"}, seen
    assert check_exactly_once(store, url)["synced"] == N


def _claimed(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(sync_queue)
                .where(sync_queue.c.claimed_by.is_not(None))
            ).scalar_one()
        )


def test_kill_9_mid_batch_repeatedly_loses_and_duplicates_nothing(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Any,
    insert_leads: Any,
    start_worker: Callable[..., Any],
    check_exactly_once: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    # A batch of 40 takes ~0.2 + 40 * 0.01 = 0.6 s in the emulator: long enough to kill
    # the worker while a batch is in flight (claimed, ids assigned, write maybe applied).
    configure(url, latency_ms=200, per_record_ms=10)
    insert_leads(store, 400)
    env = {"batch_size": 40, "lease_seconds": 1.5}
    kills = 0
    for _ in range(3):
        proc = start_worker("--concurrency", "2", **env)
        deadline = time.monotonic() + 15
        while _claimed(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _claimed(store) > 0, "the worker never claimed a batch"
        time.sleep(0.3)  # into the batch: the request is in the emulator's latency
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
        # The killed worker's claims are still held until their lease runs out.
        assert _claimed(store) > 0
    assert kills == 3
    configure(url, latency_ms=0, per_record_ms=0)
    done = start_worker("--once", **env)
    assert done.wait(timeout=40) == 0, done.stderr.read().decode() if done.stderr else ""
    result = check_exactly_once(store, url)
    assert result["synced"] == 400 and len(result["crm"]) == 400
