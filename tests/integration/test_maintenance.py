"""``store.maintenance.maintain`` on SQLite and PostgreSQL: backlog samples once per
bucket, compaction of old 15-minute buckets into UTC hours with the sums unchanged,
pruning, and the trend it makes possible."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import test_status_api as status_fixture
from sqlalchemy import Engine

from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import maintenance, status
from crmsync.store.schema import sync_backlog_sample, sync_queue, sync_throughput

NOW = datetime.fromisoformat("2026-11-25T13:20:00+00:00")
UTC = ZoneInfo("UTC")


def counter(start: datetime, n: int, obj: str = "lead", op: str = "insert") -> dict[str, object]:
    return {
        "bucket_start": start,
        "object": obj,
        "direction": "to_crm",
        "operation": op,
        "synced": n,
    }


def rows(engine: Engine) -> list[tuple[datetime, str, str, int]]:
    t = sync_throughput.c
    query = sa.select(t.bucket_start, t.object, t.operation, t.synced).order_by(
        t.bucket_start, t.object, t.operation
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]  # type: ignore[misc]


def samples(engine: Engine) -> list[tuple[datetime, str, str, int]]:
    s = sync_backlog_sample.c
    query = sa.select(s.sampled_at, s.object, s.direction, s.backlog).order_by(
        s.sampled_at, s.object, s.direction
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]  # type: ignore[misc]


def test_samples_the_backlog_once_per_bucket(engine: Engine):
    status_fixture.seed(engine)  # lead: 3 to_crm + 1 from_crm pending; account 1 from_crm
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_throughput))
        conn.execute(sa.delete(sync_backlog_sample))
    done = maintenance.maintain(engine, NOW)
    assert done.sampled
    taken = samples(engine)
    assert len(taken) == len(STANDARD_OBJECTS) * 2  # zeros included
    assert rows(engine) == []  # samples are not throughput
    per = {(obj, direction): n for _, obj, direction, n in taken}
    assert per[("lead", "to_crm")] == 3 and per[("lead", "from_crm")] == 1
    assert per[("account", "from_crm")] == 1 and per[("contact", "to_crm")] == 0
    assert {r[0] for r in taken} == {datetime.fromisoformat("2026-11-25T13:15:00+00:00")}
    # Same bucket: nothing more; the next bucket: a new sample.
    assert not maintenance.maintain(engine, NOW + timedelta(minutes=9)).sampled
    assert maintenance.maintain(engine, NOW + timedelta(minutes=10)).sampled
    assert len(samples(engine)) == len(STANDARD_OBJECTS) * 4


def test_trend_from_samples_taken_by_maintain(engine: Engine):
    queue = status_fixture.QUEUE
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_queue), queue)
        extra = [
            status_fixture.entry("lead", "to_crm", str(100 + i), "insert", "10:00")
            for i in range(50)
        ]
        conn.execute(sa.insert(sync_queue), extra)
    maintenance.maintain(engine, NOW - timedelta(hours=3))  # 10:20: 54 lead entries
    with engine.begin() as conn:  # 50 of them sync
        conn.execute(sa.delete(sync_queue).where(sync_queue.c.record_key.like("1__")))
    with engine.connect() as conn:
        body = status.backlog(conn, STANDARD_OBJECTS, at=NOW)
    lead = {r["object"]: r for r in body["objects"]}["lead"]
    assert body["trend_since"] == "2026-11-25T10:15:00+00:00"
    assert (lead["total"], lead["backlog_earlier"], lead["trend"]) == (4, 54, "shrinking")


def test_compacts_old_buckets_into_hours_and_keeps_the_sums(engine: Engine):
    old = datetime.fromisoformat("2026-11-10T05:00:00+00:00")  # 15 days before NOW
    recent = datetime.fromisoformat("2026-11-20T05:00:00+00:00")  # 5 days before NOW
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_throughput),
            [
                counter(old, 1),
                counter(old + timedelta(minutes=15), 2),
                counter(old + timedelta(minutes=45), 4),
                counter(old + timedelta(minutes=30), 8, op="update"),
                counter(old + timedelta(hours=1, minutes=15), 16),
                counter(old + timedelta(hours=2), 32),  # already whole: left alone
                counter(recent + timedelta(minutes=15), 64),  # within 8 days: kept fine
                counter(recent + timedelta(minutes=30), 128),
            ],
        )
    before = _hourly(engine, old, 72)
    done = maintenance.maintain(engine, NOW)
    assert done.compacted_hours == 2
    assert rows(engine) == [
        (old, "lead", "insert", 7),
        (old, "lead", "update", 8),
        (old + timedelta(hours=1), "lead", "insert", 16),
        (old + timedelta(hours=2), "lead", "insert", 32),
        (recent + timedelta(minutes=15), "lead", "insert", 64),
        (recent + timedelta(minutes=30), "lead", "insert", 128),
    ]
    assert _hourly(engine, old, 72) == before  # UTC hours sum the same
    # Idempotent: a later run has nothing left to fold in these hours.
    assert maintenance.maintain(engine, NOW + timedelta(minutes=15)).compacted_hours == 0


def _hourly(engine: Engine, first: datetime, hours: int) -> list[int]:
    with engine.connect() as conn:
        body = status.throughput(
            conn, ["lead"], UTC, hours=hours, at=first + timedelta(hours=hours)
        )
    return [b["objects"]["lead"]["synced"] for b in body["buckets"]]


def test_prunes_old_counters_and_samples(engine: Engine):
    ancient = NOW - timedelta(days=maintenance.KEEP_DAYS + 1)
    kept = NOW - timedelta(days=maintenance.KEEP_DAYS - 1)
    sample = {"object": "lead", "direction": "to_crm", "backlog": 5}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_throughput),
            [
                counter(ancient.replace(minute=0, second=0), 1),
                counter(kept.replace(minute=0, second=0), 2),
            ],
        )
        conn.execute(
            sa.insert(sync_backlog_sample),
            [
                {**sample, "sampled_at": datetime.fromisoformat("2026-11-22T13:00:00+00:00")},
                {**sample, "sampled_at": datetime.fromisoformat("2026-11-24T13:00:00+00:00")},
            ],
        )
    done = maintenance.maintain(engine, NOW)
    assert done.pruned_rows == 2
    left = rows(engine)
    assert (kept.replace(minute=0, second=0), "lead", "insert", 2) in left
    assert not [r for r in left if r[0] < NOW - timedelta(days=maintenance.KEEP_DAYS)]
    sampled = {r[0] for r in samples(engine)}
    assert datetime.fromisoformat("2026-11-24T13:00:00+00:00") in sampled
    assert datetime.fromisoformat("2026-11-22T13:00:00+00:00") not in sampled
