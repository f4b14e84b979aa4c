"""The shared throttle on SQLite and PostgreSQL: the store's "moves later only" upsert
under concurrent writers, two processes' bridges meeting in one store (their 429s and
their execution time spent), a store outage
falling back to the local gate, and the instant shown by ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.dynamics.limiter import ExecutionBudget, Limiter
from crmsync.engine.throttle import SharedThrottle
from crmsync.store import throttle as shared
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.schema import dynamics_spend
from crmsync.values import Others
from crmsync.web.app import create_app

KEY = shared.credential_key("https://org.crm.dynamics.com", "tenant", "client")
T0 = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


def record(engine: Engine, until: datetime, key: str = KEY) -> bool:
    with write_transaction(engine) as conn:
        return shared.record(conn, key, until, T0)


def read(engine: Engine, key: str = KEY) -> datetime | None:
    with engine.connect() as conn:
        return shared.throttled_until(conn, key)


def test_record_only_moves_later(engine: Engine) -> None:
    assert read(engine) is None
    assert record(engine, T0 + timedelta(seconds=30))
    assert not record(engine, T0 + timedelta(seconds=10))  # earlier: kept
    assert not record(engine, T0 + timedelta(seconds=30))  # same: kept
    assert read(engine) == T0 + timedelta(seconds=30)
    assert record(engine, T0 + timedelta(seconds=30, microseconds=1))
    assert read(engine) == T0 + timedelta(seconds=30, microseconds=1)
    other = shared.credential_key("https://org.crm.dynamics.com", "tenant", "another")
    assert read(engine, other) is None  # credentials never share a row
    with engine.connect() as conn:
        assert shared.latest(conn) == T0 + timedelta(seconds=30, microseconds=1)


def test_concurrent_upserts_keep_the_latest_instant(engine: Engine) -> None:
    """Eight writers race with random instants, the first ones inserting the row at
    once: whatever the interleaving, the row ends at the latest instant written."""
    rng = random.Random(7)
    instants = [
        [T0 + timedelta(milliseconds=rng.randrange(0, 600_000)) for _ in range(25)]
        for _ in range(8)
    ]
    start = threading.Barrier(len(instants))
    failures: list[BaseException] = []

    def writer(mine: list[datetime]) -> None:
        try:
            start.wait()
            for until in mine:
                record(engine, until)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(mine,)) for mine in instants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert read(engine) == max(max(mine) for mine in instants)


class Clock:
    """A monotonic clock the test moves by hand (the Limiter's)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_429_in_one_process_closes_the_gate_of_another(engine: Engine) -> None:
    """Two processes are two limiters with their own clocks and bridges on one store."""
    clock_a, clock_b = Clock(), Clock()
    clock_b.now = 1000.0  # monotonic clocks of different processes share no origin
    a, b = Limiter(clock=clock_a), Limiter(clock=clock_b)
    bridge_a, bridge_b = SharedThrottle(engine, a, KEY), SharedThrottle(engine, b, KEY)
    assert await bridge_b.refresh() == 0.0
    a.throttled(20.0)
    await bridge_a.aclose()  # the publish the 429 started
    held = await bridge_b.refresh()
    assert 19.0 < held <= 20.0
    assert 19.0 < b.gate.wait(clock_b.now) <= 20.0
    assert b.limit.slots == a.limit.ceiling  # B's concurrency is not cut by A's burst
    a.throttled(5.0)  # a shorter wait later never shortens the shared one
    await bridge_a.aclose()
    assert 18.0 < await bridge_b.refresh() <= 20.0


async def poll(bridge: SharedThrottle) -> None:
    """One poll, and the write of the spending it started."""
    await bridge.refresh()
    await bridge.aclose()


async def test_two_processes_share_one_execution_budget(engine: Engine) -> None:
    """Dataverse's 1,200 s per window is the user's: what A's requests spent is left by
    B, and only while A is heard from."""
    clock_a, clock_b = Clock(), Clock()
    clock_b.now = 500.0
    a = Limiter(clock=clock_a, budget=ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0))
    b = Limiter(clock=clock_b, budget=ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0))
    wall = [T0]
    bridge_a = SharedThrottle(engine, a, KEY, now=lambda: wall[0])
    bridge_b = SharedThrottle(engine, b, KEY, now=lambda: wall[0])
    b.budget.charge(clock_b.now, 1_000)
    assert b.budget.wait(clock_b.now, 5_000) == 0.0
    a.budget.charge(clock_a.now, 4_000)
    await poll(bridge_a)  # A tells its 4,000
    await poll(bridge_b)
    assert b.budget.others(clock_b.now) == Others(processes=1, spent_ms=4_000, share=1.0)
    assert b.budget.wait(clock_b.now, 5_000) > 0  # 1,000 + 4,000 + 5,000 > 9,700
    assert b.budget.wait(clock_b.now, 3_000) == 0.0
    b.budget.charge(clock_b.now, 3_000)
    await poll(bridge_b)
    await poll(bridge_a)
    assert a.budget.others(clock_a.now).spent_ms == 4_000  # and A hears B's
    # An execution-time 429 cut A's share: B paces to it too.
    a.throttled(1.0, execution=True)
    await poll(bridge_a)
    await poll(bridge_b)
    assert b.budget.others(clock_b.now).share == pytest.approx(0.9)
    assert b.budget.limit(clock_b.now) == pytest.approx(9_000 - 4_000)
    # A's spending leaves its window: the next poll writes it down to nothing.
    clock_a.now += 11
    await poll(bridge_a)
    await poll(bridge_b)
    assert b.budget.others(clock_b.now).spent_ms == 0.0
    # A process that stops telling (killed) is forgotten after SPEND_STALE.
    a.budget.charge(clock_a.now, 6_000)
    await poll(bridge_a)
    wall[0] = T0 + shared.SPEND_STALE + timedelta(seconds=1)
    await poll(bridge_b)
    assert b.budget.others(clock_b.now) == Others()
    # Its row is deleted once it is SPEND_KEEP old.
    wall[0] = T0 + shared.SPEND_KEEP + timedelta(seconds=1)
    clock_b.now += shared.SPEND_KEEP.total_seconds()  # B's own 4,000 has left: it writes
    await poll(bridge_b)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dynamics_spend.c.process)).scalars().all()
    assert rows == [bridge_b.process]


async def test_an_unchanged_spending_is_written_only_as_a_heartbeat(engine: Engine) -> None:
    clock = Clock()
    limiter = Limiter(clock=clock, budget=ExecutionBudget(budget_ms=10_000, window_s=60))
    wall = [T0]
    bridge = SharedThrottle(engine, limiter, KEY, now=lambda: wall[0])

    def written() -> datetime | None:
        with engine.connect() as conn:
            return conn.execute(sa.select(dynamics_spend.c.updated_at)).scalar()

    await poll(bridge)
    assert written() is None  # nothing spent, nothing to tell
    limiter.budget.charge(clock.now, 1_000)
    await poll(bridge)
    assert written() == T0
    wall[0], clock.now = T0 + timedelta(seconds=1), 1.0
    await poll(bridge)
    assert written() == T0  # the same 1,000: no write
    wall[0], clock.now = T0 + timedelta(seconds=6), 6.0
    await poll(bridge)
    assert written() == wall[0]  # the heartbeat, well within SPEND_STALE


async def test_a_writer_holding_sqlite_does_not_hold_up_the_poll(engine: Engine) -> None:
    """The spending is written by a task of its own: the others' 429 instant is read
    while the application holds the write lock."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's writers do not queue on one lock")
    limiter = Limiter(clock=Clock())
    limiter.budget.charge(0.0, 50_000)  # a spending due to be written
    bridge = SharedThrottle(engine, limiter, KEY)
    record(engine, datetime.now(UTC) + timedelta(seconds=20))
    with write_transaction(engine):  # BEGIN IMMEDIATE: the write lock, held
        started = time.monotonic()
        assert 19.0 < await bridge.refresh() <= 20.0
        assert time.monotonic() - started < 2.0
    await bridge.aclose()  # the write, once the lock was free
    with engine.connect() as conn:
        assert conn.execute(sa.select(dynamics_spend.c.spent_ms)).scalar() == 50_000


@pytest.fixture
def unreachable(db_url: str, tmp_path: Path) -> str:
    """A store URL of the same backend that cannot be reached."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'missing-folder' / 'store.db'}"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing?connect_timeout=2"


async def test_store_outage_falls_back_to_the_local_gate_and_logs_once(
    engine: Engine, unreachable: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = create_store_engine(unreachable)
    clock = Clock()
    limiter = Limiter(clock=clock)
    bridge = SharedThrottle(down, limiter, KEY)
    caplog.set_level(logging.INFO, logger="crmsync.engine.throttle")
    try:
        for _ in range(3):
            assert await bridge.refresh() == 0.0
        limiter.throttled(4.0)
        await bridge.aclose()  # the publish failed quietly
        limiter.throttled(6.0)
        await bridge.aclose()
    finally:
        down.dispose()
    assert 5.9 < limiter.gate.wait(clock.now) <= 6.0  # our own 429s still hold us
    clock.now += 6.0
    async with limiter.slot():  # and sending goes on once they have passed
        pass
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events == ["throttle.store_unavailable"]
    bridge.engine = engine  # the store is back
    record(engine, datetime.now(UTC) + timedelta(seconds=30))
    assert 29.0 < await bridge.refresh() <= 30.0
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events == ["throttle.store_unavailable", "throttle.store_back"]


async def test_healthz_and_metrics_show_the_shared_instant(db_url: str, engine: Engine) -> None:
    app = create_app(load_settings(database_url=db_url, api_token="t"), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"Authorization": "Bearer t"}
    ) as c:
        assert (await c.get("/healthz")).json()["dynamics_throttled_until"] is None
        record(engine, datetime.now(UTC) - timedelta(seconds=5))  # over: not shown
        assert (await c.get("/healthz")).json()["dynamics_throttled_until"] is None
        until = datetime.now(UTC) + timedelta(seconds=45)
        record(engine, until)
        shown = (await c.get("/healthz")).json()["dynamics_throttled_until"]
        assert datetime.fromisoformat(shown) == until
        text = (await c.get("/metrics")).text
    gauges = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("crmsync_dynamics_throttled")
    }
    assert gauges == {"crmsync_dynamics_throttled_until_timestamp_seconds": until.timestamp()}


async def test_healthz_survives_a_store_not_yet_upgraded(db_url: str, engine: Engine) -> None:
    """New code in front of a store still at migration 0002 (before ``db upgrade``):
    the health check and metrics stay up and show no shared wait."""
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE dynamics_throttle"))
    app = create_app(load_settings(database_url=db_url, api_token="t"), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"Authorization": "Bearer t"}
    ) as c:
        health = await c.get("/healthz")
        assert health.status_code == 200
        assert health.json()["store"] == "ok"
        assert health.json()["dynamics_throttled_until"] is None
        metrics = await c.get("/metrics")
    assert metrics.status_code == 200
    assert "crmsync_dynamics_throttled_until_timestamp_seconds 0.0" in metrics.text
