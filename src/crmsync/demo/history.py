"""A few days of throughput history, so that the charts and "Last hour" mean something
the moment the demo starts.

Rows go into ``sync_throughput`` exactly as workers write them (15-minute buckets per
object, direction and operation). Only buckets with no row at all are filled, so a
reused demo keeps what it really synced and only the time it was not running is filled
in. The shape is a working week: busy office hours in the configured time zone, quiet
nights, calmer weekends, inserts outnumbered by updates, few deletes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import ObjectSpec
from crmsync.store.queue import bucket_start
from crmsync.store.schema import sync_throughput

BUCKET = timedelta(minutes=15)
DAYS = 3
# Records per 15 minutes at the busiest hour, per object and direction.
PEAK = {
    ("lead", "to_crm"): 220,
    ("lead", "from_crm"): 60,
    ("contact", "to_crm"): 90,
    ("contact", "from_crm"): 80,
    ("account", "from_crm"): 25,
    ("opportunity", "from_crm"): 15,
    # The demo mapping's custom table; any other object gets ``OTHER_PEAK``.
    ("event_registration", "to_crm"): 45,
    ("event_registration", "from_crm"): 12,
}
OTHER_PEAK = 20
OPERATION_SHARE = {"insert": 0.35, "update": 0.6, "delete": 0.05}


def activity(local: datetime) -> float:
    """How busy a moment is, 0..1: a bell over 9:00-18:00 local time, weekends calmer."""
    hour = local.hour + local.minute / 60
    day = math.exp(-(((hour - 13.0) / 3.5) ** 2))
    night = 0.04
    level = night + (1 - night) * day
    return level * (0.3 if local.weekday() >= 5 else 1.0)


def pairs(specs: Iterable[ObjectSpec]) -> list[tuple[str, str]]:
    """(object, direction) pairs the configured flows allow."""
    out = []
    for spec in specs:
        if spec.flow.pushes:
            out.append((spec.name, "to_crm"))
        if spec.flow.pulls:
            out.append((spec.name, "from_crm"))
    return out


def history_rows(
    now: datetime,
    zone: ZoneInfo,
    specs: Iterable[ObjectSpec],
    *,
    days: int = DAYS,
    skip: set[datetime] | frozenset[datetime] = frozenset(),
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:
    """Rows for every 15-minute bucket of the last ``days`` before ``now``'s bucket.

    Buckets in ``skip`` (those already holding real counts) are left alone, and so is
    the bucket in progress: the workers are about to count into it.
    """
    rng = rng or random.Random()
    wanted = pairs(specs)
    end = bucket_start(now)
    start = end - timedelta(days=days)
    rows: list[dict[str, Any]] = []
    at = start
    while at < end:
        if at not in skip:
            level = activity(at.astimezone(zone))
            for obj, direction in wanted:
                peak = PEAK.get((obj, direction), OTHER_PEAK)
                for operation, share in OPERATION_SHARE.items():
                    n = round(peak * share * level * rng.uniform(0.7, 1.3))
                    if n > 0:
                        rows.append(
                            {
                                "bucket_start": at,
                                "object": obj,
                                "direction": direction,
                                "operation": operation,
                                "synced": n,
                            }
                        )
        at += BUCKET
    return rows


def seed_history(
    conn: Connection, now: datetime, zone: ZoneInfo, specs: Iterable[ObjectSpec]
) -> int:
    """Fill empty buckets of the last few days; returns how many rows were written."""
    start = bucket_start(now) - timedelta(days=DAYS)
    t = sync_throughput.c
    filled = {r[0] for r in conn.execute(sa.select(t.bucket_start).where(t.bucket_start >= start))}
    rows = history_rows(now, zone, specs, skip=filled)
    if rows:
        conn.execute(sa.insert(sync_throughput), rows)
    return len(rows)
