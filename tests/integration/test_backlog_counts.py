"""The backlog counts kept by triggers on sync_queue equal a count of the queue, always.

Every writer of the queue is exercised through its real code path (capture triggers,
claims and outcomes, error retries, pull staging), on SQLite and PostgreSQL, against
hand-computed numbers, against ``count(*)`` after random sequences of mutations
interleaved with compaction, and (PostgreSQL) with concurrent writers and compactions.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.domain import STANDARD_OBJECTS
from crmsync.mapping import default_objects
from crmsync.store import (
    backlog,
    backlog_counts,
    capture,
    history,
    inbound,
    migrate,
    queue,
    status,
    sync_errors,
)
from crmsync.store.capture import fold_pending
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.maintenance import compact_counts, maintain
from crmsync.store.schema import sync_backlog_count, sync_queue
from crmsync.store.types import utcnow

LEASE = timedelta(seconds=30)
Key = tuple[str, str, str]


def counts(engine: sa.Engine) -> dict[Key, int]:
    """What the status views read (the capture log's unfolded tail included)."""
    with read_transaction(engine) as conn:
        return {(g.object, g.direction, g.operation): g.count for g in status.backlog_groups(conn)}


def truth(engine: sa.Engine) -> dict[Key, int]:
    """A count of the queue itself (the old way)."""
    q = sync_queue.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(q.object, q.direction, q.operation, sa.func.count())
            .where(q.state != "parked")
            .group_by(q.object, q.direction, q.operation)
        )
        return {(o, d, op): int(n) for o, d, op, n in rows}


def oldest_truth(engine: sa.Engine) -> dict[Key, Any]:
    q = sync_queue.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(q.object, q.direction, q.operation, sa.func.min(q.first_queued_at))
            .where(q.state == "pending")
            .group_by(q.object, q.direction, q.operation)
        )
        return {(o, d, op): first for o, d, op, first in rows}


def count_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(sync_backlog_count)).scalar_one()
        )


def run(engine: sa.Engine, *statements: str, fold: bool = True, **params: Any) -> None:
    """Run the statements in one transaction, then (``fold``) queue what capture logged,
    as the worker does before its next claim."""
    with write_transaction(engine) as conn:
        for sql in statements:
            conn.execute(sa.text(sql), params)
    if fold:
        capture.fold_pending(engine)


def from_crm(key: str, operation: str, version: int) -> dict[str, Any]:
    now = utcnow()
    return {
        "object": "lead",
        "direction": "from_crm",
        "record_key": key,
        "record_id": None,
        "crm_id": key,
        "operation": operation,
        "label": f"{key}@example.com",
        "payload": {"version": version},
        "state": "pending",
        "first_queued_at": now,
        "last_changed_at": now,
        "version": 1,
        "attempts": 0,
        "next_attempt_at": now,
    }


LEAD_INSERT = ("lead", "to_crm", "insert")
LEAD_UPDATE = ("lead", "to_crm", "update")
LEAD_DELETE = ("lead", "to_crm", "delete")


# --- hand-computed ---------------------------------------------------------------------


def test_capture_coalesces_and_counts_each_record_once(engine: sa.Engine) -> None:
    for i in (1, 2, 3):
        run(engine, "INSERT INTO lead (id, email) VALUES (:i, 'a' || :i)", i=i)
    run(engine, "INSERT INTO lead (id, email, crm_id) VALUES (4, 'b', 'c-4')")
    run(engine, "INSERT INTO contact (email) VALUES ('c')")
    assert counts(engine) == {LEAD_INSERT: 3, LEAD_UPDATE: 1, ("contact", "to_crm", "insert"): 1}
    # Updates of queued records coalesce: nothing moves.
    run(engine, "UPDATE lead SET last_name = 'x' WHERE id IN (1, 4)")
    run(engine, "UPDATE lead SET last_name = 'y' WHERE id IN (1, 4)")
    assert counts(engine)[LEAD_INSERT] == 3 and counts(engine)[LEAD_UPDATE] == 1
    # A synced record deleted: its update becomes a delete.
    run(engine, "DELETE FROM lead WHERE id = 4")
    # Never synced, no id chosen: the entry goes.
    run(engine, "DELETE FROM lead WHERE id = 2")
    assert counts(engine) == {
        LEAD_INSERT: 2,
        LEAD_DELETE: 1,
        ("contact", "to_crm", "insert"): 1,
    }
    assert counts(engine) == truth(engine)


def test_refreshing_a_queued_entry_appends_no_count_row(engine: sa.Engine) -> None:
    """The cost guard: only a change of group is counted, not every captured write."""
    run(engine, "INSERT INTO lead (id, email, crm_id) VALUES (1, 'a', 'c-1')")
    before = count_rows(engine)
    for k in range(3):
        run(engine, "UPDATE lead SET last_name = :v WHERE id = 1", v=f"v{k}")
    assert count_rows(engine) == before
    assert counts(engine) == {LEAD_UPDATE: 1}


def test_worker_outcomes_move_the_counts(engine: sa.Engine) -> None:
    for i in range(1, 6):
        run(engine, "INSERT INTO lead (id, email) VALUES (:i, 'w' || :i)", i=i)
    entries = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    # Claimed entries are still backlog.
    assert counts(engine) == {LEAD_INSERT: 5}
    a, b, c, d, e = entries
    # c changes while in flight: it stays queued, now as an update.
    run(engine, "UPDATE lead SET last_name = 'newer' WHERE id = :i", i=c.record_id)
    later = utcnow() + timedelta(minutes=5)
    queue.record(
        engine,
        queue.Outcome(
            done=[queue.Done(a, crm_id="g-a"), queue.Done(c, crm_id="g-c")],
            failed=[
                queue.Failed(b, "0x80040333", "duplicate"),  # parked
                queue.Failed(d, "http_503", "busy", retry_at=later),  # retrying
            ],
            deferred=[(e, later)],
        ),
    )
    # a synced (gone), b parked (out), c an update, d and e waiting.
    assert counts(engine) == {LEAD_INSERT: 2, LEAD_UPDATE: 1}
    with write_transaction(engine) as conn:
        assert sync_errors.retry_matching(conn, sync_errors.make_filters(STANDARD_OBJECTS)) == {
            "errors": 1,
            "requeued": 1,
        }
    assert counts(engine) == {LEAD_INSERT: 3, LEAD_UPDATE: 1}
    # Parked again, then a local edit queues it again (capture revives parked entries).
    (b2,) = [x for x in queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE) if x.id == b.id]
    queue.record(engine, queue.Outcome(failed=[queue.Failed(b2, "0x80040333", "duplicate")]))
    assert counts(engine)[LEAD_INSERT] == 2
    run(engine, "UPDATE lead SET last_name = 'fixed' WHERE id = :i", i=b.record_id)
    assert counts(engine) == {LEAD_INSERT: 3, LEAD_UPDATE: 1} == truth(engine)


def test_pull_staging_counts_from_crm_changes(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        inbound.stage(conn, [from_crm("k1", "insert", 1), from_crm("k2", "update", 1)])
        # A newer update of a queued insert stays an insert; a delete replaces an update.
        inbound.stage(conn, [from_crm("k1", "update", 2), from_crm("k2", "delete", 2)])
        # An older change is ignored.
        inbound.stage(conn, [from_crm("k2", "update", 1)])
    assert counts(engine) == {("lead", "from_crm", "insert"): 1, ("lead", "from_crm", "delete"): 1}
    (k1,) = [
        e for e in queue.claim(engine, "w", "from_crm", ["lead"], 10, LEASE) if e.crm_id == "k1"
    ]
    queue.record(engine, queue.Outcome(failed=[queue.Failed(k1, "local_constraint", "no")]))
    assert counts(engine) == {("lead", "from_crm", "delete"): 1}
    # A newer change from Dynamics queues a parked entry again (still an insert).
    with write_transaction(engine) as conn:
        inbound.stage(conn, [from_crm("k1", "update", 3)])
    assert counts(engine) == truth(engine)
    assert counts(engine) == {("lead", "from_crm", "insert"): 1, ("lead", "from_crm", "delete"): 1}


def test_backlog_view_and_oldest_come_from_counts_and_seeks(engine: sa.Engine) -> None:
    run(engine, "INSERT INTO lead (email) VALUES ('a')", "INSERT INTO lead (email) VALUES ('b')")
    run(engine, "INSERT INTO contact (email, crm_id) VALUES ('c', 'c-1')")
    with engine.connect() as conn:
        view = status.backlog(conn, STANDARD_OBJECTS)
        details = status.details(conn, "lead")
    rows = {r["object"]: r for r in view["objects"]}
    assert (rows["lead"]["inserts"], rows["lead"]["total"]) == (2, 2)
    assert (rows["contact"]["updates"], rows["contact"]["total"]) == (1, 1)
    assert rows["account"]["total"] == 0 and rows["account"]["oldest_queued_at"] is None
    assert details["inserts"]["pending"] == 2 and details["inserts"]["oldest"]["label"] == "a"
    assert details["by_direction"]["to_crm"] == {"inserts": 2, "updates": 0, "deletes": 0}
    groups = {(g.object, g.direction, g.operation): g.oldest_queued_at for g in _groups(engine)}
    assert groups == oldest_truth(engine)


def _groups(engine: sa.Engine) -> list[status.Group]:
    with read_transaction(engine) as conn:
        return status.backlog_groups(conn)


def test_compaction_folds_to_one_row_per_group_and_drops_zeros(engine: sa.Engine) -> None:
    for i in range(1, 11):
        run(engine, "INSERT INTO lead (id, email) VALUES (:i, 'c' || :i)", i=i)
    run(engine, "INSERT INTO contact (id, email) VALUES (1, 'x')")
    run(engine, "DELETE FROM contact WHERE id = 1")  # contact/insert: +1 -1 = 0
    run(engine, "DELETE FROM lead WHERE id > 7")
    assert count_rows(engine) == 15
    assert compact_counts(engine) == 13  # 15 rows, 2 groups
    assert count_rows(engine) == 1  # the zero group is gone
    assert compact_counts(engine) == 0  # already folded: nothing written
    assert counts(engine) == {LEAD_INSERT: 7} == truth(engine)
    assert maintain(engine).folded_counts == 0


def test_upgrade_of_an_existing_store_seeds_the_counts(engine: sa.Engine) -> None:
    """``crmsync db upgrade`` on a store from before 0005: the counts start exact."""
    parent = "0004"
    for i in range(1, 5):
        run(engine, "INSERT INTO lead (id, email) VALUES (:i, 's' || :i)", i=i)
    with write_transaction(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), parent)
        # This release's capture triggers log to a table 0004 does not have: an older
        # release's upgrade would have put its own back.
        capture.drop_triggers(conn, ["lead", "contact"])
    assert "sync_backlog_count" not in sa.inspect(engine).get_table_names()
    history.configure(enabled=False)  # 0004 has no sync_event
    try:
        with write_transaction(engine) as conn:
            conn.execute(sa.text("UPDATE sync_queue SET state = 'parked' WHERE record_key = '4'"))
            inbound.stage(conn, [from_crm("k1", "update", 1)])
    finally:
        history.configure()
    migrate.upgrade(engine, default_objects().values())
    assert counts(engine) == {LEAD_INSERT: 3, ("lead", "from_crm", "update"): 1}
    run(engine, "DELETE FROM lead WHERE id = 1")
    assert counts(engine) == {LEAD_INSERT: 2, ("lead", "from_crm", "update"): 1} == truth(engine)


def test_truncate_of_the_queue_empties_the_counts(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    run(engine, "INSERT INTO lead (email) VALUES ('t')")
    run(engine, "TRUNCATE sync_queue")
    assert counts(engine) == {} and count_rows(engine) == 0


# --- property: random mutations through the real code paths ---------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(["lead", "contact"]), st.booleans()),
        st.tuples(st.just("update"), st.integers(0, 9)),
        st.tuples(st.just("delete"), st.integers(0, 9)),
        st.tuples(st.just("rolled_back"), st.integers(0, 9)),
        st.tuples(st.just("claim"), st.sampled_from(["to_crm", "from_crm"])),
        st.tuples(
            st.just("outcome"),
            st.sampled_from(["done", "park", "reschedule", "defer"]),
            st.integers(0, 9),
        ),
        st.tuples(st.just("retry_errors"), st.none()),
        st.tuples(
            st.just("stage"), st.integers(0, 4), st.sampled_from(["insert", "update", "delete"])
        ),
        st.tuples(st.just("compact"), st.none()),
    ),
    min_size=1,
    max_size=25,
)


class Run:
    """One example's state: local ids and entries in flight."""

    def __init__(self, engine: sa.Engine, fold: bool = True) -> None:
        self.engine = engine
        self.fold = fold  # False: local writes stay in the capture log until a claim
        self.claimed: list[queue.Entry] = []
        self.version = 0
        self.later = utcnow() + timedelta(hours=1)  # every entry is due by then

    def ids(self, table: str) -> list[int]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id"))]

    def step(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == "insert":
            _, table, synced = action
            crm = f"crm-{random.random()}" if synced else None
            run(
                self.engine,
                f"INSERT INTO {table} (email, crm_id) VALUES ('p', :c)",
                fold=self.fold,
                c=crm,
            )
        elif kind in ("update", "delete", "rolled_back"):
            ids = self.ids("lead")
            if not ids:
                return
            rid = ids[action[1] % len(ids)]
            if kind == "update":
                run(
                    self.engine,
                    "UPDATE lead SET last_name = COALESCE(last_name, '') || 'x' WHERE id = :i",
                    fold=self.fold,
                    i=rid,
                )
            elif kind == "delete":
                run(self.engine, "DELETE FROM lead WHERE id = :i", fold=self.fold, i=rid)
            else:
                with self.engine.connect() as conn:
                    tx = conn.begin()
                    conn.execute(sa.text("DELETE FROM lead WHERE id = :i"), {"i": rid})
                    tx.rollback()
        elif kind == "claim":
            self.claimed += queue.claim(
                self.engine, "w", action[1], ["lead", "contact"], 3, LEASE, now=self.later
            )
        elif kind == "outcome":
            if not self.claimed:
                return
            entry = self.claimed.pop(action[2] % len(self.claimed))
            outcome = queue.Outcome()
            if action[1] == "done":
                outcome.done.append(queue.Done(entry, crm_id=entry.crm_id or "g-1"))
            elif action[1] == "park":
                outcome.failed.append(queue.Failed(entry, "0x80040333", "duplicate"))
            elif action[1] == "reschedule":
                outcome.failed.append(queue.Failed(entry, "http_503", "busy", retry_at=utcnow()))
            else:
                outcome.deferred.append((entry, utcnow()))
            queue.record(self.engine, outcome)
        elif kind == "retry_errors":
            with write_transaction(self.engine) as conn:
                sync_errors.retry_matching(conn, sync_errors.make_filters(STANDARD_OBJECTS))
        elif kind == "stage":
            self.version += 1
            with write_transaction(self.engine) as conn:
                inbound.stage(conn, [from_crm(f"k{action[1]}", action[2], self.version)])
        else:
            compact_counts(self.engine)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_counts_always_equal_a_count_of_the_queue(engine: sa.Engine, steps: Any) -> None:
    run(engine, "DELETE FROM lead", "DELETE FROM contact", "DELETE FROM sync_queue")
    run(engine, "DELETE FROM sync_error")
    example = Run(engine)
    for action in steps:
        example.step(action)
        assert counts(engine) == truth(engine), action
    groups = {(g.object, g.direction, g.operation): g.oldest_queued_at for g in _groups(engine)}
    assert groups == oldest_truth(engine)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_reads_count_the_unfolded_log_as_folded(engine: sa.Engine, steps: Any) -> None:
    """Local writes stay in the capture log (only claims and upkeep fold, as with no
    worker running); a read counts them exactly as the queue holds them once folded."""
    run(engine, "DELETE FROM lead", "DELETE FROM contact", "DELETE FROM sync_queue")
    run(engine, "DELETE FROM sync_error", "DELETE FROM sync_record")
    example = Run(engine, fold=False)
    for action in steps:
        example.step(action)
    reads = []
    for large in (10**9, 0):  # the tail read as a short one, and as a long one
        with tail_plan(large):
            reads.append((counts(engine), _oldest(engine)))
    fold_pending(engine)
    for read, oldest in reads:
        assert read == truth(engine), steps
        assert oldest == oldest_truth(engine), steps


@contextmanager
def tail_plan(large: int) -> Iterator[None]:
    """Reads take a tail longer than ``large`` for a long one (``backlog.LARGE_TAIL``)."""
    before = backlog.LARGE_TAIL
    backlog.LARGE_TAIL = large
    try:
        yield
    finally:
        backlog.LARGE_TAIL = before


def _oldest(engine: sa.Engine) -> dict[Key, Any]:
    return {(g.object, g.direction, g.operation): g.oldest_queued_at for g in _groups(engine)}


# --- PostgreSQL: concurrent writers while compactions run ------------------------------


@pytest.mark.postgres
def test_concurrent_writers_and_compactions_keep_counts_exact(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    stop = threading.Event()
    failures: list[BaseException] = []
    folds = [0]

    def guarded(fn: Any) -> Any:
        def loop(k: int) -> None:
            rnd = random.Random(k)
            try:
                while not stop.is_set():
                    try:
                        fn(rnd)
                    except sa.exc.OperationalError as exc:  # a deadlock rolls back whole
                        if "deadlock" not in str(exc):
                            raise
                    except sa.exc.IntegrityError as exc:
                        # Two inserts of one lead racing a delete: PostgreSQL's ON CONFLICT
                        # (id) arbitrates only the id, and the crm_id index raises (the
                        # application's write, rolled back whole with what it captured).
                        if "uq_lead_crm_id" not in str(exc):
                            raise
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        return loop

    def capture(rnd: random.Random) -> None:
        rid = rnd.randint(1, 40)
        with write_transaction(engine) as conn:
            kind = rnd.random()
            if kind < 0.4:
                conn.execute(
                    sa.text(
                        "INSERT INTO lead (id, email, crm_id) VALUES (:i, 'c', :c)"
                        " ON CONFLICT (id) DO UPDATE SET last_name = 'u' || random()"
                    ),
                    {"i": rid, "c": f"crm-{rid}" if rid % 2 else None},
                )
            elif kind < 0.8:
                conn.execute(
                    sa.text("UPDATE lead SET last_name = 'v' || random() WHERE id = :i"), {"i": rid}
                )
            else:
                conn.execute(sa.text("DELETE FROM lead WHERE id = :i"), {"i": rid})

    def work(rnd: random.Random) -> None:
        direction = rnd.choice(["to_crm", "from_crm"])
        entries = queue.claim(engine, f"w{rnd.random()}", direction, ["lead"], 5, LEASE)
        outcome = queue.Outcome()
        for entry in entries:
            pick = rnd.random()
            if pick < 0.5:
                outcome.done.append(queue.Done(entry, crm_id=entry.crm_id or "g"))
            elif pick < 0.7:
                outcome.failed.append(queue.Failed(entry, "0x80040333", "duplicate"))
            else:
                outcome.failed.append(queue.Failed(entry, "http_503", "busy", retry_at=utcnow()))
        queue.record(engine, outcome)
        if rnd.random() < 0.2:
            with write_transaction(engine) as conn:
                sync_errors.retry_matching(conn, sync_errors.make_filters(STANDARD_OBJECTS))

    def stage(rnd: random.Random) -> None:
        with write_transaction(engine) as conn:
            inbound.stage(
                conn,
                [
                    from_crm(
                        f"k{rnd.randint(1, 20)}",
                        rnd.choice(["insert", "update", "delete"]),
                        rnd.randint(1, 10**6),
                    )
                ],
            )

    def compact(rnd: random.Random) -> None:
        folds[0] += compact_counts(engine)
        time.sleep(rnd.random() * 0.01)

    loops = [capture, capture, capture, work, work, stage, compact, compact]
    threads = [threading.Thread(target=guarded(fn), args=(k,)) for k, fn in enumerate(loops)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures
    assert folds[0] > 0  # compactions did fold rows written concurrently
    read = counts(engine)  # with the log's unfolded tail counted as folded
    fold_pending(engine)
    assert truth(engine)  # something is left to count
    assert read == truth(engine) == counts(engine)
    with write_transaction(engine) as conn:
        backlog_counts.compact(conn)
    assert counts(engine) == truth(engine)


# --- upkeep ----------------------------------------------------------------------------


async def test_serve_folds_the_counts_between_its_rounds(
    db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from crmsync.config import load_settings
    from crmsync.web import health
    from crmsync.web.app import create_app

    monkeypatch.setattr(health, "COMPACT_SECONDS", 0.05)
    # The next full round (maintain, alerts) is an hour away: only the folds run.
    app = create_app(load_settings(database_url=db_url, ops_interval_seconds=3600), engine=engine)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.2)
        for i in range(1, 4):
            run(engine, "INSERT INTO lead (id, email) VALUES (:i, 'f' || :i)", i=i)
        for _ in range(200):
            if count_rows(engine) == 1:
                break
            await asyncio.sleep(0.05)
    assert count_rows(engine) == 1
    assert counts(engine) == {LEAD_INSERT: 3}


def test_a_large_fold_gives_postgresql_pages_back(engine: sa.Engine) -> None:
    """Reads scan the whole table: a bulk load's fold must not leave it mostly empty."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite reads only live pages")
    run(
        engine,
        "INSERT INTO sync_queue (object, direction, record_key, operation, state,"
        " first_queued_at, last_changed_at, next_attempt_at) SELECT 'lead', 'to_crm',"
        " i::text, 'insert', 'pending', now(), now(), now() FROM generate_series(1, 20000) i",
    )
    assert compact_counts(engine) == 19_999
    with engine.connect() as conn:
        pages = conn.execute(
            sa.text("SELECT pg_relation_size('sync_backlog_count') / 8192")
        ).scalar_one()
    assert pages <= 2  # from ~150 pages of dead rows
    assert counts(engine) == {LEAD_INSERT: 20_000} == truth(engine)
