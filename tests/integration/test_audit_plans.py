"""The only-local pass hashes the seen ids instead of probing them once a local row
(docs/benchmarks.md, session 19).

PostgreSQL turns a NOT EXISTS into an anti-join only at the top level of the WHERE (not
inside an OR), and chooses the hash only on statistics that know how many ids were
seen, so the audit analyses them first (``store.audit.analyse_seen``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.mapping import activate
from crmsync.store import audit as store_audit
from crmsync.store.db import read_transaction, suppress_capture, write_transaction
from crmsync.store.schema import sync_audit_seen, sync_record

ROWS = 30_000
JOB = 7


def _seed(engine: Engine) -> set[int]:
    """Synced leads, every one seen but every 1,000th; returns those ids, plus a row
    never in Dynamics (no id, no sync state)."""
    ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(ROWS)]
    with write_transaction(engine) as conn:
        suppress_capture(conn)
        conn.execute(
            sa.text("INSERT INTO lead (id, crm_id, email, last_name) VALUES (:id, :c, :e, 'L')"),
            [{"id": i + 1, "c": c, "e": f"a{i}@x.org"} for i, c in enumerate(ids)],
        )
        conn.execute(
            sa.text("INSERT INTO lead (id, email, last_name) VALUES (:id, 'new@x.org', 'N')"),
            {"id": ROWS + 1},
        )
        conn.execute(
            sa.insert(sync_record),
            [
                {
                    "object": "lead",
                    "record_id": i + 1,
                    "crm_id": c,
                    "crm_version": 1,
                    "last_synced_at": datetime(2026, 11, 1, tzinfo=UTC),
                    "synced_values": {},
                }
                for i, c in enumerate(ids)
            ],
        )
    with write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            # The application's table as autovacuum leaves it; the seen ids as the scan
            # begins: none.
            conn.execute(sa.text("ANALYZE lead"))
            conn.execute(sa.text("ANALYZE sync_audit_seen"))
        conn.execute(
            sa.insert(sync_audit_seen),
            [
                {"job_id": JOB, "object": "lead", "crm_id": c, "version": 1}
                for i, c in enumerate(ids)
                if i % 1000
            ],
        )
    return {i + 1 for i in range(0, ROWS, 1000)} | {ROWS + 1}


def test_only_local_finds_the_unseen_and_the_never_synced_by_an_anti_join(
    engine: Engine,
) -> None:
    spec = load_settings().object_specs()["lead"]
    activate({"lead": spec})
    expected = _seed(engine)
    store_audit.analyse_seen(engine)
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "sync_audit_seen" in statement:
            statements.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with read_transaction(engine) as conn:
            rows = store_audit.only_local(conn, JOB, spec, 0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert {r["id"] for r in rows} == expected
    assert {r["synced"] for r in rows if r["id"] != ROWS + 1} == {True}
    if engine.dialect.name != "postgresql":
        return
    ((statement, params),) = statements
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        plan = "\n".join(r[0] for r in raw.execute("EXPLAIN " + statement, params))
    # The seen ids are joined once (a hash or merge anti-join), not probed per row.
    assert "Hash Anti Join" in plan or "Merge Anti Join" in plan, plan
    assert "SubPlan" not in plan.split("sync_audit_seen")[0].rsplit("->", 1)[-1], plan


@pytest.fixture(autouse=True)
def _mapping() -> Any:
    yield
    from crmsync.mapping import default_objects

    activate(default_objects())
