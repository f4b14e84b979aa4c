"""Two workers holding one queue entry after a lease ran out, interleaved by hand.

A lease (``CRMSYNC_LEASE_SECONDS``) can run out while its worker is still busy with the
batch (a stalled or starved process); another worker may then claim the same entries.
Each test claims as worker ``a``, lets ``b`` claim the same entry with a clock past the
lease, and runs the two workers' steps in the order that used to go wrong:

- push: ``b`` chooses and saves a Dynamics id for a new record, then ``a`` plans its
  stale claim. ``a`` used to choose a second id (its save was a no-op) and send it:
  the record was created twice in Dynamics.
- apply (PostgreSQL, where two workers write at once): ``b`` is applying a new record
  from Dynamics, its transaction still open, when ``a`` applies its stale claim. ``a``
  used to insert the record too, wait on the unique ``crm_id``, be refused once ``b``
  committed, and park the record as a sync error although it was fine. On SQLite the
  write lock puts ``a`` after ``b``, where it finds the record and skips it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.config import Settings
from crmsync.engine import changes as ch
from crmsync.engine.apply import Applier
from crmsync.engine.plan import Send
from crmsync.engine.pull import entry_row
from crmsync.engine.push import Pusher
from crmsync.store import queue
from crmsync.store.db import write_transaction
from crmsync.store.inbound import stage
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.types import utcnow

LEASE = timedelta(seconds=30)
CRM_ID = "0b7c6c32-5d0e-4f3e-9a57-3f0e2f8b1c11"


def claim_twice(engine: sa.Engine, direction: str) -> tuple[list[queue.Entry], list[queue.Entry]]:
    """``a`` claims; its lease runs out; ``b`` claims the same entry."""
    a = queue.claim(engine, "a", direction, ["lead"], 10, LEASE)
    later = utcnow() + LEASE + timedelta(seconds=1)
    b = queue.claim(engine, "b", direction, ["lead"], 10, LEASE, now=later)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 1
    return a, b


def test_a_stale_push_claim_sends_the_id_the_other_worker_chose(
    engine: sa.Engine, settings: Settings
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('twice@example.com')"))
    a_entries, b_entries = claim_twice(engine, "to_crm")
    a = Pusher(engine, None, settings, "a")  # type: ignore[arg-type]  # plans only
    b = Pusher(engine, None, settings, "b")  # type: ignore[arg-type]
    [b_step] = b._plan(b_entries)
    [a_step] = a._plan(a_entries)
    assert isinstance(a_step, Send) and isinstance(b_step, Send)
    assert a_step.write.op == b_step.write.op == "upsert"
    assert a_step.crm_id == b_step.crm_id  # one record in Dynamics, sent twice at worst
    assert a_step.write.record_id == b_step.crm_id
    with engine.connect() as conn:
        saved = conn.execute(sa.select(sync_queue.c.crm_id)).scalar_one()
    assert saved == b_step.crm_id


def test_a_stale_push_claim_of_a_finished_entry_sends_nothing(
    engine: sa.Engine, settings: Settings
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('gone@example.com')"))
    a_entries, b_entries = claim_twice(engine, "to_crm")
    b = Pusher(engine, None, settings, "b")  # type: ignore[arg-type]
    [b_step] = b._plan(b_entries)
    assert isinstance(b_step, Send)
    # b finishes and removes the entry between a's read of the lead (no crm_id yet)
    # and a's save of its chosen id: a must not send a record under a second id.
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(sync_queue))
    a = Pusher(engine, None, settings, "a")  # type: ignore[arg-type]
    assert a._plan(a_entries) == []


def stage_new_lead(engine: sa.Engine, settings: Settings) -> None:
    spec = settings.object_specs()["lead"]
    change = ch.Change(
        crm_id=CRM_ID,
        values={"email": "crm@example.com", "last_name": "FromCrm"},
        lookups={},
        version=1_000_001,
        etag='W/"1000001"',
    )
    with write_transaction(engine) as conn:
        stage(conn, [entry_row(spec, change, "insert", None, utcnow())])


class PausedApplier(Applier):
    """Stops inside its transaction, its writes done, until told to go on."""

    reached = threading.Event()
    go = threading.Event()

    def _run(self, conn: Connection, steps: Sequence[Any], now: datetime) -> queue.Outcome:
        outcome = super()._run(conn, steps, now)
        self.reached.set()
        assert self.go.wait(30)
        return outcome


def waiting_on_a_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
        )


def test_a_stale_apply_claim_is_not_applied_twice(engine: sa.Engine, settings: Settings) -> None:
    stage_new_lead(engine, settings)
    a_entries, b_entries = claim_twice(engine, "from_crm")
    a = Applier(engine, settings, "a")
    if engine.dialect.name == "sqlite":
        Applier(engine, settings, "b").apply_claimed(b_entries)
        a.apply_claimed(a_entries)
    else:
        b = PausedApplier(engine, settings, "b")
        b.reached.clear(), b.go.clear()
        tb = threading.Thread(target=b.apply_claimed, args=(b_entries,))
        tb.start()
        assert b.reached.wait(30)
        ta = threading.Thread(target=a.apply_claimed, args=(a_entries,))
        ta.start()
        # Let b commit once a has either finished or is stuck behind b's insert.
        deadline = time.monotonic() + 30
        while ta.is_alive() and not waiting_on_a_lock(engine):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        b.go.set()
        tb.join(30), ta.join(30)
        assert not tb.is_alive() and not ta.is_alive()
    with engine.connect() as conn:
        leads = conn.execute(sa.text("SELECT crm_id, last_name FROM lead")).all()
        errors = conn.execute(sa.select(sync_error.c.error_code)).scalars().all()
        left = conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar_one()
    assert leads == [(CRM_ID, "FromCrm")]
    assert errors == []
    assert left == 0
    assert a.stats.parked == 0 and a.stats.applied == 0


def test_an_apply_claim_still_held_is_applied(engine: sa.Engine, settings: Settings) -> None:
    # The fence must not drop a worker's own live claim (the common case).
    stage_new_lead(engine, settings)
    entries = queue.claim(engine, "a", "from_crm", ["lead"], 10, LEASE)
    Applier(engine, settings, "a").apply_claimed(entries)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT crm_id FROM lead")).scalars().all() == [CRM_ID]
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
