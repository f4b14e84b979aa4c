"""Resync and audit over the API, the jobs store and the requeue path, on both backends.

Dry runs need Dynamics and are tested end to end (``tests/e2e/test_audit_drift.py``);
here: validation (clear 4xx, never a 500), jobs queued, listed and cancelled, the last
audit's findings in ``GET /audit`` and ``/metrics``, credentials, and ``queue_again``
making one ordinary queue entry per record however often a record is queued.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.domain import Direction, JobKind, JobState
from crmsync.store import audit, capture, jobs, requeue
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_queue
from crmsync.values import LocalRef
from crmsync.web.app import create_app

TOKEN = "jobs-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(db_url: str, engine: Engine) -> Any:
    return create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)


async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=AUTH
    ) as c:
        return await c.request(method, path, **kwargs)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"object": "nope"}, "object"),
        ({"object": "lead", "direction": "sideways"}, "direction"),
        ({"object": "account", "direction": "to_crm"}, "direction"),  # pulls only
        ({"object": "lead", "ids": [1], "since": "2026-11-01T00:00:00Z"}, "ids"),
        ({"object": "lead", "ids": ["x"]}, "ids"),
        ({"object": "lead", "ids": [-3]}, "ids"),
        ({"object": "lead", "since": "yesterday"}, "since"),
        ({"object": "lead", "since": "2026-11-02T00:00Z", "until": "2026-11-01T00:00Z"}, "until"),
        ({"object": "lead", "surprise": 1}, "surprise"),
    ],
)
async def test_bad_resync_requests_are_refused_with_the_field(
    app: Any, body: dict[str, Any], field: str
) -> None:
    resp = await call(app, "POST", "/api/v1/sync/resync", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.text


async def test_resync_queues_a_job_that_can_be_listed_and_cancelled(app: Any) -> None:
    body = {"object": "lead", "since": "2026-11-01T00:00:00Z"}
    resp = await call(app, "POST", "/api/v1/sync/resync", json=body)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert (job["kind"], job["object"], job["direction"], job["state"]) == (
        "resync",
        "lead",
        "to_crm",
        "queued",
    )
    listed = (await call(app, "GET", "/api/v1/sync/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    cancelled = await call(app, "POST", f"/api/v1/sync/jobs/{job['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    assert (await call(app, "GET", "/api/v1/sync/jobs/999999")).status_code == 404
    audit_job = await call(app, "POST", "/api/v1/sync/audit", json={"repair": True})
    assert audit_job.status_code == 202 and audit_job.json()["params"] == {"repair": True}
    bad = await call(app, "POST", "/api/v1/sync/audit", json={"object": "nope"})
    assert bad.status_code == 422


async def test_state_changes_need_credentials(app: Any) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        resp = await c.post("/api/v1/sync/resync", json={"object": "lead"})
        assert resp.status_code == 401
        assert (await c.get("/api/v1/sync/audit")).status_code == 401


def _finding(obj: str, job_id: int, **figures: int) -> dict[str, Any]:
    now = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    return {
        "object": obj,
        "job_id": job_id,
        "checked": figures.get("checked", 10),
        "only_local": figures.get("only_local", 0),
        "only_dynamics": figures.get("only_dynamics", 0),
        "different": figures.get("different", 0),
        "repaired": 0,
        "samples": [{"kind": "only_local", "crm_id": None, "record_id": 7}],
        "started_at": now,
        "finished_at": now + timedelta(seconds=3),
    }


async def test_last_audit_in_the_api_and_metrics(app: Any, engine: Engine) -> None:
    with write_transaction(engine) as conn:
        audit.save_result(conn, _finding("lead", 1, only_local=2, different=1))
        audit.save_result(conn, _finding("lead", 2, only_local=1))  # the later one wins
        audit.save_result(conn, _finding("contact", 2, only_dynamics=4))
    found = (await call(app, "GET", "/api/v1/sync/audit")).json()["objects"]
    by = {f["object"]: f for f in found}
    assert set(by) == {"lead", "contact"}
    assert (by["lead"]["only_local"], by["lead"]["different"], by["lead"]["job_id"]) == (1, 0, 2)
    assert by["contact"]["only_dynamics"] == 4
    assert by["lead"]["started_at"] == "2026-12-02T04:00:00Z"
    text = (await call(app, "GET", "/metrics")).text
    assert 'crmsync_drift_records{kind="only_local",object="lead"} 1.0' in text
    assert 'crmsync_drift_records{kind="only_dynamics",object="contact"} 4.0' in text


def test_queue_again_makes_one_ordinary_entry_per_record(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('a@x.org', 'A')"))
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('b@x.org', 'B')"))
    capture.fold_pending(engine)
    now = datetime.now(UTC)
    for _ in range(2):
        with write_transaction(engine) as conn:
            refs = [
                LocalRef(1),
                LocalRef(2),
                LocalRef(9, "8e5ded7d-62fa-4f3f-9191-ee067ee0527e", deleted=True),
            ]
            assert requeue.queue_again(conn, "lead", to_crm=refs, now=now) == 3
    capture.fold_pending(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(sync_queue.c.record_key, sync_queue.c.operation, sync_queue.c.state)
            .where(sync_queue.c.direction == Direction.TO_CRM)
            .order_by(sync_queue.c.record_key)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("1", "insert", "pending"),
        ("2", "insert", "pending"),
        ("9", "delete", "pending"),
    ]


def test_a_job_claimed_by_a_dead_process_is_claimed_again_after_its_lease(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        job = jobs.create(conn, JobKind.RESYNC, "lead", Direction.TO_CRM, {"ids": [1]})
    lease = timedelta(seconds=30)
    first = jobs.claim(engine, "dead", lease)
    assert first is not None and first.state is JobState.RUNNING
    assert jobs.claim(engine, "other", lease) is None  # the lease holds
    later = datetime.now(UTC) + timedelta(seconds=31)
    again = jobs.claim(engine, "other", lease, now=later)
    assert again is not None and again.id == job.id
    with write_transaction(engine) as conn:
        # The dead process's late write is refused: it no longer holds the job.
        assert not jobs.advance(conn, first, "dead", {"after": 5}, done=1, lease=lease)
        assert jobs.advance(conn, again, "other", {"after": 5}, done=1, lease=lease)
    with engine.connect() as conn:
        assert jobs.get(conn, job.id).position == {"after": 5}


def test_the_daily_audit_is_asked_for_once_a_day(engine: Engine) -> None:
    day = timedelta(days=1)
    now = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    first = jobs.schedule_audit(engine, day, now=now)
    assert first is not None and first.kind is JobKind.AUDIT and first.object is None
    assert jobs.schedule_audit(engine, day, now=now + timedelta(hours=1)) is None
    # Still waiting a day later: not asked for twice.
    assert jobs.schedule_audit(engine, day, now=now + timedelta(days=2)) is None
    with write_transaction(engine) as conn:
        jobs.cancel(conn, first.id)
    assert jobs.schedule_audit(engine, day, now=now + timedelta(hours=23)) is None
    later = jobs.schedule_audit(engine, day, now=now + timedelta(hours=25))
    assert later is not None and later.id != first.id


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("big", [2**63, str(2**70)])
async def test_an_id_beyond_the_store_s_range_is_refused(
    app: Any, dry_run: bool, big: int | str
) -> None:
    """A local id no table can hold is a 422 naming ``ids``, not a 500 (dry run) nor a
    job that fails in the store every time a worker claims it."""
    body = {"object": "lead", "ids": [big], "dry_run": dry_run}
    resp = await call(app, "POST", "/api/v1/sync/resync", json=body)
    assert resp.status_code == 422, resp.text
    assert "ids" in resp.text


@pytest.mark.parametrize("state", [JobState.CANCELLED, JobState.FAILED, JobState.DONE])
def test_an_audit_ended_any_way_leaves_no_first_pass_behind(
    engine: Engine, state: JobState
) -> None:
    """The ids an audit read from Dynamics are its own: an audit cancelled or failed
    mid-way must not leave them in ``sync_audit_seen`` for ever (a full table's worth
    per object, each time)."""
    from crmsync.store.schema import sync_audit_seen

    with write_transaction(engine) as conn:
        job = jobs.create(conn, JobKind.AUDIT, "lead", None, {"repair": False})
    held = jobs.claim(engine, "auditor", timedelta(seconds=30))
    assert held is not None and held.id == job.id
    with write_transaction(engine) as conn:
        seen = [
            {"crm_id": f"8e5ded7d-62fa-4f3f-9191-ee067ee0527{i}", "version": i, "excluded": False}
            for i in range(3)
        ]
        audit.save_seen(conn, job.id, "lead", seen)
    jobs.finish(engine, held, "auditor", state)
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(sync_audit_seen)).scalar()
        assert jobs.get(conn, job.id).state is state
    assert left == 0
