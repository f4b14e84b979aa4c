"""A pull parked for a missing parent is queued again by the parent's arrival, in the
transaction that inserts it, on SQLite and PostgreSQL: through an apply's insert and a
full read's load. Only the children of the parents that arrived, parked for that reason,
with an open error, are woken; each gets a ``retried`` event by ``parent_arrived``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.store import history, inbound, parents
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_error, sync_queue

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PARENT = "aaaaaaaa-0000-4000-8000-000000000001"
OTHER = "aaaaaaaa-0000-4000-8000-000000000002"


def child(key: str, parent: str, code: str = "crmsync.missing_parent", status: str = "open"):
    """A contact pulled from Dynamics, parked: its queue entry and its error."""
    entry = {
        "object": "contact", "direction": "from_crm", "record_key": key, "record_id": None,
        "crm_id": key, "operation": "insert", "state": "parked", "attempts": 1,
        "first_queued_at": NOW, "last_changed_at": NOW, "next_attempt_at": NOW,
        "last_error_code": code, "version": 1,
        "payload": {"values": {"last_name": key}, "lookups": {"account_id": parent}},
    }  # fmt: skip
    error = {
        "object": "contact", "direction": "from_crm", "record_key": key, "crm_id": key,
        "operation": "insert", "error_code": code, "error_message": "m", "status": status,
        "first_failed_at": NOW, "last_failed_at": NOW, "category": "missing_reference",
        "field": "account_id", "retry_at": NOW + timedelta(hours=1),
    }  # fmt: skip
    return entry, error


def seed(engine: Engine) -> None:
    rows = [
        child("c0000000-0000-4000-8000-000000000001", PARENT.upper()),  # woken
        child("c0000000-0000-4000-8000-000000000002", OTHER),  # another parent
        child("c0000000-0000-4000-8000-000000000003", PARENT, code="0x80040237"),
        child("c0000000-0000-4000-8000-000000000004", PARENT, status="dismissed"),
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_queue), [e for e, _ in rows])
        conn.execute(sa.insert(sync_error), [x for _, x in rows])


def states(engine: Engine) -> dict[str, tuple[Any, ...]]:
    q, e = sync_queue.c, sync_error.c
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(q.record_key, q.state, q.attempts, q.next_attempt_at, e.retry_at).join(
                sync_error, (e.object == q.object) & (e.record_key == q.record_key)
            )
        ).all()
    return {r[0][-1]: (r[1], r[2], r[3] == NOW, r[4] is None) for r in found}


WOKEN = {
    "1": ("pending", 0, True, True),  # due now, attempts started over, no retry planned
    "2": ("parked", 1, True, False),
    "3": ("parked", 1, True, False),
    "4": ("parked", 1, True, False),
}


def retried(engine: Engine) -> list[tuple[str, Any, Any]]:
    key = "c0000000-0000-4000-8000-000000000001"
    with engine.connect() as conn:
        items = history.timeline(conn, "contact", 0, key, limit=10)["items"]
    return [(e["event"], e["operation"], e["detail"]) for e in items]


def test_an_applied_parent_wakes_its_waiting_children(engine: Engine) -> None:
    seed(engine)
    specs = Settings().object_specs()
    with write_transaction(engine) as conn:
        assert parents.arrived(conn, specs, "account", [PARENT], NOW) == 1
        assert parents.arrived(conn, specs, "contact", [PARENT], NOW) == 0  # no child
        assert parents.arrived(conn, specs, "account", [None], NOW) == 0
    assert states(engine) == WOKEN
    assert retried(engine) == [("retried", "insert", {"by": "parent_arrived"})]


def test_a_full_reads_new_parent_wakes_its_waiting_children(engine: Engine) -> None:
    seed(engine)
    spec = Settings().object_specs()["account"]
    sqlite = engine.dialect.name == "sqlite"
    with write_transaction(engine) as conn:
        times = inbound.stored_times(["2026-11-25T11:00:00Z"], sqlite)
        ok = inbound.insert_loaded(
            conn, spec, ["name"], [("Brand new", PARENT)], [(PARENT, None, 7, times[0])], NOW
        )
        assert ok
    assert states(engine) == WOKEN
    assert retried(engine) == [("retried", "insert", {"by": "parent_arrived"})]


def test_a_rolled_back_arrival_wakes_nobody(engine: Engine) -> None:
    seed(engine)
    specs = Settings().object_specs()
    try:
        with write_transaction(engine) as conn:
            parents.arrived(conn, specs, "account", [PARENT], NOW)
            raise RuntimeError("the apply failed")
    except RuntimeError:
        pass
    assert states(engine)["1"] == ("parked", 1, True, False)
    assert retried(engine) == []
