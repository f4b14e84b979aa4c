"""Time to drain: how long the backlog waiting now takes at the recent sync rate.

The rate is read from the throughput counters (``sync_throughput``, 15-minute buckets,
the current one partly elapsed), weighted towards the last few minutes: a bucket's
records are spread evenly over the part of it that has elapsed, and each moment counts
``2 ** (-age / HALF_LIFE)``, over the last ``WINDOW``. So a drain that speeds up (a
resume, workers added) shows within minutes, and one quiet minute does not erase an
hour's rate. Each direction drains on its own (different workers, different limits):
an object's time is that of its slower direction.

The estimate is ``None`` ("—") when a direction with a backlog synced nothing in the
window, and says ``paused`` when a paused direction holds part of the backlog: no rate
tells when a pause ends. New arrivals are not in it (the backlog trend shows them).

Everything but ``recent_synced`` is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.store.queue import BUCKET_MINUTES
from crmsync.store.schema import sync_throughput

# The counters' granularity bounds how fast the estimate follows a change of pace: a
# bucket's records are spread over its elapsed part. Finer buckets need no change here.
BUCKET = timedelta(minutes=BUCKET_MINUTES)
WINDOW = timedelta(minutes=30)
HALF_LIFE = timedelta(minutes=5)

# Drain states, as the status rows' ``drain`` field says them.
EMPTY, PAUSED, NO_RATE, ESTIMATE = "empty", "paused", "no_rate", "estimate"


def decay_integral(start: float, end: float, half_life: float) -> float:
    """``∫ 2 ** (-age / half_life) d age`` for ages from ``start`` to ``end`` seconds."""
    k = math.log(2) / half_life
    return (math.exp(-k * start) - math.exp(-k * end)) / k


def recent_rate(
    buckets: Iterable[tuple[datetime, int]],
    now: datetime,
    *,
    bucket: timedelta = BUCKET,
    window: timedelta = WINDOW,
    half_life: timedelta = HALF_LIFE,
) -> float | None:
    """Records per second over the last ``window``, weighted by recency; None when
    nothing synced in it. ``buckets`` are ``(bucket start, records synced)``; a bucket
    missing from them synced nothing (the window's quiet time counts as zero)."""
    h = half_life.total_seconds()
    horizon = window.total_seconds()
    weighted = 0.0
    for start, synced in buckets:
        end = min(start + bucket, now)
        elapsed = (end - start).total_seconds()
        if synced <= 0 or elapsed <= 0:
            continue
        young, old = (now - end).total_seconds(), min((now - start).total_seconds(), horizon)
        if young >= old:
            continue
        weighted += synced / elapsed * decay_integral(young, old, h)
    if weighted <= 0:
        return None
    return weighted / decay_integral(0.0, horizon, h)


@dataclass(frozen=True)
class Drain:
    """``state`` is one of EMPTY, PAUSED, NO_RATE, ESTIMATE; ``seconds`` is set for
    EMPTY (0) and ESTIMATE only."""

    state: str
    seconds: int | None


def estimate(
    backlog: Mapping[str, int],
    rates: Mapping[str, float | None],
    paused: Iterable[str] = (),
) -> Drain:
    """An object's time to drain from its backlog and recent rate per direction, and the
    directions that are paused: the slowest direction's, with a pause first."""
    waiting = {d: n for d, n in backlog.items() if n > 0}
    if not waiting:
        return Drain(EMPTY, 0)
    if set(paused) & set(waiting):
        return Drain(PAUSED, None)
    times = []
    for direction, n in waiting.items():
        rate = rates.get(direction)
        if not rate:
            return Drain(NO_RATE, None)
        times.append(n / rate)
    return Drain(ESTIMATE, math.ceil(max(times)))


def recent_synced(
    conn: Connection, now: datetime, window: timedelta = WINDOW
) -> dict[tuple[str, str], list[tuple[datetime, int]]]:
    """Records synced per (object, direction) in each bucket that overlaps the window
    before ``now``: the input of ``recent_rate``."""
    t = sync_throughput.c
    query = (
        sa.select(t.object, t.direction, t.bucket_start, sa.func.sum(t.synced))
        .where(t.bucket_start > now - window - BUCKET, t.bucket_start <= now)
        .group_by(t.object, t.direction, t.bucket_start)
    )
    found: dict[tuple[str, str], list[tuple[datetime, int]]] = defaultdict(list)
    for obj, direction, start, n in conn.execute(query):
        found[(obj, direction)].append((start, int(n or 0)))
    return dict(found)
