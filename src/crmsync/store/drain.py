"""Time to drain: how long the backlog waiting now takes at the recent sync rate.

The rate is read from the per-minute counters (``sync_rate``: records synced per object,
direction and UTC minute, with the minute's first and last sync and the size of its
first batch), over the last ``WINDOW`` and weighted ``2 ** (-age / HALF_LIFE)``. It is
measured from the first sync in the window, not from the window's start: idle time
before a drain started is not in it, and the first batch's records, sent before that
first sync, are left out of it. Quiet minutes after the first sync count as zero, so a
stalled drain's rate fades and, once nothing is left in the window, is gone.

Each direction drains on its own (different workers, different limits): an object's
time is that of its slower direction. The estimate is ``no_rate`` ("—") when a direction
with a backlog has no rate, and ``paused`` when a paused direction holds part of the
backlog: no rate tells when a pause ends. All but ``recent_minutes`` (a read) are pure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.store.schema import minute_start, sync_rate

MINUTE = timedelta(minutes=1)
WINDOW = timedelta(minutes=5)
HALF_LIFE = timedelta(minutes=1)
# Less time than this since the first sync measures the workers' concurrency more than
# their pace (batches finished together look like an instant drain): no rate yet.
MIN_SPAN = timedelta(seconds=2)

# Drain states, as the status rows' ``drain`` field says them.
EMPTY, PAUSED, NO_RATE, ESTIMATE = "empty", "paused", "no_rate", "estimate"


@dataclass(frozen=True)
class Minute:
    """One ``sync_rate`` row: what one (object, direction) synced in one UTC minute."""

    start: datetime
    synced: int
    first_synced_at: datetime
    last_synced_at: datetime
    first_batch: int


def decay_integral(start: float, end: float, half_life: float) -> float:
    """``∫ 2 ** (-age / half_life) d age`` for ages from ``start`` to ``end`` seconds."""
    k = math.log(2) / half_life
    return (math.exp(-k * start) - math.exp(-k * end)) / k


def recent_rate(
    minutes: Iterable[Minute],
    now: datetime,
    *,
    window: timedelta = WINDOW,
    half_life: timedelta = HALF_LIFE,
    min_span: timedelta = MIN_SPAN,
) -> float | None:
    """Records per second over the last ``window`` before ``now``, weighted by recency
    and measured from the first sync in it; None when it gives no rate (nothing synced
    in the window, or one batch only, or less than ``min_span`` since the first sync).

    A minute's records are spread evenly over it, the earliest minute's from its first
    sync on (less its first batch), the latest one's up to its last sync; the time from
    there to ``now`` counts as zero.
    """
    horizon = now - window
    rows = sorted(
        (m for m in minutes if m.start + MINUTE > horizon and m.first_synced_at <= now),
        key=lambda m: m.start,
    )
    if not rows:
        return None
    since = max(rows[0].first_synced_at, horizon)
    if now - since < min_span:
        return None
    h = half_life.total_seconds()
    weighted = 0.0
    for i, m in enumerate(rows):
        begin, synced = m.start, m.synced
        if i == 0:
            begin, synced = m.first_synced_at, m.synced - m.first_batch
        end = min(m.start + MINUTE, now)
        if i == len(rows) - 1:
            end = min(m.last_synced_at, now)
        spread = (end - begin).total_seconds()
        young = (now - end).total_seconds()
        old = (now - max(begin, horizon)).total_seconds()
        if synced > 0 and spread > 0 and young < old:
            weighted += synced / spread * decay_integral(young, old, h)
    if weighted <= 0:
        return None
    return weighted / decay_integral(0.0, (now - since).total_seconds(), h)


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


def recent_minutes(
    conn: Connection, now: datetime, window: timedelta = WINDOW
) -> dict[tuple[str, str], list[Minute]]:
    """The ``sync_rate`` rows per (object, direction) of the minutes that overlap the
    window before ``now``: the input of ``recent_rate``."""
    r = sync_rate.c
    query = sa.select(
        r.object,
        r.direction,
        r.minute_start,
        r.synced,
        r.first_synced_at,
        r.last_synced_at,
        r.first_batch,
    ).where(r.minute_start >= minute_start(now - window), r.minute_start <= now)
    found: dict[tuple[str, str], list[Minute]] = defaultdict(list)
    for obj, direction, start, synced, first, last, first_batch in conn.execute(query):
        found[(obj, direction)].append(Minute(start, int(synced), first, last, int(first_batch)))
    return dict(found)
