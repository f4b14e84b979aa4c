"""``crmsync worker --once --dry-run`` prints the plan for every waiting change and
changes nothing: no claim, no fold, no id chosen, no request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.store.capture import fold_pending
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_change, sync_queue, sync_record

SYNCED = "00000000-0000-0000-0000-000000000007"


def _snapshot(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.select(sync_change).order_by(sync_change.c.seq)).all(),
            conn.execute(sa.select(sync_queue).order_by(sync_queue.c.id)).all(),
            conn.execute(sa.text("SELECT id, crm_id FROM lead ORDER BY id")).all(),
        )


def test_dry_run_plans_queued_and_unfolded_changes_and_writes_nothing(
    db_url: str, engine: Engine
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO lead (id, email, last_name, crm_id) VALUES (7, 'old@x', 'O', :c)"),
            {"c": SYNCED},
        )
    fold_pending(engine)
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(sync_queue))
        conn.execute(
            sa.insert(sync_record).values(
                object="lead",
                record_id=7,
                crm_id=SYNCED,
                etag='W/"41"',
                last_synced_at=sa.func.now(),
                synced_values={},
            )
        )
        conn.execute(sa.text("INSERT INTO lead (id, email, last_name) VALUES (1, 'a@x', 'A')"))
    fold_pending(engine)  # lead 1 is queued; the next changes stay in the log
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'New' WHERE id = 7"))
        conn.execute(sa.text("INSERT INTO lead (id, email, last_name) VALUES (2, 'b@x', 'B')"))
        conn.execute(sa.text("INSERT INTO contact (id, email, account_id) VALUES (3, 'c@x', 99)"))
    before = _snapshot(engine)
    result = CliRunner().invoke(
        app, ["worker", "--once", "--dry-run"], env={"CRMSYNC_DATABASE_URL": db_url}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "lead 1 (insert): upsert leads(a new id) {emailaddress1='a@x'" in "\n".join(lines)
    assert "lead 2 (insert): upsert leads(a new id)" in result.output
    assert f'lead 7 (update): update leads({SYNCED}) If-Match: W/"41"' in result.output
    assert "lastname='New'" in result.output
    assert "contact 3 (insert): not sent, crmsync.missing_reference" in result.output
    assert lines[-1] == "4 waiting change(s) planned; nothing was sent"
    assert _snapshot(engine) == before


def test_dry_run_leaves_out_what_waits_for_its_retry_and_shows_what_the_fold_makes_due(
    db_url: str, engine: Engine
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (id, email) VALUES (1, 'later@x'), (2, 'bad@x')"))
    fold_pending(engine)
    with write_transaction(engine) as conn:  # 1 backs off after a 503; 2 is parked
        conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.record_id == 1)
            .values(attempts=3, next_attempt_at=datetime.now(UTC) + timedelta(hours=1))
        )
        conn.execute(
            sa.update(sync_queue).where(sync_queue.c.record_id == 2).values(state="parked")
        )
        conn.execute(sa.text("UPDATE lead SET last_name = 'again' WHERE id IN (1, 2)"))
    result = CliRunner().invoke(app, ["worker", "--dry-run"], env={"CRMSYNC_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    assert "lead 1 " not in result.output  # the fold keeps its retry's schedule
    assert "lead 2 (insert): upsert leads(a new id)" in result.output  # parked, changed: due
    assert result.output.splitlines()[-1] == "1 waiting change(s) planned; nothing was sent"
