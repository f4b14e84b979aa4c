"""AdaptiveLimit / ThrottleGate decisions and the async Limiter."""

from __future__ import annotations

import asyncio

from crmsync.dynamics.limiter import (
    DATAVERSE_MAX_CONCURRENCY,
    AdaptiveLimit,
    Limiter,
    RateLimitRemaining,
    ThrottleGate,
    parse_dop_hint,
    parse_ratelimit,
)


def test_never_above_52() -> None:
    limit = AdaptiveLimit(ceiling=100, current=100)
    assert limit.slots == DATAVERSE_MAX_CONCURRENCY
    for _ in range(1000):
        limit.on_success()
    assert limit.slots == 52


def test_dop_hint_lowers_cap() -> None:
    limit = AdaptiveLimit()
    limit.on_success(dop_hint=8)
    assert limit.slots == 8
    limit.on_success(dop_hint=500)  # a hint above 52 never raises the cap past 52
    assert limit.cap == 52
    assert limit.slots == 8  # and the limit climbs back additively, not at once


def test_multiplicative_decrease_once_per_burst() -> None:
    limit = AdaptiveLimit(current=40)
    limit.on_throttle(now=10.0)
    assert limit.slots == 20
    limit.on_throttle(now=10.2)  # same burst: ignored
    assert limit.slots == 20
    limit.on_throttle(now=11.5)
    assert limit.slots == 10
    for t in range(20):
        limit.on_throttle(now=100.0 + 2 * t)
    assert limit.slots == 1  # floor


def test_additive_increase() -> None:
    limit = AdaptiveLimit(current=4)
    for _ in range(4):
        limit.on_success()
    assert limit.slots == 4 or limit.slots == 5
    for _ in range(20):
        limit.on_success()
    assert 5 <= limit.slots <= 9


def test_gate_only_moves_later() -> None:
    gate = ThrottleGate()
    assert gate.wait(0.0) == 0
    gate.close_for(100.0, 10)
    assert gate.wait(105.0) == 5
    gate.close_for(101.0, 1)  # shorter: no effect
    assert gate.wait(105.0) == 5
    assert gate.wait(111.0) == 0


def test_parse_dop_hint() -> None:
    assert parse_dop_hint("12") == 12
    assert parse_dop_hint(None) is None
    assert parse_dop_hint("x") is None
    assert parse_dop_hint("0") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_limiter_caps_in_flight() -> None:
    limiter = Limiter(AdaptiveLimit(ceiling=3, current=3))
    peak = 0

    async def job() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(job() for _ in range(20)))
    assert peak == 3
    assert limiter.in_flight == 0


async def test_gate_holds_every_caller() -> None:
    clock = FakeClock()
    limiter = Limiter(AdaptiveLimit(), clock=clock, sleep=clock.sleep)
    limiter.throttled(7.0)
    entered: list[float] = []

    async def job() -> None:
        async with limiter.slot():
            entered.append(clock.now)

    await asyncio.gather(*(job() for _ in range(5)))
    assert entered and all(t >= 7.0 for t in entered)


def test_ratelimit_headers_parse_as_dataverse_sends_them() -> None:
    burst = "x-ms-ratelimit-burst-remaining-xrm-requests"
    time_left = "x-ms-ratelimit-time-remaining-xrm-requests"
    assert parse_ratelimit({burst: "5999", time_left: "1,199.46"}) == RateLimitRemaining(
        5999, 1199.46
    )
    assert parse_ratelimit({time_left: "1,200.00"}) == RateLimitRemaining(None, 1200.0)
    assert parse_ratelimit({burst: "0"}) == RateLimitRemaining(0, None)
    assert parse_ratelimit({}) is None
    assert parse_ratelimit({burst: "many", time_left: "-3"}) is None
    assert parse_ratelimit({burst: " 12 ", time_left: "nan"}) == RateLimitRemaining(12, None)
