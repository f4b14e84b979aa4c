"""The queue on real databases: leases, in-flight changes, outcomes and their records."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa

from crmsync.store import capture, queue, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.schema import (
    sync_error,
    sync_event,
    sync_pause,
    sync_queue,
    sync_record,
    sync_throughput,
)
from crmsync.store.types import utcnow

LEASE = timedelta(seconds=30)


def add_leads(engine: sa.Engine, n: int) -> None:
    with write_transaction(engine) as conn:
        for i in range(n):
            conn.execute(
                sa.text("INSERT INTO lead (email) VALUES (:e)"), {"e": f"q{i}@example.com"}
            )


def count(engine: sa.Engine, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        )


def test_claims_do_not_overlap_until_the_lease_expires(engine: sa.Engine) -> None:
    add_leads(engine, 5)
    a = queue.claim(engine, "a", "to_crm", ["lead"], 3, LEASE)
    b = queue.claim(engine, "b", "to_crm", ["lead"], 10, LEASE)
    assert len(a) == 3 and len(b) == 2
    assert not {e.id for e in a} & {e.id for e in b}
    assert queue.claim(engine, "c", "to_crm", ["lead"], 10, LEASE) == []
    # Worker a dies; once its lease runs out, anyone may take its entries.
    later = utcnow() + LEASE + timedelta(seconds=1)
    c = queue.claim(engine, "c", "to_crm", ["lead"], 10, LEASE, now=later)
    assert {e.id for e in c} == {e.id for e in a} | {e.id for e in b}


def test_release_gives_claims_back(engine: sa.Engine) -> None:
    add_leads(engine, 2)
    assert len(queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)) == 2
    assert queue.release(engine, "a") == 2
    assert len(queue.claim(engine, "b", "to_crm", ["lead"], 10, LEASE)) == 2


def test_paused_objects_are_not_claimed(engine: sa.Engine) -> None:
    add_leads(engine, 1)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_pause (object, direction, paused_at) VALUES ('lead', '*', :t)"
            ),
            {"t": utcnow().replace(tzinfo=None)},
        )
    assert queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE) == []


@pytest.mark.parametrize("folded_in_flight", [True, False])
def test_change_during_flight_keeps_the_entry_as_an_update(
    engine: sa.Engine, folded_in_flight: bool
) -> None:
    add_leads(engine, 1)
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'newer' WHERE id = :i"), {"i": entry.record_id}
        )
    if folded_in_flight:  # the entry's version moves: the finish keeps it
        capture.fold_pending(engine)
    queue.record(
        engine, queue.Outcome(done=[queue.Done(entry, crm_id="g-1", synced_values={"email": "q0"})])
    )
    capture.fold_pending(engine)  # otherwise the entry went, and the fold queues it again
    with engine.connect() as conn:
        left = conn.execute(sa.select(sync_queue)).mappings().one()
    assert (left["operation"], left["crm_id"], left["claimed_by"]) == ("update", "g-1", None)
    assert count(engine, sync_record) == 1


def test_success_counts_throughput_and_resolves_errors(engine: sa.Engine) -> None:
    add_leads(engine, 2)
    first, second = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(first, "0x80044331", "too long")]))
    assert count(engine, sync_error, sync_error.c.status == "open") == 1
    assert count(engine, sync_queue, sync_queue.c.state == "parked") == 1
    # Parked entries are not claimed again until a new change or a retry.
    later = utcnow() + timedelta(hours=1)
    claimed = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE, now=later)
    assert [e.id for e in claimed] == [second.id]
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'fixed' WHERE id = :i"), {"i": first.record_id}
        )
    (again,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE, now=later)
    assert again.id == first.id and again.attempts == 0
    queue.record(
        engine,
        queue.Outcome(done=[queue.Done(again, crm_id="g-1"), queue.Done(second, crm_id="g-2")]),
    )
    assert count(engine, sync_queue) == 0
    assert count(engine, sync_error, sync_error.c.status == "resolved") == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(sync_throughput.c.synced))).scalar() == 2


def test_transient_failure_reschedules_and_repeated_park_updates_one_error(
    engine: sa.Engine,
) -> None:
    add_leads(engine, 1)
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    retry_at = utcnow() + timedelta(minutes=5)
    queue.record(
        engine, queue.Outcome(failed=[queue.Failed(entry, "http_503", "busy", retry_at=retry_at)])
    )
    assert queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE) == []
    (entry,) = queue.claim(
        engine, "a", "to_crm", ["lead"], 10, LEASE, now=retry_at + timedelta(seconds=1)
    )
    assert entry.attempts == 1
    for _ in range(2):
        queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x80040333", "duplicate")]))
    with engine.connect() as conn:
        err = conn.execute(sa.select(sync_error)).mappings().one()
    assert err["status"] == "open" and err["error_code"] == "0x80040333"
    assert err["record_label"] == "q0@example.com" and err["operation"] == "insert"


def pause(engine: sa.Engine, obj: str, direction: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.insert(sync_pause).values(object=obj, direction=direction, paused_at=utcnow())
        )


def test_a_pause_holds_back_only_the_scopes_it_names(engine: sa.Engine) -> None:
    add_leads(engine, 1)
    pause(engine, "lead", "from_crm")
    pause(engine, "contact", "*")
    (entry,) = queue.claim(engine, "a", "to_crm", ["contact", "lead"], 10, LEASE)
    assert entry.object == "lead"
    assert queue.release(engine, "a") == 1
    pause(engine, "*", "to_crm")
    assert queue.claim(engine, "a", "to_crm", ["contact", "lead"], 10, LEASE) == []


def open_errors(engine: sa.Engine) -> int:
    return count(engine, sync_error, sync_error.c.status == "open")


def test_an_error_left_by_a_dropped_entry_resolves_when_a_new_entry_syncs(
    engine: sa.Engine,
) -> None:
    # The failed entry is dropped without syncing (as a pull that makes the push moot
    # drops it); a later change queues a fresh entry, which never failed itself.
    add_leads(engine, 1)
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x80044331", "too long")]))
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(sync_queue))
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'fixed' WHERE id = :i"), {"i": entry.record_id}
        )
    (fresh,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    assert fresh.attempts == 0
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        queue.record(engine, queue.Outcome(done=[queue.Done(fresh, crm_id="g-1")]))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert open_errors(engine) == 0 and count(engine, sync_queue) == 0
    if engine.dialect.name == "postgresql":
        # Besides the record's sync state, one statement finishes the batch, its
        # events (store/history.py) included.
        assert [s.split()[0] for s in statements] == ["INSERT", "WITH"]
        assert "INSERT INTO sync_event" in statements[-1]


def test_a_retried_error_resolves_when_its_entry_syncs(engine: sa.Engine) -> None:
    add_leads(engine, 2)
    first, second = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    queue.record(
        engine,
        queue.Outcome(
            failed=[queue.Failed(first, "0x80044331", "too long")],
            done=[queue.Done(second, crm_id="g-2")],
        ),
    )
    with write_transaction(engine) as conn:
        error_id = conn.execute(sa.select(sync_error.c.id)).scalar_one()
        assert sync_errors.retry_ids(conn, [error_id])["requeued"] == 1
    (again,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    assert again.id == first.id and again.attempts == 0  # counted afresh, yet it failed
    queue.record(engine, queue.Outcome(done=[queue.Done(again, crm_id="g-1")]))
    assert open_errors(engine) == 0 and count(engine, sync_queue) == 0


@pytest.mark.parametrize("folded_in_flight", [True, False])
def test_an_error_resolves_when_its_entry_changed_in_flight(
    engine: sa.Engine, folded_in_flight: bool
) -> None:
    add_leads(engine, 1)
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x80044331", "too long")]))
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'fixed' WHERE id = :i"), {"i": entry.record_id}
        )
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'newer' WHERE id = :i"), {"i": entry.record_id}
        )
    if folded_in_flight:
        capture.fold_pending(engine)
    queue.record(engine, queue.Outcome(done=[queue.Done(entry, crm_id="g-1")]))
    assert open_errors(engine) == 0
    capture.fold_pending(engine)
    with engine.connect() as conn:
        left = conn.execute(sa.select(sync_queue)).mappings().one()
    assert (left["state"], left["operation"], left["claimed_by"]) == ("pending", "update", None)


def test_one_batch_counts_each_operation_and_skips_uncounted(engine: sa.Engine) -> None:
    add_leads(engine, 4)
    a, b, c, d = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    deleted = dataclasses.replace(b, operation="delete")
    queue.record(
        engine,
        queue.Outcome(
            done=[
                queue.Done(a, crm_id="g-1"),
                queue.Done(deleted),
                queue.Done(c, crm_id="g-3"),
                queue.Done(d, counted=False),
            ]
        ),
    )
    queue.record(engine, queue.Outcome())  # nothing to record: no statement fails
    with engine.connect() as conn:
        counted = dict(
            conn.execute(sa.select(sync_throughput.c.operation, sync_throughput.c.synced)).all()
        )
    assert counted == {"insert": 2, "delete": 1}
    assert count(engine, sync_queue) == 0


def test_a_claim_asks_for_at_least_one_entry(engine: sa.Engine) -> None:
    add_leads(engine, 1)
    assert queue.claim(engine, "a", "to_crm", ["lead"], 0, LEASE) == []
    assert queue.claim(engine, "a", "to_crm", [], 10, LEASE) == []
    assert len(queue.claim(engine, "a", "to_crm", ["lead"], 1, LEASE)) == 1


def test_a_batch_with_nothing_to_count_leaves_the_counters_alone(engine: sa.Engine) -> None:
    add_leads(engine, 2)
    entries = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, queue.Outcome(done=[queue.Done(e, counted=False) for e in entries]))
    assert count(engine, sync_queue) == 0 and count(engine, sync_throughput) == 0


def test_a_change_made_in_flight_is_not_parked_with_the_failure_of_the_one_sent(
    engine: sa.Engine,
) -> None:
    add_leads(engine, 1)
    (entry,) = queue.claim(engine, "a", "to_crm", ["lead"], 10, LEASE)
    # While it is being sent, the record is fixed locally (and the fix folded).
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'fixed' WHERE id = :i"), {"i": entry.record_id}
        )
    capture.fold_pending(engine)
    queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x80044331", "too long")]))
    with engine.connect() as conn:
        left = conn.execute(sa.select(sync_queue)).mappings().one()
    # The failure is visible, and the fix is still on its way (not parked behind it).
    assert count(engine, sync_error, sync_error.c.status == "open") == 1
    assert (left["state"], left["claimed_by"], left["version"]) == ("pending", None, 2)
    with engine.connect() as conn:
        said = conn.execute(
            sa.select(sync_event.c.event)
            .where(sync_event.c.event != "captured")
            .order_by(sync_event.c.id)
        ).scalars()
        assert list(said) == ["failed", "retry_scheduled"]  # not parked
    (again,) = queue.claim(engine, "b", "to_crm", ["lead"], 10, LEASE)
    assert again.id == entry.id
    queue.record(engine, queue.Outcome(done=[queue.Done(again, crm_id="g-1")]))
    assert count(engine, sync_queue) == 0
    assert count(engine, sync_error, sync_error.c.status == "resolved") == 1
