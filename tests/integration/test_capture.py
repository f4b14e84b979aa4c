"""Change capture on real SQLite and PostgreSQL: same transaction, coalescing, echo
suppression, and objects that only flow from Dynamics."""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.domain import Flow
from crmsync.mapping import default_objects
from crmsync.store import capture
from crmsync.store.capture import install_triggers
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_change, sync_error, sync_queue


def queue(engine: sa.Engine, *, fold: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """The queue, after folding what capture logged (unless ``fold`` is false)."""
    if fold:
        capture.fold_pending(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_queue)).mappings().all()
    return {(r["object"], r["record_key"]): dict(r) for r in rows}


def logged(engine: sa.Engine) -> list[tuple[int, bool, str | None]]:
    c = sync_change.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.record_id, c.deleted, c.crm_id).order_by(c.seq)).all()
    return [(r.record_id, bool(r.deleted), r.crm_id) for r in rows]


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
    assert entry["version"] == 2  # both updates were folded together: one refresh
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
    assert queue(engine)[("lead", "1")]["crm_id"] is None
    run(engine, "UPDATE sync_queue SET crm_id = 'chosen' WHERE record_key = '1'")
    run(engine, "DELETE FROM lead WHERE id = 1")
    entry = queue(engine)[("lead", "1")]
    assert (entry["operation"], entry["crm_id"]) == ("delete", "chosen")


def test_delete_logged_while_its_insert_was_in_flight_becomes_a_delete(engine: sa.Engine) -> None:
    # The worker sent the insert under a chosen id; the record was deleted locally while
    # it was in flight; the worker finished (entry gone, sync state kept) before the
    # delete was folded. The delete must still reach Dynamics.
    run(engine, "INSERT INTO lead (email) VALUES ('f@example.com')")
    assert queue(engine)[("lead", "1")]["operation"] == "insert"
    run(engine, "DELETE FROM lead WHERE id = 1")
    run(
        engine,
        "DELETE FROM sync_queue WHERE record_key = '1'",
        "INSERT INTO sync_record (object, record_id, crm_id, last_synced_at, synced_values)"
        " VALUES ('lead', 1, 'sent', CURRENT_TIMESTAMP, '{}')",
    )
    entry = queue(engine)[("lead", "1")]
    assert (entry["operation"], entry["crm_id"], entry["label"]) == (
        "delete",
        "sent",
        "f@example.com",
    )


def test_changes_wait_in_the_log_until_folded_in_capture_order(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (id, email) VALUES (7, 'o@example.com')")
    run(engine, "DELETE FROM lead WHERE id = 7")
    # The same id again: the delete must not be folded after the new insert.
    run(engine, "INSERT INTO lead (id, email) VALUES (7, 'again@example.com')")
    assert queue(engine, fold=False) == {}
    assert logged(engine) == [(7, False, None), (7, True, None), (7, False, None)]
    with write_transaction(engine) as conn:
        assert capture.fold(conn, limit=2) == 2
    assert queue(engine, fold=False) == {}  # inserted, then deleted: nothing to send
    entry = queue(engine)[("lead", "7")]
    assert (entry["operation"], entry["label"]) == ("insert", "again@example.com")
    assert logged(engine) == []


def test_a_parked_entry_changed_again_is_due_again(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email, crm_id) VALUES ('p@example.com', 'g')", suppress=True)
    run(engine, "UPDATE lead SET first_name = 'A' WHERE id = 1")
    queue(engine)
    run(
        engine,
        "UPDATE sync_queue SET state = 'parked', attempts = 5,"
        " next_attempt_at = '2999-01-01 00:00:00.000000' WHERE record_key = '1'",
    )
    run(engine, "UPDATE lead SET first_name = 'B' WHERE id = 1")
    entry = queue(engine)[("lead", "1")]
    assert (entry["state"], entry["attempts"]) == ("pending", 0)
    assert entry["next_attempt_at"].year < 2999


def retry_ats(engine: sa.Engine) -> dict[tuple[str, str, str], Any]:
    e = sync_error.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(e.object, e.direction, e.record_key, e.retry_at, e.status))
        return {(r[0], r[1], r[2]): (r[3] is not None, r[4]) for r in rows}


def test_a_parked_record_changed_locally_loses_its_planned_automatic_retry(
    engine: sa.Engine,
) -> None:
    """The change goes now, so the retry time shown (Sync Errors, record page, CLI, API)
    would never come: cleared in the fold's transaction; the error stays open until the
    record syncs or fails. Other records', objects' and directions' retries stay."""
    run(
        engine,
        "INSERT INTO lead (id, email, crm_id) VALUES (1, 'a@example.com', 'g1'),"
        " (2, 'b@example.com', 'g2'), (3, 'c@example.com', 'g3')",
        suppress=True,
    )
    later = datetime.now(UTC) + timedelta(hours=1)
    with write_transaction(engine) as conn:
        for key in ("1", "2", "3"):
            conn.execute(
                sa.insert(sync_queue).values(
                    object="lead", direction="to_crm", record_key=key, record_id=int(key),
                    crm_id=f"g{key}", operation="update", state="parked", attempts=2,
                    first_queued_at=later, last_changed_at=later, next_attempt_at=later,
                    version=1,
                )
            )  # fmt: skip
        errors = [("lead", "to_crm", k) for k in ("1", "2", "3")]
        errors += [("lead", "from_crm", "1"), ("contact", "to_crm", "1")]
        common = {
            "operation": "update", "error_code": "http_503", "error_message": "unavailable",
            "status": "open", "first_failed_at": later, "last_failed_at": later,
            "category": "unavailable", "retry_at": later,
        }  # fmt: skip
        conn.execute(
            sa.insert(sync_error),
            [{"object": o, "direction": d, "record_key": k, **common} for o, d, k in errors],
        )
    planned = retry_ats(engine)
    assert all(planned_at for planned_at, _ in planned.values())
    # A fold that rolls back clears nothing.
    run(engine, "UPDATE lead SET first_name = 'A' WHERE id = 1")
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        assert capture.fold(conn) == 1
        raise RuntimeError("the claim's transaction failed")
    assert retry_ats(engine) == planned
    run(engine, "DELETE FROM lead WHERE id = 2")
    entries = queue(engine)
    assert entries[("lead", "1")]["state"] == entries[("lead", "2")]["state"] == "pending"
    assert entries[("lead", "2")]["operation"] == "delete"
    assert retry_ats(engine) == {
        **planned,
        ("lead", "to_crm", "1"): (False, "open"),
        ("lead", "to_crm", "2"): (False, "open"),
    }


def test_an_update_waiting_to_be_sent_that_becomes_a_delete_is_due_at_once(
    engine: sa.Engine,
) -> None:
    # Held for a paused pull (or backing off after a fault): the delete waits for none
    # of it.
    run(engine, "INSERT INTO lead (email, crm_id) VALUES ('h@example.com', 'g')", suppress=True)
    run(engine, "UPDATE lead SET first_name = 'A' WHERE id = 1")
    queue(engine)
    run(
        engine,
        "UPDATE sync_queue SET attempts = 3, last_error_code = 'crmsync.awaiting_pull',"
        " next_attempt_at = '2999-01-01 00:00:00.000000' WHERE record_key = '1'",
    )
    run(engine, "UPDATE lead SET first_name = 'B' WHERE id = 1")
    still = queue(engine)[("lead", "1")]
    assert (still["operation"], still["attempts"], still["next_attempt_at"].year) == (
        "update",
        3,
        2999,
    )
    run(engine, "DELETE FROM lead WHERE id = 1")
    entry = queue(engine)[("lead", "1")]
    assert (entry["operation"], entry["attempts"]) == ("delete", 0)
    assert entry["next_attempt_at"].year < 2999


def test_fold_pending_folds_in_batches_until_the_log_is_empty(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email) VALUES (:e)"),
            [{"e": f"b{i}@example.com"} for i in range(25)],
        )
        conn.execute(sa.text("UPDATE lead SET first_name = 'x' WHERE id <= 10"))
    assert len(logged(engine)) == 35
    assert capture.fold_pending(engine, batch=4) == 35
    assert logged(engine) == []
    q = queue(engine, fold=False)
    assert len(q) == 25 and {e["operation"] for e in q.values()} == {"insert"}
    assert capture.fold_pending(engine) == 0


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
            st.tuples(st.just("fold"), st.integers(1, 4)),  # the worker folds the log
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
    """What the log and the queue must hold: the log as written, the queue as folded."""

    def __init__(self) -> None:
        self.rows: dict[int, str | None] = {}  # id -> crm_id
        self.queue: dict[int, tuple[str, str | None]] = {}  # id -> (operation, crm_id)
        self.log: list[tuple[int, bool, str | None]] = []  # (id, deleted, crm_id)
        self.synced: dict[int, str] = {}  # id -> crm_id of its last sync
        self.next_id = 1

    def copy(self) -> Model:
        m = Model()
        m.rows, m.queue, m.next_id = dict(self.rows), dict(self.queue), self.next_id
        m.log, m.synced = list(self.log), dict(self.synced)
        return m

    def capture(self, rid: int) -> None:
        self.log.append((rid, False, None))

    def delete(self, rid: int) -> None:
        self.log.append((rid, True, self.rows.pop(rid)))

    def fold(self, limit: int | None = None) -> None:
        taken = self.log if limit is None else self.log[:limit]
        self.log = self.log[len(taken) :]
        for rid, deleted, crm_at_delete in taken:
            entry = self.queue.get(rid)
            if not deleted:
                if rid not in self.rows:
                    continue  # deleted since: its delete is its own log row
                crm = self.rows[rid]
                op = "insert" if crm is None else "update"
                self.queue[rid] = (op, crm or (entry[1] if entry else None))
                continue
            crm = crm_at_delete or (entry[1] if entry else None) or self.synced.get(rid)
            if crm is None:
                self.queue.pop(rid, None)
            else:
                self.queue[rid] = ("delete", crm_at_delete or self.synced.get(rid) or crm)


def _apply(conn: sa.Connection, model: Model, action: tuple[str, Any], n: int) -> None:
    kind, arg = action
    if kind == "fold":
        assert capture.fold(conn, limit=arg) == min(arg, len(model.log))
        model.fold(arg)
        return
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
    if kind == "synced":
        # A worker finished sending a record's insert or update, or it was synced some
        # other way; its local row may be gone since (a delete not folded yet).
        pushed = {i for i, (op, _) in model.queue.items() if op != "delete"}
        ids = sorted(set(model.rows) | pushed)
    else:
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
        crm = model.rows.get(rid) or model.queue.get(rid, ("", None))[1] or str(uuid.uuid4())
        with capture_suppressed(conn):
            conn.execute(
                sa.text("UPDATE lead SET crm_id = :c WHERE id = :id"), {"c": crm, "id": rid}
            )
        conn.execute(
            sa.text("DELETE FROM sync_queue WHERE object = 'lead' AND record_key = :k"),
            {"k": str(rid)},
        )
        conn.execute(sa.text("DELETE FROM sync_record WHERE record_id = :id"), {"id": rid})
        conn.execute(
            sa.text(
                "INSERT INTO sync_record (object, record_id, crm_id, last_synced_at,"
                " synced_values) VALUES ('lead', :id, :c, CURRENT_TIMESTAMP, '{}')"
            ),
            {"id": rid, "c": crm},
        )
        if rid in model.rows:
            model.rows[rid] = crm
        model.synced[rid] = crm
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
        conn.execute(sa.text("DELETE FROM sync_change"))
        conn.execute(sa.text("DELETE FROM sync_record"))
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
        got = {
            int(k[1]): (e["operation"], e["crm_id"]) for k, e in queue(engine, fold=False).items()
        }
        assert (logged(engine), got) == (model.log, model.queue)
    model.fold()
    got = {int(k[1]): (e["operation"], e["crm_id"]) for k, e in queue(engine).items()}
    assert (logged(engine), got) == ([], model.queue)


# --- PostgreSQL: writers and several folders at once --------------------------------


@pytest.mark.postgres
def test_concurrent_writers_and_folders_lose_and_duplicate_nothing(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    stop = threading.Event()
    failures: list[BaseException] = []
    folded = [0]
    next_id = itertools.count(1)

    def writer(k: int) -> None:
        rnd = random.Random(k)
        try:
            while not stop.is_set():
                # Existing rows are touched in id order, as an application that wants no
                # deadlocks between its own writers does: the test is about capture.
                steps = []
                for _ in range(rnd.randint(1, 3)):
                    kind = rnd.choice(["insert", "insert", "update", "delete"])
                    rid = next(next_id)
                    if kind != "insert":
                        rid = rnd.randint(1, max(1, rid - 1))
                    steps.append((kind != "insert", rid, kind))
                with write_transaction(engine) as conn:
                    for _, rid, kind in sorted(steps):
                        if kind == "insert":
                            conn.execute(
                                sa.text("INSERT INTO lead (id, email) VALUES (:i, :e)"),
                                {"i": rid, "e": f"c{rid}@example.com"},
                            )
                            continue
                        sql = (
                            "UPDATE lead SET last_name = 'x' || :n WHERE id = :i"
                            if kind == "update"
                            else "DELETE FROM lead WHERE id = :i"
                        )
                        conn.execute(sa.text(sql), {"i": rid, "n": str(rnd.random())})
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    def folder(k: int) -> None:
        try:
            while not stop.is_set():
                folded[0] += capture.fold_pending(engine, wait=bool(k % 2), batch=7)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=folder, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures
    assert folded[0] > 0
    q = queue(engine)
    assert logged(engine) == []
    with engine.connect() as conn:
        alive = {r[0] for r in conn.execute(sa.text("SELECT id FROM lead"))}
    # Nothing ever reached Dynamics: every live record is one insert, deleted ones none.
    assert alive
    assert {int(k[1]) for k in q} == alive
    assert {e["operation"] for e in q.values()} == {"insert"}


@pytest.mark.postgres
def test_shrink_vacuums_the_log_once_folding_left_many_dead_rows(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "postgresql":
        assert capture.shrink(engine) is False
        return
    monkeypatch.setattr(capture, "SHRINK_ROWS", 20)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (email) VALUES (:e)"),
            [{"e": f"s{i}@example.com"} for i in range(40)],
        )
    assert capture.fold_pending(engine) == 40
    deadline = time.monotonic() + 10
    while not capture.shrink(engine):  # the statistics reach other sessions within ~1 s
        assert time.monotonic() < deadline, "the dead rows were never seen"
        time.sleep(0.2)
    assert capture.shrink(engine) is False  # vacuumed: nothing dead left to count


@pytest.mark.postgres
def test_an_application_role_needs_only_the_documented_grants(engine: sa.Engine) -> None:
    """docs/deployment.md: rights on its tables, INSERT on the log and its sequence."""
    if engine.dialect.name != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    role = f"crmsync_app_{uuid.uuid4().hex[:8]}"
    with write_transaction(engine) as conn:
        conn.execute(sa.text(f"CREATE ROLE {role}"))
        conn.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON lead TO {role}"))
        conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE lead_id_seq TO {role}"))
        conn.execute(sa.text(f"GRANT INSERT ON sync_change TO {role}"))
        conn.execute(sa.text(f"GRANT USAGE ON SEQUENCE sync_change_seq_seq TO {role}"))
    try:
        with write_transaction(engine) as conn:
            conn.execute(sa.text(f"SET LOCAL ROLE {role}"))
            conn.execute(sa.text("INSERT INTO lead (email) VALUES ('app@example.com')"))
            conn.execute(sa.text("UPDATE lead SET last_name = 'App'"))
            conn.execute(sa.text("DELETE FROM lead"))
        assert [d for _, d, _ in logged(engine)] == [False, False, True]
    finally:
        with write_transaction(engine) as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["delete", "update"])
def test_a_fold_waits_for_a_push_finishing_on_the_same_record(
    engine: sa.Engine, change: str
) -> None:
    """The insert was sent under a chosen id; the record changed locally meanwhile; the
    fold of that change starts while the worker's completion (sync state saved, entry
    removed) has not committed. The fold must queue the change with the Dynamics id:
    a delete with none is sent to nobody, an update without it goes as an insert."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    run(engine, "INSERT INTO lead (email) VALUES ('race@example.com')")
    queue(engine)
    run(engine, "UPDATE sync_queue SET crm_id = 'X', claimed_by = 'w' WHERE record_key = '1'")
    if change == "delete":
        run(engine, "DELETE FROM lead WHERE id = 1")
    else:
        run(engine, "UPDATE lead SET last_name = 'later' WHERE id = 1")
    finishing = engine.connect()
    tx = finishing.begin()
    with capture_suppressed(finishing):
        finishing.execute(sa.text("UPDATE lead SET crm_id = 'X' WHERE id = 1"))
    finishing.execute(
        sa.text(
            "INSERT INTO sync_record (object, record_id, crm_id, last_synced_at, synced_values)"
            " VALUES ('lead', 1, 'X', now(), '{}')"
        )
    )
    finishing.execute(sa.text("DELETE FROM sync_queue WHERE record_key = '1' AND version = 1"))
    folded: list[int] = []
    fold = threading.Thread(target=lambda: folded.append(capture.fold_pending(engine)))
    fold.start()
    time.sleep(0.5)
    assert fold.is_alive()  # waiting for the completion
    tx.commit()
    finishing.close()
    fold.join(10)
    assert folded == [1]
    entry = queue(engine, fold=False)[("lead", "1")]
    assert (entry["operation"], entry["crm_id"]) == (change, "X")


def test_a_label_longer_than_the_queue_keeps_is_cut_not_refused(engine: sa.Engine) -> None:
    # An account's name may have 400 characters; the queue keeps 300 of a label. On
    # PostgreSQL an uncut label would refuse the delete (its log row) or every fold.
    specs = default_objects()
    specs["account"] = replace(specs["account"], flow=Flow.BOTH)
    with write_transaction(engine) as conn:
        install_triggers(conn, specs.values())
    name = "N" * 350
    run(engine, f"INSERT INTO account (name) VALUES ('{name}')")
    assert len(queue(engine)[("account", "1")]["label"]) == capture.LABEL_MAX
    run(engine, "UPDATE account SET crm_id = 'a-1'", suppress=True)  # synced
    run(engine, "DELETE FROM account WHERE id = 1", "INSERT INTO lead (email) VALUES ('n@x')")
    q = queue(engine)
    assert (q[("account", "1")]["operation"], q[("account", "1")]["label"]) == (
        "delete",
        name[: capture.LABEL_MAX],
    )
    assert q[("lead", "1")]["operation"] == "insert"  # the fold went on past it


def test_forget_changes_drops_each_records_changes_up_to_its_own_place(engine: sa.Engine) -> None:
    """Moot pushes: per record, its logged changes (not deletes) up to the place given;
    later changes, deletes, other records and other objects stay."""
    run(
        engine,
        "INSERT INTO lead (id, email, last_name) VALUES (1, 'a@x', 'A'), (2, 'b@x', 'B'),"
        " (3, 'c@x', 'C')",
        "INSERT INTO contact (id, email, last_name) VALUES (1, 'k@x', 'K')",
        "UPDATE lead SET last_name = 'A2' WHERE id = 1",
        "UPDATE lead SET last_name = 'B2' WHERE id = 2",
        "DELETE FROM lead WHERE id = 2",
        "UPDATE lead SET last_name = 'A3' WHERE id = 1",
    )
    c = sync_change.c
    with engine.connect() as conn:
        seqs = conn.execute(sa.select(c.seq, c.object, c.record_id).order_by(c.seq)).all()
    lead_1 = [s for s, o, r in seqs if (o, r) == ("lead", 1)]
    assert len(lead_1) == 3
    with write_transaction(engine) as conn:
        # Record 1 up to its second change; record 2 up to everything; 3 not named.
        capture.forget_changes(conn, "lead", {1: lead_1[1], 2: seqs[-1][0]})
    with engine.connect() as conn:
        left = conn.execute(sa.select(c.object, c.record_id, c.deleted).order_by(c.seq)).all()
    assert [tuple(r) for r in left] == [
        ("lead", 3, False),
        ("contact", 1, False),
        ("lead", 2, True),  # a delete is never moot
        ("lead", 1, False),  # logged after the place given
    ]
