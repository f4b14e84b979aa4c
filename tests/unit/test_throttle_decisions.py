"""The pure parts of the shared throttle: instants, remaining waits, credential keys,
and the limiter's listener and ``hold`` (fake clocks, no store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crmsync.dynamics.limiter import AdaptiveLimit, Limiter
from crmsync.engine.throttle import MAX_WAIT, remaining, shared_until
from crmsync.store.throttle import credential_key

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


def test_shared_until_is_now_plus_retry_after_capped() -> None:
    assert shared_until(NOW, 7.5) == NOW + timedelta(seconds=7.5)
    assert shared_until(NOW, -3) == NOW
    assert shared_until(NOW, 10_000) == NOW + MAX_WAIT


def test_remaining_is_clamped_to_zero_and_max_wait() -> None:
    assert remaining(None, NOW) == 0.0
    assert remaining(NOW - timedelta(seconds=1), NOW) == 0.0
    assert remaining(NOW + timedelta(seconds=12.25), NOW) == 12.25
    # A machine whose clock runs an hour ahead cannot stop the others for an hour.
    assert remaining(NOW + timedelta(hours=1), NOW) == MAX_WAIT.total_seconds()


def test_credential_key_names_the_app_user_not_its_secret() -> None:
    key = credential_key("https://org.crm.dynamics.com/", "tenant", "client")
    assert key == credential_key("https://ORG.crm.dynamics.com", "tenant", "client")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != credential_key("https://org.crm.dynamics.com", "tenant", "other-client")
    assert key != credential_key("https://org2.crm.dynamics.com", "tenant", "client")
    assert "client" not in key and "tenant" not in key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_listeners_hear_each_throttle_with_its_wait() -> None:
    clock = Clock()
    limiter = Limiter(AdaptiveLimit(current=40), clock=clock)
    heard: list[float] = []
    limiter.on_throttle(heard.append)
    limiter.throttled(3.0)
    limiter.throttled(1.0)
    assert heard == [3.0, 1.0]
    assert limiter.gate.wait(clock.now) == 3.0


def test_hold_closes_the_gate_without_cutting_concurrency() -> None:
    clock = Clock()
    limiter = Limiter(AdaptiveLimit(current=40), clock=clock)
    heard: list[float] = []
    limiter.on_throttle(heard.append)
    limiter.hold(8.0)
    assert limiter.gate.wait(clock.now) == 8.0
    limiter.hold(2.0)  # an earlier instant never reopens the gate
    assert limiter.gate.wait(clock.now) == 8.0
    clock.now += 8.0
    assert limiter.gate.wait(clock.now) == 0.0
    assert limiter.limit.slots == 40
    assert heard == []  # a hold is not re-published as our own throttle


def test_a_job_pacer_keeps_its_share_of_every_window() -> None:
    import asyncio

    from crmsync.engine.throttle import Pacer

    async def times(pace: Pacer, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        start, out = loop.time(), []
        for _ in range(n):
            await pace()
            out.append(loop.time() - start)
        return out

    # 8 requests a 0.5 s window, a quarter of them for the job: 2 in any 0.5 s.
    sent = asyncio.run(times(Pacer(0.25, budget=8, window=0.5), 5))
    assert sent[1] < 0.1  # within its part: at once, not spaced by a rate
    assert 0.45 <= sent[2] < 0.7  # the third waits for the first to leave the window
    assert sent[3] < sent[2] + 0.1
    assert 0.95 <= sent[4] < 1.3
    for i in range(len(sent) - 2):
        assert sent[i + 2] - sent[i] >= 0.45  # never 3 in one window

    # Two callers waiting side by side (an audit's scan and its page task): still no
    # more than 2 in any window.
    async def side_by_side() -> list[float]:
        pace = Pacer(0.25, budget=8, window=0.5)
        both = await asyncio.gather(times(pace, 3), times(pace, 3))
        return sorted(both[0] + both[1])

    together = asyncio.run(side_by_side())
    for i in range(len(together) - 2):
        assert together[i + 2] - together[i] >= 0.45, together
    # The whole budget: nothing held; the default is Dataverse's 6,000 per 300 s.
    assert Pacer(1.0).allowed is None
    assert Pacer(0.5).allowed == 3000 and Pacer(0.5).window == 300.0
