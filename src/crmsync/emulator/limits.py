"""Service-protection limits and fault injection.

Limits are per user, as Dataverse keeps them (``api-limits.md``): requests and combined
execution time in a sliding window, and concurrent requests. Exceeding concurrency
fails at once; the window limits are exceeded first, then enforced: a request is
admitted while the user's budget is not yet spent, its execution time (``costs``) is
counted when it finishes, and later requests answer ``429`` with a ``Retry-After`` of
the seconds until enough of the window has passed to be under the limit again. Every
answer to an authenticated request carries what is left (``remaining_headers``), in
Dataverse's formats. Injected faults are drawn from one seeded RNG:
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

BURST_HEADER = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_HEADER = "x-ms-ratelimit-time-remaining-xrm-requests"


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

    def _window(self, user: str) -> tuple[_UserWindow, float]:
        """The user's window with what has slid out of it dropped, and its horizon."""
        w = self.users.get(user)
        if w is None:
            w = self.users[user] = _UserWindow()
        horizon = time.monotonic() - self.settings.window_s
        while w.starts and w.starts[0] <= horizon:
            w.starts.popleft()
        while w.spent and w.spent[0][0] <= horizon:
            w.spent_total -= w.spent.popleft()[1]
        if not w.spent:
            w.spent_total = 0.0  # no float drift once the window is empty
        return w, horizon

    def admit(self, user: str) -> None:
        """Count a request in, or raise the 429 that Dataverse would send."""
        s = self.settings
        w, horizon = self._window(user)
        if s.max_concurrency is not None and w.active >= s.max_concurrency:
            raise faults.too_many_concurrent(s.max_concurrency, max(1, s.retry_after_s))
        if s.max_requests is not None and len(w.starts) >= s.max_requests:
            wait = w.starts[len(w.starts) - s.max_requests] - horizon
            raise faults.too_many_requests(s.max_requests, s.window_s, max(1, math.ceil(wait)))
        if s.max_execution_ms is not None and w.spent_total >= s.max_execution_ms:
            raise faults.execution_time_exceeded(
                s.max_execution_ms, s.window_s, max(1, math.ceil(self._spent_wait(w, horizon)))
            )
        w.starts.append(time.monotonic())
        w.active += 1

    def _spent_wait(self, w: _UserWindow, horizon: float) -> float:
        """Seconds until enough charges slide out to bring the user under the budget
        (concurrent requests can overshoot it: each was admitted before the others ended)."""
        limit = self.settings.max_execution_ms or 0
        left = w.spent_total
        for finished, ms in w.spent:
            left -= ms
            if left < limit:
                return finished - horizon
        return self.settings.window_s

    def release(self, user: str, charged_ms: float) -> None:
        """The request has finished: ``charged_ms`` of execution time counts from now."""
        w = self.users.get(user)
        if w is None:
            return
        w.active = max(0, w.active - 1)
        if charged_ms > 0:
            w.spent.append((time.monotonic(), charged_ms))
            w.spent_total += charged_ms

    def remaining_headers(self, user: str) -> dict[str, str]:
        """``x-ms-ratelimit-*`` as Dataverse sends them: requests left in the window, and
        execution time left in seconds with a thousands separator and two decimals
        ("1,199.46"), as captured from real responses (not documented; see
        docs/emulator.md). A header whose limit is off (null) is left out."""
        s = self.settings
        w, _ = self._window(user)
        out = {}
        if s.max_requests is not None:
            out[BURST_HEADER] = str(max(0, s.max_requests - len(w.starts)))
        if s.max_execution_ms is not None:
            left_s = max(0.0, s.max_execution_ms - w.spent_total) / 1000
            out[TIME_HEADER] = f"{left_s:,.2f}"
        return out

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
