"""Sync Status over the API, on SQLite and PostgreSQL, against hand-computed numbers.

The queue, the throughput buckets and the rate minutes are seeded with SQL at known
times; ``at=`` pins "now" to 2026-11-25T13:20:00Z.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.store.schema import sync_backlog_sample, sync_queue, sync_rate, sync_throughput
from crmsync.web.app import create_app

TOKEN = "status-token"
AT = "2026-11-25T13:20:00Z"


def t(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-25T{hhmm}:00+00:00")


def iso(hhmm: str) -> str:
    return t(hhmm).isoformat()


def entry(
    obj: str,
    direction: str,
    key: str,
    operation: str,
    queued: str,
    *,
    state: str = "pending",
    record_id: int | None = None,
    crm_id: str | None = None,
    label: str | None = None,
    attempts: int = 0,
    next_attempt: str | None = None,
) -> dict[str, Any]:
    return {
        "object": obj,
        "direction": direction,
        "record_key": key,
        "record_id": record_id,
        "crm_id": crm_id,
        "operation": operation,
        "label": label,
        "state": state,
        "first_queued_at": t(queued),
        "last_changed_at": t(queued),
        "attempts": attempts,
        "next_attempt_at": t(next_attempt or queued),
    }


QUEUE = [
    entry("lead", "to_crm", "1", "insert", "10:00", record_id=1, label="l1@example.com"),
    entry("lead", "to_crm", "2", "insert", "12:00", record_id=2, label="l2@example.com"),
    # Waiting to retry after a transient fault: still backlog.
    entry("lead", "to_crm", "3", "update", "11:00", record_id=3, attempts=2, next_attempt="14:00"),
    # Parked as an error: not backlog.
    entry("lead", "to_crm", "4", "delete", "08:00", record_id=4, state="parked"),
    entry(
        "lead",
        "from_crm",
        "aaaa",
        "update",
        "09:30",
        record_id=5,
        crm_id="aaaa",
        label="old@example.com",
    ),
    entry("contact", "to_crm", "1", "insert", "07:00", record_id=1, state="parked"),
    entry("account", "from_crm", "bbbb", "delete", "13:00", crm_id="bbbb", label="Contoso"),
]

THROUGHPUT = [
    ("11:45", "lead", "to_crm", "insert", 5),
    ("12:00", "lead", "to_crm", "insert", 3),
    ("12:15", "lead", "to_crm", "insert", 2),
    ("12:30", "lead", "to_crm", "insert", 7),
    ("12:45", "lead", "to_crm", "insert", 1),
    ("13:00", "lead", "to_crm", "insert", 4),
    ("13:15", "lead", "to_crm", "insert", 100),
    ("12:15", "lead", "from_crm", "update", 10),
    ("13:00", "account", "from_crm", "update", 6),
]


def ts(hhmmss: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-25T{hhmmss}+00:00")


# Per-minute rate rows (store.queue): minute, object, direction, synced, first and last
# synced at, first batch.
RATE = [
    # Lead to Dynamics: a drain that began at 13:19:00 after minutes of nothing; 9 synced
    # by 13:19:40, of which the first batch 1.
    ("13:19", "lead", "to_crm", 9, "13:19:00", "13:19:40", 1),
    ("13:21", "lead", "to_crm", 500, "13:21:00", "13:21:30", 100),  # after 13:20: unseen
    # Account from Dynamics: 31 from 13:18:00 to 13:18:30, the first batch 1.
    ("13:18", "account", "from_crm", 31, "13:18:00", "13:18:30", 1),
    ("13:10", "account", "from_crm", 9000, "13:10:00", "13:10:59", 10),  # before the window
]

# Backlog samples (store.maintenance): what the backlog was at each bucket.
SAMPLES = [
    ("09:00", "lead", "to_crm", 0),  # superseded by the later 10:15 sample
    ("10:15", "lead", "to_crm", 200),  # the latest at or before 13:20 - 3h = 10:20
    ("10:15", "lead", "from_crm", 5),
    ("10:15", "contact", "to_crm", 0),
    ("10:15", "account", "from_crm", 0),
    ("10:30", "lead", "to_crm", 1000),  # after 10:20: not compared with
    ("12:30", "lead", "to_crm", 999),  # after 10:20: not compared with
]


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_queue), QUEUE)
        conn.execute(
            sa.insert(sync_throughput),
            [
                {"bucket_start": t(b), "object": o, "direction": d, "operation": op, "synced": n}
                for b, o, d, op, n in THROUGHPUT
            ],
        )
        conn.execute(
            sa.insert(sync_rate),
            [
                {
                    "minute_start": t(m),
                    "object": o,
                    "direction": d,
                    "synced": n,
                    "first_synced_at": ts(first),
                    "last_synced_at": ts(last),
                    "first_batch": b,
                }
                for m, o, d, n, first, last, b in RATE
            ],
        )
        conn.execute(
            sa.insert(sync_backlog_sample),
            [
                {"sampled_at": t(b), "object": o, "direction": d, "backlog": n}
                for b, o, d, n in SAMPLES
            ],
        )


async def make_client(db_url: str, engine: Engine, zone: str = "UTC") -> httpx.AsyncClient:
    settings = load_settings(database_url=db_url, api_token=TOKEN, timezone=zone)
    app = create_app(settings, engine=engine)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


@pytest.fixture
async def client(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    seed(engine)
    async with await make_client(db_url, engine) as c:
        yield c


async def get(client: httpx.AsyncClient, url: str, **params: Any) -> dict[str, Any]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_object(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["object"]: row for row in body["objects"]}


# -- backlog ------------------------------------------------------------------------------


async def test_backlog_counts_every_object_and_excludes_parked(client):
    body = await get(client, "/api/v1/sync/status", view="backlog", at=AT)
    assert body["view"] == "backlog"
    assert body["as_of"] == iso("13:20")
    rows = by_object(body)
    assert list(rows) == ["lead", "contact", "account", "opportunity"]
    core = ("inserts", "updates", "deletes", "total", "oldest_queued_at")
    assert {k: rows["lead"][k] for k in core} == {
        "inserts": 2,
        "updates": 2,
        "deletes": 0,
        "total": 4,
        "oldest_queued_at": iso("09:30"),
    }
    zero = {"inserts": 0, "updates": 0, "deletes": 0, "total": 0, "oldest_queued_at": None}
    assert {k: rows["contact"][k] for k in core} == zero
    assert {k: rows["opportunity"][k] for k in core} == zero
    assert {k: rows["account"][k] for k in core} == {
        **zero,
        "deletes": 1,
        "total": 1,
        "oldest_queued_at": iso("13:00"),
    }
    assert body["paused"] == []


async def test_backlog_direction_filter(client):
    rows = by_object(await get(client, "/api/v1/sync/status", direction="to_crm", at=AT))
    assert (rows["lead"]["inserts"], rows["lead"]["updates"], rows["lead"]["total"]) == (2, 1, 3)
    assert rows["lead"]["oldest_queued_at"] == iso("10:00")
    assert rows["account"]["total"] == 0
    rows = by_object(await get(client, "/api/v1/sync/status", direction="from_crm", at=AT))
    assert (rows["lead"]["updates"], rows["lead"]["total"]) == (1, 1)
    assert rows["account"]["deletes"] == 1


async def test_backlog_trend_and_eta(client):
    rows = by_object(await get(client, "/api/v1/sync/status", at=AT))
    # Synced 12:20-13:20 (buckets 12:30, 12:45, 13:00, 13:15): lead 7+1+4+100 = 112.
    assert rows["lead"]["synced_last_hour"] == 112
    assert rows["account"]["synced_last_hour"] == 6
    # Time to drain, at the rate of the 5 minutes before 13:20 (sync_rate) weighted with a
    # 1-minute half-life, measured from the first sync (store.drain), each direction on
    # its own. Lead's from_crm update waits and nothing synced from_crm lately: no rate.
    assert (rows["lead"]["drain"], rows["lead"]["eta_seconds"]) == ("no_rate", None)
    # Account: 30 (31 less the first batch) in 13:18:00-13:18:30, 1/s at ages 90 to 120 s,
    # measured from 13:18:00 (120 s): (2^-1.5 - 2^-2) / (1 - 2^-2) = 0.1381/s; 1 waiting:
    # 7.2 s. The 9,000 of 13:10 are before the window.
    assert (rows["account"]["drain"], rows["account"]["eta_seconds"]) == ("estimate", 8)
    assert (rows["contact"]["drain"], rows["contact"]["eta_seconds"]) == ("empty", 0)
    # To Dynamics only: lead's 3 waiting; 8 in 13:19:00-13:19:40 (0.2/s at ages 20 to
    # 60 s) from 13:19:00 (60 s): 0.2 * (2^-1/3 - 2^-1) / (1 - 2^-1) = 0.1175/s, 25.5 s.
    # Measured from the window's start (13:15) it would read 0.0606/s and 50 s; with the
    # first batch in it, 23 s.
    to_crm = by_object(await get(client, "/api/v1/sync/status", at=AT, direction="to_crm"))
    assert (to_crm["lead"]["drain"], to_crm["lead"]["eta_seconds"]) == ("estimate", 26)
    # Paused: no time, whatever the rate.
    r = await client.post("/api/v1/sync/pause", json={"object": "lead", "direction": "to_crm"})
    assert r.status_code == 200, r.text
    to_crm = by_object(await get(client, "/api/v1/sync/status", at=AT, direction="to_crm"))
    assert (to_crm["lead"]["drain"], to_crm["lead"]["eta_seconds"]) == ("paused", None)
    body = await get(client, "/api/v1/sync/status", at=AT)
    assert body["trend_since"] == iso("10:15")
    # Lead: 205 in the 10:15 sample, 4 now: shrinking.
    assert (rows["lead"]["backlog_earlier"], rows["lead"]["trend"]) == (205, "shrinking")
    # Account: 0 then, 1 now: within 10 records, steady; contact 0 and 0.
    assert (rows["account"]["backlog_earlier"], rows["account"]["trend"]) == (0, "steady")
    assert rows["contact"]["trend"] == "steady"
    # Never sampled: no trend rather than a guess.
    assert (rows["opportunity"]["backlog_earlier"], rows["opportunity"]["trend"]) == (None, None)
    to_crm = by_object(await get(client, "/api/v1/sync/status", at=AT, direction="to_crm"))
    assert (to_crm["lead"]["backlog_earlier"], to_crm["lead"]["trend"]) == (200, "shrinking")


async def test_trend_is_null_without_a_sample_old_enough(client):
    # 3h before 11:00 is 08:00; the 09:00 sample is later, and nothing is within an hour before.
    body = await get(client, "/api/v1/sync/status", at="2026-11-25T11:00:00Z")
    assert body["trend_since"] is None
    assert {r["trend"] for r in body["objects"]} == {None}


async def test_trend_growing_without_throughput(db_url, engine):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue),
            [entry("lead", "to_crm", str(i), "insert", "13:00", record_id=i) for i in range(1, 31)],
        )
        sample = {"object": "lead", "direction": "to_crm", "backlog": 0}
        conn.execute(sa.insert(sync_backlog_sample).values(sampled_at=t("10:00"), **sample))
    async with await make_client(db_url, engine) as c:
        row = by_object(await get(c, "/api/v1/sync/status", at=AT))["lead"]
    # 30 now, 0 in the 10:00 sample.
    assert (row["total"], row["trend"], row["eta_seconds"]) == (30, "growing", None)
    assert row["drain"] == "no_rate"


async def test_several_changes_to_one_record_count_once(db_url, engine):
    async with await make_client(db_url, engine) as c:
        created = await c.post("/api/v1/records/lead", json={"email": "a@example.com"})
        lead_id = created.json()["id"]
        for name in ("A", "B", "C"):
            r = await c.patch(f"/api/v1/records/lead/{lead_id}", json={"first_name": name})
            assert r.status_code == 200
        await c.post("/api/v1/records/lead", json={"email": "b@example.com"})
        row = by_object(await get(c, "/api/v1/sync/status"))["lead"]
    # Never synced: both are inserts, the first counted once despite three updates.
    assert (row["inserts"], row["updates"], row["total"]) == (2, 0, 2)


# -- details ------------------------------------------------------------------------------


async def test_details_oldest_record_per_operation(client):
    body = await get(client, "/api/v1/sync/status/lead", at=AT)
    assert body["object"] == "lead" and body["as_of"] == iso("13:20")
    assert body["inserts"] == {
        "pending": 2,
        "oldest": {
            "record_id": 1,
            "crm_id": None,
            "label": "l1@example.com",
            "direction": "to_crm",
            "queued_at": iso("10:00"),
            "age_seconds": 3 * 3600 + 20 * 60,
        },
    }
    assert body["updates"] == {
        "pending": 2,
        "oldest": {
            "record_id": 5,
            "crm_id": "aaaa",
            "label": "old@example.com",
            "direction": "from_crm",
            "queued_at": iso("09:30"),
            "age_seconds": 3 * 3600 + 50 * 60,
        },
    }
    assert body["deletes"] == {"pending": 0, "oldest": None}
    assert body["by_direction"] == {
        "to_crm": {"inserts": 2, "updates": 1, "deletes": 0},
        "from_crm": {"inserts": 0, "updates": 1, "deletes": 0},
    }


async def test_details_of_an_empty_object(client):
    body = await get(client, "/api/v1/sync/status/contact", at=AT)
    for op in ("inserts", "updates", "deletes"):
        assert body[op] == {"pending": 0, "oldest": None}


# -- last hour and throughput ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "at", "window", "lead", "account"),
    [
        # 12:00-13:00Z: 3 + 2 + 7 + 1 + 10 (from_crm).
        ("UTC", AT, ("12:00", "13:00"), 23, 0),
        # Exactly on the hour: the hour that just ended.
        ("UTC", "2026-11-25T13:00:00Z", ("12:00", "13:00"), 23, 0),
        # A moment earlier the window is the hour before: only the 11:45 bucket.
        ("UTC", "2026-11-25T12:59:59Z", ("11:00", "12:00"), 5, 0),
        # 18:50 IST: 17:00-18:00 IST = 11:30-12:30Z: 5 + 3 + 2 + 10.
        ("Asia/Kolkata", AT, ("11:30", "12:30"), 20, 0),
        # 19:05 NPT: 18:00-19:00 NPT = 12:15-13:15Z: 2 + 10 + 7 + 1 + 4, account 6.
        ("Asia/Kathmandu", AT, ("12:15", "13:15"), 24, 6),
    ],
)
async def test_last_hour(db_url, engine, zone, at, window, lead, account):
    seed(engine)
    async with await make_client(db_url, engine, zone) as c:
        body = await get(c, "/api/v1/sync/status", view="last_hour", at=at)
    assert body["view"] == "last_hour"
    assert body["window"] == {"start": iso(window[0]), "end": iso(window[1])}
    rows = by_object(body)
    assert rows["lead"] == {
        "object": "lead",
        "inserts": None,
        "updates": None,
        "deletes": None,
        "synced": lead,
    }
    assert rows["account"]["synced"] == account
    assert rows["contact"]["synced"] == 0 and rows["opportunity"]["synced"] == 0


async def test_throughput_hourly_buckets(client):
    body = await get(client, "/api/v1/sync/throughput", hours=2, at=AT)
    assert [(b["start"], b["end"]) for b in body["buckets"]] == [
        (iso("11:00"), iso("12:00")),
        (iso("12:00"), iso("13:00")),
    ]
    first, second = (b["objects"] for b in body["buckets"])
    assert first["lead"] == {"inserts": 5, "updates": 0, "deletes": 0, "synced": 5}
    assert second["lead"] == {"inserts": 13, "updates": 10, "deletes": 0, "synced": 23}
    assert second["account"]["synced"] == 0
    assert set(second) == {"lead", "contact", "account", "opportunity"}
    only = await get(
        client, "/api/v1/sync/throughput", hours=1, object="account", at="2026-11-25T14:00:00Z"
    )
    assert only["buckets"][0]["objects"] == {
        "account": {"inserts": 0, "updates": 6, "deletes": 0, "synced": 6}
    }


# -- parameters, auth, pauses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/api/v1/sync/status", {"view": "weekly"}, "view"),
        ("/api/v1/sync/status", {"direction": "sideways"}, "direction"),
        ("/api/v1/sync/status", {"at": "yesterday"}, "at"),
        ("/api/v1/sync/status", {"at": "2026-11-25T13:00:00"}, "at"),
        ("/api/v1/sync/status/lead", {"at": "2026-13-45T00:00:00Z"}, "at"),
        # Times near datetime's limits: out of range, not an overflow (a 500).
        ("/api/v1/sync/status", {"at": "0001-01-01T00:00Z"}, "at"),
        ("/api/v1/sync/status", {"view": "last_hour", "at": "0001-01-01T00:00Z"}, "at"),
        ("/api/v1/sync/status/lead", {"at": "0001-01-01T00:00Z"}, "at"),
        ("/api/v1/sync/status/lead", {"view": "last_hour", "at": "9999-12-31T23:59Z"}, "at"),
        ("/api/v1/sync/status/lead", {"view": "last_hour", "at": "0001-01-01T00:00Z"}, "at"),
        ("/api/v1/sync/throughput", {"at": "0001-01-01T05:00+14:00"}, "at"),
        ("/api/v1/sync/throughput", {"hours": 0}, "hours"),
        ("/api/v1/sync/throughput", {"hours": 721}, "hours"),
        ("/api/v1/sync/throughput", {"hours": "many"}, "hours"),
        ("/api/v1/sync/throughput", {"object": "invoice"}, "object"),
    ],
)
async def test_bad_parameters_are_422_naming_them(client, url, params, field):
    response = await client.get(url, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_unknown_object_details_is_404(client):
    response = await client.get("/api/v1/sync/status/invoice")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_status_needs_credentials(client):
    for url in ("/api/v1/sync/status", "/api/v1/sync/status/lead", "/api/v1/sync/throughput"):
        response = await client.get(url, headers={"Authorization": ""})
        assert response.status_code == 401
    assert (
        await client.post("/api/v1/sync/pause", headers={"Authorization": ""})
    ).status_code == 401


async def test_pause_and_resume_show_on_the_status(client):
    r = await client.post("/api/v1/sync/pause", json={"object": "lead"})
    assert r.status_code == 200, r.text
    assert [(p["object"], p["direction"]) for p in r.json()["paused"]] == [("lead", "*")]
    r = await client.post("/api/v1/sync/pause", json={"direction": "from_crm"})
    assert r.status_code == 200
    await client.post("/api/v1/sync/pause", json={"direction": "from_crm"})  # idempotent
    body = await get(client, "/api/v1/sync/status", at=AT)
    assert sorted((p["object"], p["direction"]) for p in body["paused"]) == [
        ("*", "from_crm"),
        ("lead", "*"),
    ]
    body = await get(client, "/api/v1/sync/status", view="last_hour", at=AT)
    assert len(body["paused"]) == 2
    r = await client.post("/api/v1/sync/resume", json={"object": "lead"})
    assert [(p["object"], p["direction"]) for p in r.json()["paused"]] == [("*", "from_crm")]
    r = await client.post("/api/v1/sync/resume")
    assert r.json()["paused"] == []
    bad = await client.post("/api/v1/sync/pause", json={"direction": "up"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "direction"
    bad = await client.post("/api/v1/sync/pause", json={"object": "invoice"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "object"


def test_fixture_times_are_utc():
    assert t("13:20") == datetime(2026, 11, 25, 13, 20, tzinfo=UTC)
