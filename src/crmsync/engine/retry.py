"""Retry policy: capped, jittered exponential backoff. Pure functions."""

from __future__ import annotations

import random
from datetime import datetime, timedelta


def backoff_seconds(
    attempts: int, base: float, cap: float, *, rnd: random.Random | None = None
) -> float:
    """Delay before the next try after ``attempts`` failed tries (1 = first failure).

    "Equal jitter": half the exponential delay is kept, half is random, so retries of a
    burst of failures spread out while none retries immediately.
    """
    r = rnd.random() if rnd is not None else random.random()
    delay: float = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay / 2 + r * delay / 2


def next_attempt(
    now: datetime,
    attempts: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    *,
    rnd: random.Random | None = None,
) -> datetime:
    """When to try again; never sooner than the server's ``Retry-After``."""
    delay = backoff_seconds(attempts, base, cap, rnd=rnd)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + timedelta(seconds=delay)


def exhausted(attempts: int, max_attempts: int) -> bool:
    return attempts >= max_attempts
