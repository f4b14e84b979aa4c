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

import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.engine import changes as ch
from crmsync.engine.apply import Applier
from crmsync.engine.pull import entry_row
from crmsync.store import capture, queue, sync_errors
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.inbound import exclude, stage
from crmsync.store.schema import sync_change, sync_error, sync_queue
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
        # The local insert's push (still in the capture log): not what is tested.
        conn.execute(sa.delete(sync_change))
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


@pytest.mark.parametrize("dynamics", ["wins_every_field", "deleted_and_marked"])
def test_a_moot_local_change_still_in_the_capture_log_is_not_sent(
    engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, dynamics: str
) -> None:
    """A local change committed after the apply's own fold is read from the log as a
    push. If applying makes it moot, its log rows go with it: folded later, they would
    send Dynamics' own values back (an echo), or update a record deleted there."""
    rules = {"lead": {"conflict_rule": "crm_wins"}}
    behaviour = "mark" if dynamics == "deleted_and_marked" else settings.delete_behaviour
    settings = settings.model_copy(update={"delete_behaviour": behaviour})
    settings.objects = load_settings(database_url=settings.database_url, objects=rules).objects
    spec = settings.object_specs()["lead"]
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(
            sa.text("INSERT INTO lead (email, last_name, crm_id) VALUES ('m@x', 'Old', :c)"),
            {"c": CRM_ID},
        )
        conn.execute(
            sa.text(
                "INSERT INTO sync_record (object, record_id, crm_id, etag, crm_version,"
                " last_synced_at, synced_values) VALUES ('lead', 1, :c, 'W/\"5\"', 5,"
                " CURRENT_TIMESTAMP, :v)"
            ),
            {"c": CRM_ID, "v": '{"email": "m@x", "last_name": "Old"}'},
        )
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'Local' WHERE id = 1"))
    if dynamics == "wins_every_field":
        later = (utcnow() + timedelta(minutes=5)).isoformat()
        change = ch.Change(
            crm_id=CRM_ID,
            values={"last_name": "Crm", "email": "m@x"},
            lookups={},
            version=7,
            etag='W/"7"',
            modified_at=later,
        )
        operation = "update"
    else:
        change = ch.Change(crm_id=CRM_ID, values={}, lookups={}, deleted=True)
        operation = "delete"
    with write_transaction(engine) as conn:
        stage(conn, [entry_row(spec, change, operation, None, utcnow())])
    entries = queue.claim(engine, "w", "from_crm", ["lead"], 10, LEASE)
    with monkeypatch.context() as m:
        m.setattr(capture, "fold_pending", lambda *a, **k: 0)  # committed after the fold
        Applier(engine, settings, "w").apply_claimed(entries)
    capture.fold_pending(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_change)).scalar() == 0
