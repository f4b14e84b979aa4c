"""Change capture on real SQLite and PostgreSQL: same transaction, coalescing, echo
suppression, and objects that only flow from Dynamics."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.domain import Flow, default_objects
from crmsync.store.capture import install_triggers
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_queue


def queue(engine: sa.Engine) -> dict[tuple[str, str], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_queue)).mappings().all()
    return {(r["object"], r["record_key"]): dict(r) for r in rows}


def run(engine: sa.Engine, *statements: str, suppress: bool = False) -> list[Any]:
    out = []
    with write_transaction(engine) as conn:
        if suppress:
            with capture_suppressed(conn):
                out = [conn.execute(sa.text(s)) for s in statements]
        else:
            out = [conn.execute(sa.text(s)) for s in statements]
    return out


def test_insert_then_updates_stays_one_insert_keeping_first_time(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email) VALUES ('a@example.com')")
    first = queue(engine)[("lead", "1")]
    run(engine, "UPDATE lead SET last_name = 'One' WHERE id = 1")
    run(engine, "UPDATE lead SET last_name = 'Two' WHERE id = 1")
    q = queue(engine)
    assert list(q) == [("lead", "1")]
    entry = q[("lead", "1")]
    assert entry["operation"] == "insert"
    assert entry["direction"] == "to_crm"
    assert entry["first_queued_at"] == first["first_queued_at"]
    assert entry["last_changed_at"] >= first["last_changed_at"]
    assert entry["version"] == 3
    assert entry["label"] == "a@example.com"
    assert entry["state"] == "pending"


def test_update_of_synced_record_is_update_and_delete_is_delete(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email, crm_id) VALUES ('s@example.com', 'g-1')", suppress=True)
    assert queue(engine) == {}
    run(engine, "UPDATE lead SET first_name = 'S' WHERE id = 1")
    assert queue(engine)[("lead", "1")]["operation"] == "update"
    run(engine, "DELETE FROM lead WHERE id = 1")
    entry = queue(engine)[("lead", "1")]
    assert (entry["operation"], entry["crm_id"], entry["label"]) == (
        "delete",
        "g-1",
        "s@example.com",
    )


def test_delete_of_never_synced_record_drops_the_entry(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email) VALUES ('n@example.com')")
    run(engine, "DELETE FROM lead WHERE id = 1")
    assert queue(engine) == {}


def test_delete_after_a_worker_chose_the_crm_id_becomes_a_delete(engine: sa.Engine) -> None:
    # The worker may already have created the record in Dynamics under that id.
    run(engine, "INSERT INTO lead (email) VALUES ('w@example.com')")
    run(engine, "UPDATE sync_queue SET crm_id = 'chosen' WHERE record_key = '1'")
    run(engine, "DELETE FROM lead WHERE id = 1")
    entry = queue(engine)[("lead", "1")]
    assert (entry["operation"], entry["crm_id"]) == ("delete", "chosen")


def test_update_touching_no_pushed_column_is_not_captured(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email, crm_id) VALUES ('u@example.com', 'g')", suppress=True)
    run(engine, "UPDATE lead SET updated_at = CURRENT_TIMESTAMP WHERE id = 1")
    run(engine, "UPDATE lead SET email = 'u@example.com' WHERE id = 1")
    assert queue(engine) == {}


def test_rolled_back_write_leaves_no_entry(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('r@example.com')"))
        raise RuntimeError("abort")
    assert queue(engine) == {}


def test_suppressed_writes_are_not_captured_and_capture_resumes(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        with capture_suppressed(conn):
            conn.execute(sa.text("INSERT INTO lead (email) VALUES ('from-crm@example.com')"))
            conn.execute(sa.text("UPDATE lead SET first_name = 'X' WHERE id = 1"))
        conn.execute(sa.text("INSERT INTO contact (email) VALUES ('local@example.com')"))
    assert list(queue(engine)) == [("contact", "1")]
    # Nothing of the suppression survives the transaction.
    run(engine, "UPDATE lead SET first_name = 'Y' WHERE id = 1")
    assert ("lead", "1") in queue(engine)


def test_one_way_objects_are_not_captured(engine: sa.Engine) -> None:
    run(
        engine,
        "INSERT INTO account (name) VALUES ('Acme')",
        "INSERT INTO opportunity (name) VALUES ('Deal')",
    )
    assert queue(engine) == {}


def test_configuring_an_object_two_way_captures_it(engine: sa.Engine) -> None:
    specs = default_objects()
    specs["account"] = replace(specs["account"], flow=Flow.BOTH)
    with write_transaction(engine) as conn:
        assert install_triggers(conn, specs.values()) == ["lead", "contact", "account"]
    run(engine, "INSERT INTO account (name) VALUES ('Acme')")
    assert queue(engine)[("account", "1")]["label"] == "Acme"


def test_plain_sql_from_another_program_is_captured(engine: sa.Engine, db_url: str) -> None:
    # A different driver and connection, as another application would use.
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        raw = sqlite3.connect(url.database or "")
        raw.execute("INSERT INTO lead (email) VALUES ('other@example.com')")
        raw.commit()
        raw.close()
    else:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as raw:
            raw.execute("INSERT INTO lead (email) VALUES ('other@example.com')")
    assert queue(engine)[("lead", "1")]["operation"] == "insert"


# --- property-based: the queue always equals what a reference model predicts ---------

ACTIONS = st.lists(
    st.lists(
        st.one_of(
            st.tuples(st.just("insert"), st.booleans()),  # with a known crm_id?
            st.tuples(st.just("update"), st.integers(0, 7)),
            st.tuples(st.just("touch"), st.integers(0, 7)),  # no pushed column changes
            st.tuples(st.just("delete"), st.integers(0, 7)),
            st.tuples(st.just("synced"), st.integers(0, 7)),  # the engine synced it
            st.tuples(st.just("claim"), st.integers(0, 7)),  # a worker chose its crm_id
            st.tuples(st.just("applied"), st.integers(0, 7)),  # a change from Dynamics
        ),
        min_size=1,
        max_size=6,
    ).map(lambda ops: (ops, True)),
    min_size=1,
    max_size=8,
).flatmap(
    lambda txs: st.tuples(
        st.just(txs), st.lists(st.booleans(), min_size=len(txs), max_size=len(txs))
    )
)


class Model:
    def __init__(self) -> None:
        self.rows: dict[int, str | None] = {}  # id -> crm_id
        self.queue: dict[int, tuple[str, str | None]] = {}  # id -> (operation, crm_id)
        self.next_id = 1

    def copy(self) -> Model:
        m = Model()
        m.rows, m.queue, m.next_id = dict(self.rows), dict(self.queue), self.next_id
        return m

    def capture(self, rid: int) -> None:
        crm = self.rows[rid]
        new_op = "insert" if crm is None else "update"
        if rid in self.queue:
            old_op, old_crm = self.queue[rid]
            op = "insert" if old_op == "insert" and crm is None else new_op
            self.queue[rid] = (op, crm or old_crm)
        else:
            self.queue[rid] = (new_op, crm)

    def delete(self, rid: int) -> None:
        crm = self.rows.pop(rid)
        entry = self.queue.get(rid)
        if crm is None and (entry is None or entry[1] is None):
            self.queue.pop(rid, None)
        else:
            self.queue[rid] = ("delete", crm or (entry[1] if entry else None))


def _apply(conn: sa.Connection, model: Model, action: tuple[str, Any], n: int) -> None:
    kind, arg = action
    if kind == "insert":
        crm = str(uuid.uuid4()) if arg else None
        conn.execute(
            sa.text("INSERT INTO lead (id, email, crm_id) VALUES (:id, :e, :c)"),
            {"id": model.next_id, "e": f"p{model.next_id}@example.com", "c": crm},
        )
        model.rows[model.next_id] = crm
        model.capture(model.next_id)
        model.next_id += 1
        return
    ids = sorted(model.rows)
    if not ids:
        return
    rid = ids[arg % len(ids)]
    if kind == "update":
        conn.execute(
            sa.text("UPDATE lead SET last_name = :v WHERE id = :id"), {"v": f"v{n}", "id": rid}
        )
        model.capture(rid)
    elif kind == "touch":
        conn.execute(
            sa.text("UPDATE lead SET updated_at = CURRENT_TIMESTAMP WHERE id = :id"), {"id": rid}
        )
    elif kind == "delete":
        conn.execute(sa.text("DELETE FROM lead WHERE id = :id"), {"id": rid})
        model.delete(rid)
    elif kind == "synced":
        crm = model.rows[rid] or (model.queue.get(rid, ("", None))[1]) or str(uuid.uuid4())
        with capture_suppressed(conn):
            conn.execute(
                sa.text("UPDATE lead SET crm_id = :c WHERE id = :id"), {"c": crm, "id": rid}
            )
        conn.execute(
            sa.text("DELETE FROM sync_queue WHERE object = 'lead' AND record_key = :k"),
            {"k": str(rid)},
        )
        model.rows[rid] = crm
        model.queue.pop(rid, None)
    elif kind == "claim":
        if rid in model.queue and model.queue[rid][1] is None:
            crm = str(uuid.uuid4())
            conn.execute(
                sa.text(
                    "UPDATE sync_queue SET crm_id = :c WHERE object = 'lead' AND record_key = :k"
                ),
                {"c": crm, "k": str(rid)},
            )
            model.queue[rid] = (model.queue[rid][0], crm)
    elif kind == "applied":
        with capture_suppressed(conn):
            conn.execute(
                sa.text("UPDATE lead SET first_name = :v WHERE id = :id"),
                {"v": f"crm{n}", "id": rid},
            )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=ACTIONS)
def test_queue_matches_reference_model(engine: sa.Engine, plan: Any) -> None:
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(sa.text("DELETE FROM lead"))
        conn.execute(sa.text("DELETE FROM sync_queue"))
    model = Model()
    model.next_id = 1_000_000  # ids never reused across examples (AUTOINCREMENT)
    with engine.connect() as conn:
        model.next_id += int(
            conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM lead")).scalar_one()
        )
    transactions, commits = plan
    n = 0
    for (actions, _), commit in zip(transactions, commits, strict=True):
        trial = model.copy()
        conn = engine.connect()
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        tx = conn.begin()
        for action in actions:
            n += 1
            _apply(conn, trial, action, n)
        if commit:
            tx.commit()
            model = trial
        else:
            tx.rollback()
            model.next_id = trial.next_id
        conn.close()
        got = {int(k[1]): (e["operation"], e["crm_id"]) for k, e in queue(engine).items()}
        assert got == model.queue
