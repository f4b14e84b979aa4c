"""Staging reads what the store knows about pulled ids while other workers commit.

A pull stages a page by asking the store what it knows about each Dynamics id
(``load_known``): a local row holding the id, or a push in flight that chose it. A push
finishing moves the id from its queue entry to its local row in one commit; a local
delete of a synced record removes the row and queues a delete in one commit. Each test
commits such a change from another connection right after the store has answered the
first statement of ``load_known`` (an ``after_cursor_execute`` hook), which is where
PostgreSQL's READ COMMITTED let two separate reads see the record in neither place.
On SQLite the stage's write transaction (``BEGIN IMMEDIATE``) excludes other writers,
so the interleaving cannot happen there; the tests then check the plain answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from crmsync.config import Settings
from crmsync.engine import changes as ch
from crmsync.engine.pull import load_known
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_queue

CRM_ID = "5f0e8c1a-1d2b-4c3d-8e9f-0a1b2c3d4e5f"


@contextmanager
def after_first_statement(engine: sa.Engine, commit: Callable[[], None]) -> Iterator[None]:
    """Run ``commit`` (on another connection) once the first statement has executed."""
    fired = False

    def hook(*_: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            commit()

    event.listen(engine, "after_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(engine, "after_cursor_execute", hook)


def known(engine: sa.Engine, settings: Settings, commit: Callable[[], None]) -> ch.Known | None:
    spec = settings.object_specs()["lead"]
    if engine.dialect.name == "sqlite":
        commit()  # a writer cannot get in between on SQLite: it commits before or after
        with write_transaction(engine) as conn:
            return load_known(conn, spec, [CRM_ID]).get(CRM_ID)
    with write_transaction(engine) as conn, after_first_statement(engine, commit):
        return load_known(conn, spec, [CRM_ID]).get(CRM_ID)


def test_a_push_finishing_meanwhile_is_still_known(engine: sa.Engine, settings: Settings) -> None:
    with write_transaction(engine) as conn:
        lead_id = conn.execute(
            sa.text("INSERT INTO lead (email) VALUES ('own@example.com') RETURNING id")
        ).scalar_one()
        # The worker chose the id and sent the record: the entry carries the id.
        conn.execute(sa.update(sync_queue).values(crm_id=CRM_ID))
    other = sa.create_engine(engine.url) if engine.dialect.name != "sqlite" else engine

    def push_finishes() -> None:
        with write_transaction(other) as conn, capture_suppressed(conn):
            conn.execute(
                sa.text("UPDATE lead SET crm_id = :c WHERE id = :i"), {"c": CRM_ID, "i": lead_id}
            )
            conn.execute(sa.delete(sync_queue))

    k = known(engine, settings, push_finishes)
    # Not known would stage crmsync's own record as a new one from Dynamics.
    assert k is not None and k.record_id == lead_id
    if other is not engine:
        other.dispose()


def test_a_local_delete_meanwhile_is_still_known(engine: sa.Engine, settings: Settings) -> None:
    with write_transaction(engine) as conn, capture_suppressed(conn):
        lead_id = conn.execute(
            sa.text(
                "INSERT INTO lead (email, crm_id) VALUES ('gone@example.com', :c) RETURNING id"
            ),
            {"c": CRM_ID},
        ).scalar_one()
    other = sa.create_engine(engine.url) if engine.dialect.name != "sqlite" else engine

    def deleted_locally() -> None:
        with write_transaction(other) as conn:
            conn.execute(sa.text("DELETE FROM lead WHERE id = :i"), {"i": lead_id})

    k = known(engine, settings, deleted_locally)
    # Known as the row (before the delete) or as a pending delete (after), never as
    # nothing: a change from Dynamics would be staged as a new record and the deleted
    # record would come back while its delete is on its way (reading the queue first,
    # then the rows, would do that).
    assert k is not None and k.record_id == lead_id
    if other is not engine:
        other.dispose()
