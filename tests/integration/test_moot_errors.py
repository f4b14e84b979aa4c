"""A failed change dropped because nothing is left to do takes its error with it.

- Applying a Dynamics delete makes the record's waiting push moot, a parked one
  included: the entry goes, and its open error is resolved (the record is gone on both
  sides).
- The sync filter excluding a record drops its Dynamics change still waiting, one
  retried from the error list included: nothing is left to retry, so its error is
  resolved.
- An error whose entry stays is never resolved this way: every parked entry keeps an
  open error.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.engine import changes as ch
from crmsync.engine.apply import Applier
from crmsync.engine.pull import entry_row, exclude, stage
from crmsync.store import queue, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.types import utcnow

CRM_ID = "5e1f0c2a-7b7d-4c35-9a57-3f0e2f8b1c22"
LEASE = timedelta(seconds=30)


def park_a_push(engine: sa.Engine, email: str, crm_id: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES (:e, :c)"), {"e": email, "c": crm_id}
        )
    [entry] = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x80044331", "too long")]))


def delete_in_dynamics(engine: sa.Engine, settings: Settings, crm_id: str) -> None:
    spec = settings.object_specs()["lead"]
    change = ch.Change(crm_id=crm_id, values={}, lookups={}, deleted=True)
    with write_transaction(engine) as conn:
        stage(conn, [entry_row(spec, change, "delete", None, utcnow())])
    entries = queue.claim(engine, "w", "from_crm", ["lead"], 10, LEASE)
    Applier(engine, settings, "w").apply_claimed(entries)


def errors(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_error.c.direction, sync_error.c.status))
        return sorted((r.direction, r.status) for r in rows)


def test_a_dynamics_delete_resolves_the_error_of_the_push_it_makes_moot(
    engine: sa.Engine, settings: Settings
) -> None:
    park_a_push(engine, "moot@example.com", CRM_ID)
    assert errors(engine) == [("to_crm", "open")]

    delete_in_dynamics(engine, settings, CRM_ID)

    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 0
    assert errors(engine) == [("to_crm", "resolved")]


def test_an_error_whose_entry_stays_stays_open(engine: sa.Engine, settings: Settings) -> None:
    park_a_push(engine, "kept@example.com", CRM_ID)
    other = "5e1f0c2a-7b7d-4c35-9a57-3f0e2f8b1c23"
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('x@example.com', :c)"), {"c": other}
        )
    delete_in_dynamics(engine, settings, other)  # another record's delete
    assert errors(engine) == [("to_crm", "open")]
    with engine.connect() as conn:
        states = conn.execute(sa.select(sync_queue.c.state, sync_queue.c.record_key)).all()
    assert [s for s, _ in states] == ["parked"]


def test_excluding_a_record_resolves_the_error_of_its_dropped_change(
    engine: sa.Engine, settings: Settings
) -> None:
    spec = settings.object_specs()["lead"]
    with write_transaction(engine) as conn:
        record_id = conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('ex@example.com', :c) RETURNING id"),
            {"c": CRM_ID},
        ).scalar_one()
        conn.execute(sa.delete(sync_queue))  # the local insert's push: not what is tested
    change = ch.Change(crm_id=CRM_ID, values={"last_name": "Crm"}, lookups={}, version=7)
    with write_transaction(engine) as conn:
        stage(conn, [entry_row(spec, change, "update", None, utcnow())])
    [entry] = queue.claim(engine, "w", "from_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "local_constraint", "no")]))
    with write_transaction(engine) as conn:
        [error_id] = conn.execute(sa.select(sync_error.c.id)).scalars()
        sync_errors.retry_ids(conn, [error_id])  # back in the backlog, error open till then
    assert errors(engine) == [("from_crm", "open")]

    known = {CRM_ID: ch.Known(record_id=record_id, synced_values={"last_name": "Old"})}
    with write_transaction(engine) as conn:
        exclude(conn, spec, known, utcnow())

    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
    assert errors(engine) == [("from_crm", "resolved")]
