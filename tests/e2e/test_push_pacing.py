"""A thin, steady stream of changes is sent in few requests.

Dataverse allows a user 6,000 requests per 5 minutes (20 a second). A worker whose four
lanes each sent whatever one claim returned spent a request per record or two under a
trickle of changes, ran out of budget and stalled every change for the 429's
``Retry-After``. While claims come back short of a full batch, the lanes of a process
now claim at most ``THIN_CLAIM_INTERVAL`` apart, so changes gather into requests.

The pacing itself is checked on the pusher with claims stubbed (deterministic); the end
to end test checks a worker under a trickle stays within the budget and syncs all. (On
this 2-core machine an unpaced worker's lanes managed only ~15 requests a second, so
that test alone would not tell pacing from a slow machine.)
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.engine.push import THIN_CLAIM_INTERVAL, Pusher
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_change, sync_error, sync_pause, sync_queue

RATE = 50  # changes per second
SECONDS = 2.0


def test_thin_claims_are_spaced_across_lanes_and_full_ones_are_not() -> None:
    settings = load_settings(database_url="sqlite://", batch_size=3)
    pusher = Pusher(sa.create_engine("sqlite://"), None, settings, "t")  # type: ignore[arg-type]
    sizes = iter([1] * 8 + [3] * 8)
    claimed_at: list[float] = []

    def claim(limit: int) -> list[Any]:
        assert limit == 3
        claimed_at.append(time.monotonic())
        size = next(sizes)
        if size == 3:
            time.sleep(0.1)  # a claim of a full batch takes a while
        return [object()] * size

    pusher._claim_and_plan = claim  # type: ignore[method-assign]

    async def lanes(n: int, each: int) -> list[float]:
        claimed_at.clear()

        async def lane() -> None:
            for _ in range(each):
                await pusher._paced_claim()

        await asyncio.gather(*(lane() for _ in range(n)))
        return [b - a for a, b in itertools.pairwise(claimed_at)]

    async def phases() -> tuple[list[float], list[float], float]:
        thin = await lanes(4, 2)  # 8 thin claims from 4 concurrent lanes
        await lanes(1, 1)  # a full claim: the backlog is deep now
        started = time.monotonic()
        await lanes(4, 1)  # 4 full claims
        return thin, claimed_at, time.monotonic() - started

    thin, full_at, full_took = asyncio.run(phases())
    assert min(thin) >= THIN_CLAIM_INTERVAL * 0.9, thin
    # Deep backlog: the four lanes claimed side by side, not one after another.
    assert max(full_at) - min(full_at) < 0.1, full_at
    assert full_took < 0.3, full_took


def _pending(engine: sa.Engine) -> int:
    """Changes waiting: queued, or captured and not folded into the queue yet. One
    statement, so one snapshot: two would see a fold that commits between them as
    neither logged nor queued (PostgreSQL's read committed), a drained queue that isn't."""
    queued = (
        sa.select(sa.func.count())
        .select_from(sync_queue)
        .where(sync_queue.c.state == "pending")
        .scalar_subquery()
    )
    logged = sa.select(sa.func.count()).select_from(sync_change).scalar_subquery()
    with engine.connect() as conn:
        return int(conn.execute(sa.select(queued + logged)).scalar_one())


def _wait_drained(
    engine: sa.Engine, timeout: float, worker: subprocess.Popen[bytes], url: str
) -> None:
    deadline = time.monotonic() + timeout
    while _pending(engine) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _pending(engine):
        pytest.fail(f"the worker did not drain the queue:\n{_what_it_did(engine, worker, url)}")


def _what_it_did(engine: sa.Engine, worker: subprocess.Popen[bytes], url: str) -> str:
    """The state a stalled drain left: the queue, pauses, errors, the emulator's counts
    and the worker's own log (the worker is stopped to read it)."""
    exited = worker.poll()
    if exited is None:
        worker.kill()
    log = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
    with engine.connect() as conn:
        states = conn.execute(
            sa.select(sync_queue.c.state, sync_queue.c.attempts, sync_queue.c.next_attempt_at)
        ).all()
        pauses = conn.execute(sa.select(sync_pause)).all()
        errors = conn.execute(sa.select(sync_error.c.error_code, sync_error.c.error_message)).all()
        logged = conn.execute(sa.select(sa.func.count()).select_from(sync_change)).scalar()
    stats = httpx.get(f"{url}/_emulator/stats", timeout=10).json()["requests"]
    return "\n".join(
        [
            f"worker exit code: {exited}",
            f"queue: {states}",
            f"capture log rows: {logged}",
            f"pauses: {pauses}",
            f"errors: {errors}",
            f"emulator requests: {stats}",
            "worker log (last 6,000 characters):",
            log[-6000:],
        ]
    )


def _requests(url: str) -> int:
    by_status = httpx.get(f"{url}/_emulator/stats", timeout=10).json()["requests"]["by_status"]
    assert set(by_status) <= {"200", "204"}, by_status  # never throttled, nothing refused
    return int(sum(by_status.values()))


def test_a_trickle_of_changes_is_batched_within_the_request_budget(
    sync_settings: Settings,
    store: sa.Engine,
    configure: Callable[..., None],
    start_worker: Callable[..., Any],
    check_exactly_once: Callable[..., dict[str, Any]],
) -> None:
    url = sync_settings.dynamics_url or ""
    configure(url, latency_ms=20, per_record_ms=1)
    # Requests of the thin claims, one each: bulk messages (two requests, the write and
    # its version read-back, from five records of a kind) are counted in test_push_bulk.
    worker = start_worker("--concurrency", "4", push_bulk="false")
    # The worker is up once a first lead went through.
    with write_transaction(store) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('w@example.com', 'W')"))
    _wait_drained(store, 30, worker, url)
    before = _requests(url)

    started = time.monotonic()
    for k in range(int(RATE * SECONDS)):
        time.sleep(max(0.0, started + k / RATE - time.monotonic()))
        with write_transaction(store) as conn:
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name) VALUES (:e, :l)"),
                {"e": f"t{k}@example.com", "l": f"T{k}"},
            )
    _wait_drained(store, 30, worker, url)
    elapsed = time.monotonic() - started
    sent = _requests(url) - before

    # At most one thin claim per interval (plus the lanes' first), instead of about one
    # request per change (RATE * SECONDS = 100) when every lane sent what it found.
    assert sent <= elapsed / THIN_CLAIM_INTERVAL + 4, (sent, elapsed)
    assert sent < RATE * SECONDS / 2, (sent, elapsed)
    result = check_exactly_once(store, url)
    assert result["synced"] == RATE * SECONDS + 1
