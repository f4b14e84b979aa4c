"""A push parked for a missing reference is queued again by its parent's sync, in the
transaction that records the parent as synced, on SQLite and PostgreSQL. Only the
children of the parents that synced, parked for that reason (crmsync's own code or
Dynamics' "does not exist"), with an open error, are woken; each gets a ``retried``
event by ``parent_arrived`` and its planned automatic retry is cleared."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings, load_settings
from crmsync.store import history, parents
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_error, sync_queue

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
REFERENCE = ("crmsync.missing_reference", "contact {id} refers to account 1, which is not")
NOT_FOUND = ("0x80040217", "account With Id = 2b0c Does Not Exist")
TOO_LONG = ("0x80044331", "The length of the 'lastname' attribute exceeded")

# contact id -> (its account, its error's code and message, category, field, status)
CHILDREN: dict[int, tuple[int, tuple[str, str], str, str | None, str]] = {
    1: (1, REFERENCE, "missing_reference", "account_id", "open"),  # woken
    2: (1, NOT_FOUND, "missing_reference", None, "open"),  # woken: Dynamics' answer
    3: (2, REFERENCE, "missing_reference", "account_id", "open"),  # another account
    4: (1, TOO_LONG, "data_too_long", "last_name", "open"),  # a data error
    5: (1, REFERENCE, "missing_reference", "account_id", "dismissed"),
    6: (1, REFERENCE, "missing_reference", "email", "open"),  # about another field
}


def seed(engine: Engine) -> None:
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(sa.text("INSERT INTO account (id, name) VALUES (1, 'Parked'), (2, 'Other')"))
        for cid, (account, (code, message), category, field, status) in CHILDREN.items():
            conn.execute(
                sa.text(
                    "INSERT INTO contact (id, email, last_name, account_id)"
                    " VALUES (:id, :e, 'L', :a)"
                ),
                {"id": cid, "e": f"c{cid}@example.com", "a": account},
            )
            conn.execute(
                sa.insert(sync_queue).values(
                    object="contact", direction="to_crm", record_key=str(cid), record_id=cid,
                    operation="insert", state="parked", attempts=3, first_queued_at=NOW,
                    last_changed_at=NOW, next_attempt_at=NOW, last_error_code=code, version=1,
                )
            )  # fmt: skip
            conn.execute(
                sa.insert(sync_error).values(
                    object="contact", direction="to_crm", record_key=str(cid), record_id=cid,
                    operation="insert", error_code=code, error_message=message.format(id=cid),
                    status=status, first_failed_at=NOW, last_failed_at=NOW,
                    category=category, field=field, retry_at=LATER,
                )
            )  # fmt: skip


def states(engine: Engine) -> dict[int, tuple[Any, ...]]:
    """contact id -> (state, attempts, due now, automatic retry cleared)."""
    q, e = sync_queue.c, sync_error.c
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(q.record_id, q.state, q.attempts, q.next_attempt_at, e.retry_at).join(
                sync_error, (e.object == q.object) & (e.record_key == q.record_key)
            )
        ).all()
    return {r[0]: (r[1], r[2], r[3] == LATER, r[4] is None) for r in found}


UNTOUCHED = ("parked", 3, False, False)
WOKEN = {
    1: ("pending", 0, True, True),  # due at the parent's sync, attempts started over
    2: ("pending", 0, True, True),
    3: UNTOUCHED,
    4: UNTOUCHED,
    5: UNTOUCHED,
    6: UNTOUCHED,
}


def retried(engine: Engine, cid: int) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        items = history.timeline(conn, "contact", cid, None, limit=10)["items"]
    return [(e["event"], e["direction"], e["operation"], e["detail"]) for e in items]


BY_PARENT = [("retried", "to_crm", "insert", {"by": "parent_arrived"})]


def test_a_pushed_parent_wakes_its_waiting_children(engine: Engine) -> None:
    seed(engine)
    specs = Settings().object_specs()
    with write_transaction(engine) as conn:
        assert parents.pushed(conn, specs, "account", [1], LATER) == 2
        assert parents.pushed(conn, specs, "lead", [1], LATER) == 0  # nothing refers to it
        assert parents.pushed(conn, specs, "account", [], LATER) == 0
    assert states(engine) == WOKEN
    assert retried(engine, 1) == BY_PARENT and retried(engine, 2) == BY_PARENT
    assert all(retried(engine, cid) == [] for cid in (3, 4, 5, 6))
    # Woken once: the parent's next sync finds nobody waiting.
    with write_transaction(engine) as conn:
        assert parents.pushed(conn, specs, "account", [1], LATER) == 0


def test_a_rolled_back_sync_wakes_nobody(engine: Engine) -> None:
    seed(engine)
    specs = Settings().object_specs()
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        assert parents.pushed(conn, specs, "account", [1], LATER) == 2
        raise RuntimeError("the outcome's transaction failed")
    assert states(engine) == dict.fromkeys(CHILDREN, UNTOUCHED)
    assert retried(engine, 1) == []


def test_a_child_that_does_not_push_its_lookup_is_not_woken(engine: Engine) -> None:
    seed(engine)
    one_way = {"contact": {"field_flows": {"account_id": "from_crm"}}}
    specs = load_settings(objects=one_way).object_specs()
    with write_transaction(engine) as conn:
        assert parents.pushed(conn, specs, "account", [1], LATER) == 0
    assert states(engine) == dict.fromkeys(CHILDREN, UNTOUCHED)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_child_another_transaction_holds_is_passed_by_not_waited_for(
    engine: Engine,
) -> None:
    """PostgreSQL: a fold (or a person's retry) holding a parked child's entry is queueing
    it already; waiting for it could deadlock with the fold, which locks the parent's."""
    seed(engine)
    specs = Settings().object_specs()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.select(sync_queue.c.id).where(sync_queue.c.record_key == "1").with_for_update()
            ).all()
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with write_transaction(engine) as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            assert parents.pushed(conn, specs, "account", [1], LATER) == 1
    finally:
        release.set()
        holder.join(10)
    assert states(engine)[1] == UNTOUCHED and states(engine)[2] == WOKEN[2]
