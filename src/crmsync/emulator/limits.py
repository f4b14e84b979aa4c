"""Service-protection limits and fault injection.

Limits are per user, as Dataverse keeps them (``api-limits.md``): requests and combined
execution time in a sliding window, and concurrent requests. Exceeding concurrency
fails at once; the window limits answer ``429`` with a ``Retry-After`` of the seconds
until enough of the window has passed. Injected faults are drawn from one seeded RNG:
``fail_rate`` answers 503, ``throttle_rate`` 429, and ``cut_rate`` applies the request
and then drops the connection without a response. ``throttle_next`` answers the next N
requests 429 whatever the rates, so a test can throttle exactly once and watch who waits.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from crmsync.emulator import faults
from crmsync.emulator.settings import Settings


@dataclass
class _UserWindow:
    starts: deque[float] = field(default_factory=deque)
    spent: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, ms)
    spent_total: float = 0.0
    active: int = 0


class Limiter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users: dict[str, _UserWindow] = {}
        self.rng = random.Random(settings.seed)

    def reseed(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def reset(self) -> None:
        self.users.clear()
        self.reseed()

    def admit(self, user: str) -> None:
        """Count a request in, or raise the 429 that Dataverse would send."""
        s = self.settings
        w = self.users.get(user)
        if w is None:
            w = self.users[user] = _UserWindow()
        now = time.monotonic()
        horizon = now - s.window_s
        while w.starts and w.starts[0] <= horizon:
            w.starts.popleft()
        while w.spent and w.spent[0][0] <= horizon:
            w.spent_total -= w.spent.popleft()[1]
        if s.max_concurrency is not None and w.active >= s.max_concurrency:
            raise faults.too_many_concurrent(s.max_concurrency, max(1, s.retry_after_s))
        if s.max_requests is not None and len(w.starts) >= s.max_requests:
            wait = w.starts[len(w.starts) - s.max_requests] - horizon
            raise faults.too_many_requests(s.max_requests, s.window_s, max(1, math.ceil(wait)))
        if s.max_execution_ms is not None and w.spent_total >= s.max_execution_ms:
            wait = w.spent[0][0] - horizon if w.spent else s.window_s
            raise faults.execution_time_exceeded(
                s.max_execution_ms, s.window_s, max(1, math.ceil(wait))
            )
        w.starts.append(now)
        w.active += 1

    def release(self, user: str, elapsed_ms: float) -> None:
        w = self.users.get(user)
        if w is None:
            return
        w.active = max(0, w.active - 1)
        if self.settings.max_execution_ms is not None:
            w.spent.append((time.monotonic(), elapsed_ms))
            w.spent_total += elapsed_ms

    def injected(self) -> faults.DataverseFault | None:
        """A fault to answer instead of running the request, drawn by the configured rates."""
        s = self.settings
        if s.throttle_next > 0:
            s.throttle_next -= 1
            return faults.too_many_requests(s.max_requests or 6000, s.window_s, s.retry_after_s)
        if s.fail_rate and self.rng.random() < s.fail_rate:
            return faults.unavailable()
        if s.throttle_rate and self.rng.random() < s.throttle_rate:
            limit = s.max_requests or 6000
            return faults.too_many_requests(limit, s.window_s, s.retry_after_s)
        return None

    def cut(self) -> bool:
        s = self.settings
        return bool(s.cut_rate) and self.rng.random() < s.cut_rate

    def delay_s(self, records: int) -> float:
        s = self.settings
        return (s.latency_ms + s.per_record_ms * records) / 1000.0
