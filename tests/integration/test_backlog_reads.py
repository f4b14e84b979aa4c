"""Readers of the backlog count every committed change exactly, folded or not, and
never write: the capture log's unfolded tail is counted as the fold would queue it.

Each scenario writes with plain SQL while no worker runs (nothing folds), reads, then
folds and checks the read against a count of the queue itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.alerts import observe
from crmsync.cli import app as cli
from crmsync.config import load_settings
from crmsync.mapping import default_objects
from crmsync.store import backlog, status
from crmsync.store.capture import fold_pending
from crmsync.store.db import capture_suppressed, read_transaction, write_transaction
from crmsync.store.records import sync_state
from crmsync.store.schema import (
    sync_backlog_count,
    sync_backlog_sample,
    sync_change,
    sync_queue,
    sync_record,
)
from crmsync.web.app import create_app
from crmsync.web.health import _store_check
from crmsync.web.metrics import StoreCollector

OBJECTS = ["lead", "contact", "account", "opportunity"]


def sql(engine: Engine, statement: str, rows: list[dict[str, Any]] | None = None) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text(statement), rows or {})


def read(engine: Engine) -> dict[str, dict[str, Any]]:
    with read_transaction(engine) as conn:
        body = status.backlog(conn, OBJECTS)
    return {row["object"]: row for row in body["objects"]}


def queue_counts(engine: Engine) -> dict[str, tuple[int, int, int]]:
    """Inserts, updates and deletes per object, counted off the queue (after a fold)."""
    q = sync_queue.c
    out = {name: [0, 0, 0] for name in OBJECTS}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(q.object, q.operation, sa.func.count())
            .where(q.state == "pending")
            .group_by(q.object, q.operation)
        )
        for obj, op, n in rows:
            out[obj][("insert", "update", "delete").index(op)] = int(n)
    return {k: (a, b, c) for k, (a, b, c) in out.items()}


def shape(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    return {k: (r["inserts"], r["updates"], r["deletes"]) for k, r in rows.items()}


def synced_leads(engine: Engine, n: int) -> None:
    """``n`` leads already in Dynamics: a Dynamics id on the row and a sync record,
    nothing queued (as a finished push leaves them)."""
    sql(
        engine,
        "INSERT INTO lead (id, email, last_name, crm_id) VALUES (:i, :e, 'x', :c)",
        [
            {"i": i, "e": f"s{i}@example.com", "c": f"{i:08d}-0000-0000-0000-000000000000"}
            for i in range(1, n + 1)
        ],
    )
    fold_pending(engine)
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(sync_queue))
        conn.execute(
            sa.insert(sync_record),
            [
                {
                    "object": "lead",
                    "record_id": i,
                    "crm_id": f"{i:08d}-0000-0000-0000-000000000000",
                    "last_synced_at": datetime(2026, 11, 1, tzinfo=UTC),
                    "synced_values": {},
                }
                for i in range(1, n + 1)
            ],
        )


def test_a_bulk_load_with_no_worker_is_counted_exactly(engine: Engine) -> None:
    synced_leads(engine, 300)
    # 2,000 new leads in one statement, as an import would write them.
    sql(
        engine,
        "INSERT INTO lead (id, email, last_name) VALUES (:i, :e, 'n')",
        [{"i": 1000 + i, "e": f"n{i}@example.com"} for i in range(2000)],
    )
    sql(engine, "UPDATE lead SET last_name = 'u' WHERE id <= 200")  # synced: updates
    sql(engine, "DELETE FROM lead WHERE id > 250 AND id <= 300")  # synced: deletes
    rows = read(engine)
    assert shape(rows)["lead"] == (2000, 200, 50)
    assert rows["lead"]["total"] == 2250
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == (2000, 200, 50)
    assert shape(read(engine))["lead"] == (2000, 200, 50)


def test_several_changes_to_one_record_count_once_as_folded(engine: Engine) -> None:
    synced_leads(engine, 4)
    sql(engine, "INSERT INTO lead (id, email) VALUES (10, 'a@x'), (11, 'b@x'), (12, 'c@x')")
    sql(engine, "UPDATE lead SET last_name = 'one' WHERE id IN (10, 1, 2, 3)")
    sql(engine, "UPDATE lead SET last_name = 'two' WHERE id IN (10, 1, 2, 3)")
    sql(engine, "DELETE FROM lead WHERE id IN (11, 2)")  # never synced: nothing; synced: delete
    sql(engine, "UPDATE lead SET last_name = 'three' WHERE id = 12")
    # 10 and 12: inserts however often changed; 11: inserted and deleted unsynced, nothing;
    # 1 and 3: one update each; 2: updated then deleted, one delete.
    assert shape(read(engine))["lead"] == (2, 2, 1)
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == (2, 2, 1)


def test_a_parked_record_changed_again_counts_as_waiting(engine: Engine) -> None:
    synced_leads(engine, 2)
    sql(engine, "UPDATE lead SET last_name = 'bad' WHERE id IN (1, 2)")
    fold_pending(engine)
    with write_transaction(engine) as conn:
        conn.execute(sa.update(sync_queue).values(state="parked"))
    assert read(engine)["lead"]["total"] == 0  # parked errors are not backlog
    sql(engine, "UPDATE lead SET last_name = 'fixed' WHERE id = 1")
    with read_transaction(engine) as conn:
        spec = default_objects()["lead"]
        assert sync_state(conn, spec, 1).state == "pending"
        assert sync_state(conn, spec, 2).state == "error"
    assert shape(read(engine))["lead"] == (0, 1, 0)
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == (0, 1, 0)


def test_the_oldest_waiting_record_comes_from_the_log_too(engine: Engine) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    sql(engine, "INSERT INTO lead (id, email) VALUES (1, 'first@x')")
    fold_pending(engine)
    with write_transaction(engine) as conn:
        conn.execute(sa.update(sync_queue).values(first_queued_at=old))
    sql(engine, "INSERT INTO lead (id, email) VALUES (2, 'second@x')")
    with read_transaction(engine) as conn:
        details = status.details(conn, "lead")
    assert details["inserts"]["pending"] == 2
    assert details["inserts"]["oldest"]["record_id"] == 1
    # The oldest entry is deleted before it ever synced: the fold will drop it, so the
    # oldest waiting insert is the one still in the log.
    sql(engine, "DELETE FROM lead WHERE id = 1")
    with read_transaction(engine) as conn:
        details = status.details(conn, "lead")
        oldest = status.oldest_waiting(conn, OBJECTS)
    assert details["inserts"]["pending"] == 1
    assert details["inserts"]["oldest"]["record_id"] == 2
    assert details["inserts"]["oldest"]["label"] == "second@x"
    assert oldest["lead"] > old + timedelta(hours=1)


def _footprint(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in (sync_change, sync_queue, sync_backlog_count, sync_backlog_sample)
        )


async def test_no_reader_folds_or_writes(db_url: str, engine: Engine) -> None:
    sql(
        engine,
        "INSERT INTO lead (email, last_name) VALUES (:e, 'n')",
        [{"e": f"r{i}@example.com"} for i in range(500)],
    )
    before = _footprint(engine)
    assert before[0] == 500 and before[1] == 0
    settings = load_settings(database_url=db_url, api_token="t0ken")
    web = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=web)
    auth = {"Authorization": "Bearer t0ken"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as client:
        assert (await client.get("/healthz")).status_code == 200
        body = (await client.get("/api/v1/sync/status")).json()
        assert {r["object"]: r["inserts"] for r in body["objects"]}["lead"] == 500
        assert (await client.get("/api/v1/sync/status/lead")).json()["inserts"]["pending"] == 500
        assert (await client.get("/api/v1/records/lead/1")).json()["sync"]["state"] == "pending"
        assert (await client.get("/metrics")).status_code == 200
    assert _store_check(engine, OBJECTS)[0] == "lead"
    assert list(StoreCollector(engine, OBJECTS).collect())
    with read_transaction(engine) as conn:
        assert observe(conn, OBJECTS, {"oldest_waiting_age": 1.0}, datetime.now(UTC))
        status.backlog(conn, OBJECTS)
        status.details(conn, "lead")
        status.last_hour(conn, OBJECTS, settings.zone)
    result = CliRunner().invoke(cli, ["status", "--json"], env={"CRMSYNC_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    assert '"inserts": 500' in result.output
    assert _footprint(engine) == before


def test_a_read_transaction_refuses_writes(engine: Engine) -> None:
    with pytest.raises(sa.exc.DBAPIError), read_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('no@x')"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar_one() == 0
    sql(engine, "INSERT INTO lead (email) VALUES ('yes@x')")  # the pool's connection writes again
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar_one() == 1


def test_queued_records_changed_again_read_exactly_on_either_plan(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every queued record changes again before the fold: the oldest waiting insert is
    still found (the queue's own candidates all have changes in the log), with the
    planner's choice of plans and with the merge joins of a large tail."""
    sql(
        engine,
        "INSERT INTO lead (id, email) VALUES (:i, :e)",
        [{"i": i, "e": f"q{i}@x"} for i in range(1, 301)],
    )
    fold_pending(engine)
    sql(engine, "UPDATE lead SET last_name = 'again'")
    for large in (10**9, 0):
        monkeypatch.setattr(backlog, "LARGE_TAIL", large)
        with read_transaction(engine) as conn:
            rows = {r["object"]: r for r in status.backlog(conn, OBJECTS)["objects"]}
            details = status.details(conn, "lead")
            if engine.dialect.name == "postgresql":
                assert conn.execute(sa.text("SHOW enable_nestloop")).scalar_one() == "on"
        assert (rows["lead"]["inserts"], rows["lead"]["updates"]) == (300, 0)
        assert details["inserts"]["oldest"]["record_id"] == 1
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == (300, 0, 0)


@pytest.fixture(params=["short", "long"])
def tail_plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The log read as a short tail (one statement) or as a long one (``LARGE_TAIL``
    exceeded: on SQLite split into plain and other records, on PostgreSQL streamed in
    record order), whatever its size."""
    if request.param == "long":
        monkeypatch.setattr(backlog, "LARGE_TAIL", 0)
    return str(request.param)


def oldest_of(engine: Engine) -> dict[tuple[str, str], Any]:
    with read_transaction(engine) as conn:
        return {(g.object, g.operation): g.oldest_queued_at for g in status.backlog_groups(conn)}


def test_every_kind_of_record_in_the_tail_counts_as_folded(engine: Engine, tail_plan: str) -> None:
    """One tail holding each case the fold tells apart, read on either plan, against
    hand-computed numbers and against the queue once folded (counts and oldest)."""
    synced_leads(engine, 8)
    # Queued before the tail: 200 and 201 pending inserts, 202 parked, 203 pending.
    sql(
        engine, "INSERT INTO lead (id, email) VALUES (200, 'a'), (201, 'b'), (202, 'c'), (203, 'd')"
    )
    fold_pending(engine)
    sql(engine, "UPDATE sync_queue SET state = 'parked' WHERE record_key = '202'")
    # 200's entry, changed again in the tail, is the oldest insert; 203's the next.
    old = datetime(2026, 11, 20, tzinfo=UTC)
    with write_transaction(engine) as conn:
        for key, at in (("200", old), ("203", old + timedelta(days=1))):
            conn.execute(
                sa.update(sync_queue)
                .where(sync_queue.c.record_key == key)
                .values(first_queued_at=at)
            )
    sql(engine, "INSERT INTO lead (id, email) VALUES (100, 'p'), (101, 'q'), (102, 'r')")
    sql(engine, "INSERT INTO lead (id, email) VALUES (103, 's'), (104, 't'), (105, 'u')")
    sql(engine, "UPDATE lead SET last_name = 'x1' WHERE id IN (103, 1, 2, 200, 202)")
    sql(engine, "UPDATE lead SET last_name = 'y' WHERE id IN (103, 2)")
    sql(engine, "DELETE FROM lead WHERE id IN (104, 3, 201)")  # unsynced: nothing; synced: delete
    sql(engine, "UPDATE lead SET last_name = 'z' WHERE id = 4")
    sql(engine, "DELETE FROM lead WHERE id = 4")
    # Changed in plain SQL without a pushed column (not logged): a Dynamics id given to
    # 105, 203's row gone; and 102's row gone under suppressed capture, as an apply would.
    sql(engine, "UPDATE lead SET crm_id = '00000000-0000-0000-0000-0000000000aa' WHERE id = 105")
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(sa.text("DELETE FROM lead WHERE id IN (102, 203)"))
    sql(engine, "UPDATE lead SET last_name = 'w' WHERE id = 5")
    sql(engine, "UPDATE lead SET email = 'changed' WHERE id = 6")
    # 7 and 8 lose the Dynamics id on the row (not logged), kept by their sync state.
    sql(engine, "UPDATE lead SET crm_id = NULL WHERE id IN (7, 8)")
    sql(engine, "UPDATE lead SET last_name = 'v' WHERE id = 7")
    sql(engine, "DELETE FROM lead WHERE id = 8")
    # Inserts: 100, 101, 103 (changed three times), 200 (queued, changed), 202 (parked,
    # changed); 203 stays queued though its row is gone. Updates: 1, 2 (twice), 5, 6,
    # 7, 105 (its Dynamics id). Deletes: 3, 4 (updated first), 8.
    read_counts = shape(read(engine))["lead"]
    read_oldest = oldest_of(engine)
    assert read_counts == (6, 6, 3)
    assert read_oldest[("lead", "insert")] == old
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == read_counts
    assert oldest_of(engine) == read_oldest


def test_a_long_tail_of_plain_inserts_counts_once_and_oldest_first(
    engine: Engine, tail_plan: str
) -> None:
    sql(
        engine,
        "INSERT INTO lead (id, email) VALUES (:i, :e)",
        [{"i": i, "e": f"b{i}@x"} for i in range(1, 1201)],
    )
    sql(engine, "UPDATE lead SET last_name = 'again' WHERE id > 1100")
    rows = read(engine)
    assert shape(rows)["lead"] == (1200, 0, 0)
    read_oldest = oldest_of(engine)
    fold_pending(engine)
    assert queue_counts(engine)["lead"] == (1200, 0, 0)
    assert oldest_of(engine) == read_oldest


def test_a_long_tail_no_statistics_describe_is_merged_in_record_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk load no ANALYZE has seen yet (the planner believes the log and the tables
    a few hundred rows long): every statement of the backlog reads is planned without
    hashing or bitmap-scanning the tail, which went through temporary files at a
    million records (2.3 s a read where the merge in record order takes 1.2)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the plans of a long tail are chosen on PostgreSQL only")
    n = backlog.LARGE_TAIL * 3
    sql(
        engine,
        "INSERT INTO lead (id, email) VALUES (:i, :e)",
        [{"i": i, "e": f"t{i}@x"} for i in range(1, n + 1)],
    )
    fold_pending(engine)
    sql(engine, "UPDATE lead SET last_name = 'again' WHERE id % 2 = 0")
    sql(
        engine,
        "INSERT INTO lead (id, email) VALUES (:i, :e)",
        [{"i": i, "e": f"t{i}@x"} for i in range(n + 1, 2 * n + 1)],
    )
    plans: list[str] = []
    inside = [False]
    real = backlog._plans_for_tail

    @contextmanager
    def marking(conn: Any) -> Iterator[int]:
        with real(conn) as size:
            inside[0] = size > backlog.LARGE_TAIL
            try:
                yield size
            finally:
                inside[0] = False

    def explain(_c: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if inside[0] and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            with cursor.connection.cursor() as other:
                other.execute("EXPLAIN " + statement, parameters)
                plans.append("\n".join(str(r[0]) for r in other.fetchall()))

    monkeypatch.setattr(backlog, "_plans_for_tail", marking)
    sa.event.listen(engine, "before_cursor_execute", explain)
    try:
        with read_transaction(engine) as conn:
            rows = {r["object"]: r for r in status.backlog(conn, OBJECTS)["objects"]}
            status.details(conn, "lead")
    finally:
        sa.event.remove(engine, "before_cursor_execute", explain)
    assert (rows["lead"]["inserts"], rows["lead"]["updates"]) == (2 * n, 0)
    joined = [p for p in plans if "Join" in p or "Nested Loop" in p]
    assert joined, plans
    assert not [p for p in plans if "Hash Join" in p or "Bitmap" in p], plans
