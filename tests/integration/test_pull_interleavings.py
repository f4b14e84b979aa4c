"""Staging reads what the store knows about pulled ids while other workers commit.

A pull stages a page by asking the store what it knows about each Dynamics id
(``load_known``): a local row holding the id, or a push in flight that chose it. A push
finishing moves the id from its queue entry to its local row in one commit; a local
delete of a synced record removes the row and queues a delete in one commit. Each test
commits such a change from another connection right after the store has answered the
first statement of ``load_known``, or of the apply's ``load_context`` (an
``after_cursor_execute`` hook), which is where PostgreSQL's READ COMMITTED let two
separate reads see the record in neither place.
On SQLite the stage's write transaction (``BEGIN IMMEDIATE``) excludes other writers,
so the interleaving cannot happen there; the tests then check the plain answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from crmsync.config import Settings
from crmsync.dynamics.pages import ChangePage
from crmsync.engine import changes as ch
from crmsync.engine.apply import Applier
from crmsync.engine.pull import Puller, entry_row
from crmsync.store import capture, queue
from crmsync.store.apply import load_context
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.inbound import known_ids, load_known, vanished
from crmsync.store.schema import sync_queue
from crmsync.store.types import utcnow
from crmsync.values import Known

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
        capture.fold(conn)
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


@pytest.mark.parametrize("folded", [False, True])
def test_a_local_delete_on_its_way_is_known_to_a_full_read(
    engine: sa.Engine, settings: Settings, folded: bool
) -> None:
    """Initial load and reconciliation: a record deleted locally whose delete is still
    in the capture log (or already queued) is known, not a new record to insert."""
    with write_transaction(engine) as conn, capture_suppressed(conn):
        conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('gone@example.com', :c)"),
            {"c": CRM_ID},
        )
    with write_transaction(engine) as conn:
        conn.execute(sa.text("DELETE FROM lead"))
    if folded:
        capture.fold_pending(engine)
    with engine.connect() as conn:
        known_now, _ = known_ids(conn, settings.object_specs()["lead"], [CRM_ID])
    assert known_now == {CRM_ID}


@pytest.mark.parametrize("where", ["nowhere", "log", "queue"])
def test_a_record_with_a_local_change_on_its_way_has_not_vanished(
    engine: sa.Engine, settings: Settings, where: str
) -> None:
    """Reconciliation deletes local records a full read no longer returns, except those
    whose local change is on its way (in the capture log or the queue): its push
    decides."""
    with write_transaction(engine) as conn, capture_suppressed(conn):
        lead_id = conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('v@example.com', :c) RETURNING id"),
            {"c": CRM_ID},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO sync_record (object, record_id, crm_id, last_synced_at,"
                " synced_values) VALUES ('lead', :i, :c, :t, '{}')"
            ),
            {"i": lead_id, "c": CRM_ID, "t": "2000-01-01 00:00:00.000000"},
        )
    if where != "nowhere":
        with write_transaction(engine) as conn:
            conn.execute(sa.text("UPDATE lead SET last_name = 'Local'"))
    if where == "queue":
        capture.fold_pending(engine)
    with engine.connect() as conn:
        gone = vanished(conn, settings.object_specs()["lead"], set(), utcnow())
    assert gone == ([(lead_id, CRM_ID)] if where == "nowhere" else [])


def test_a_local_change_still_in_the_capture_log_is_a_push_to_apply(
    engine: sa.Engine, settings: Settings
) -> None:
    """Applying folds the log first; a local change committed after that fold is read
    from the log, so the conflict check still sees a push on its way."""
    with write_transaction(engine) as conn, capture_suppressed(conn):
        lead_id = conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('l@example.com', :c) RETURNING id"),
            {"c": CRM_ID},
        ).scalar_one()
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'Local' WHERE id = :i"), {"i": lead_id})
    entry = queue.Entry(
        id=1,
        object="lead",
        direction="from_crm",
        record_key=CRM_ID,
        record_id=None,
        crm_id=CRM_ID,
        operation="update",
        label=None,
        payload={},
        version=1,
        attempts=0,
        first_queued_at=utcnow(),
    )
    with engine.connect() as conn:
        ctx = load_context(conn, settings.object_specs(), [entry], utcnow())
    push = ctx.pushes.get(("lead", lead_id))
    assert push is not None and not push.claimed
    # Folded, it is the queued entry that says so, at the same change time.
    capture.fold_pending(engine)
    with engine.connect() as conn:
        folded = load_context(conn, settings.object_specs(), [entry], utcnow())
    again = folded.pushes[("lead", lead_id)]
    assert (again.claimed, again.changed_at, again.logged_up_to) == (False, push.changed_at, None)


OWN_USER = "0a0a0a0a-0000-4000-8000-000000000001"
SOMEONE = "0b0b0b0b-0000-4000-8000-000000000002"


@pytest.mark.parametrize(
    ("modified_by", "force"),
    [(OWN_USER, False), (SOMEONE, False), (SOMEONE, True)],
    ids=["own-echo", "their-change", "refetch"],
)
def test_a_page_read_before_a_pushed_delete_does_not_bring_the_record_back(
    engine: sa.Engine, settings: Settings, modified_by: str, force: bool
) -> None:
    """Issue 16 item 1. A pull reads a page holding a synced lead (crmsync's own echo,
    someone's change, or a refetch after a 412); meanwhile the application deletes the
    lead and another worker pushes the delete and pulls past it (Dynamics reports it
    deleted); then the first pull stages its page. The store no longer knows the id
    (row, entry and sync state are gone): it must remember crmsync deleted it, and the
    record must stay deleted on both sides, with nothing staged."""
    spec = settings.object_specs()["lead"]
    with write_transaction(engine) as conn, capture_suppressed(conn):
        lead_id = conn.execute(
            sa.text("INSERT INTO lead (email, crm_id) VALUES ('e@example.com', :c) RETURNING id"),
            {"c": CRM_ID},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO sync_record (object, record_id, crm_id, crm_version,"
                " last_synced_at, synced_values) VALUES ('lead', :i, :c, 5, :t, '{}')"
            ),
            {"i": lead_id, "c": CRM_ID, "t": "2026-01-01 00:00:00.000000"},
        )
    # The first pull's page, read from Dynamics before the delete.
    row = {a: None for a in ch.pulled_fields(spec).values()}
    row.update(
        {
            spec.primary_key: CRM_ID,
            spec.fields["email"]: "e@example.com",
            ch.MODIFIED_BY: modified_by,
            ch.VERSION: 6,
            ch.MODIFIED_ON: "2026-01-02T00:00:00Z",
        }
    )
    page = ChangePage(rows=[row], deleted_ids=[])

    # Meanwhile: the application deletes the lead, another worker pushes the delete...
    with write_transaction(engine) as conn:
        conn.execute(sa.text("DELETE FROM lead WHERE id = :i"), {"i": lead_id})
    capture.fold_pending(engine)
    claimed = queue.claim(engine, "other", "to_crm", ["lead"], 10, timedelta(seconds=60))
    assert [(e.operation, e.crm_id) for e in claimed] == [("delete", CRM_ID)]
    queue.record(engine, queue.Outcome(done=[queue.Done(claimed[0], crm_id=CRM_ID)]))
    # ... and pulls past it: Dynamics reports the lead deleted (nothing to stage).
    other = Puller(engine, None, settings)  # type: ignore[arg-type]  # staging needs no client
    other.own_user = OWN_USER
    assert (
        other._stage_page(spec, ChangePage(rows=[], deleted_ids=[CRM_ID]), None, None, utcnow())
        == 0
    )

    # Then the first pull stages its page.
    first = Puller(engine, None, settings)  # type: ignore[arg-type]
    first.own_user = OWN_USER
    staged = first._stage_page(spec, page, None, None, utcnow(), force=force)
    Applier(engine, settings, "first").apply_batch_sync()

    with engine.connect() as conn:
        leads = conn.execute(sa.text("SELECT count(*) FROM lead")).scalar_one()
        entries = conn.execute(sa.select(sync_queue.c.direction, sync_queue.c.state)).all()
    assert (staged, leads, entries) == (0, 0, [])


def test_a_full_read_page_from_before_a_pushed_delete_does_not_insert_it(
    engine: sa.Engine, settings: Settings
) -> None:
    """The same interleaving for an initial load or reconciliation: a record crmsync
    deleted is known to the full read (``known_ids``), not a new record."""
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_tombstone (object, crm_id, deleted_at) VALUES ('lead', :c, :t)"
            ),
            {"c": CRM_ID, "t": "2026-01-01 00:00:00.000000"},
        )
    with engine.connect() as conn:
        known_now, _ = known_ids(conn, settings.object_specs()["lead"], [CRM_ID])
    assert known_now == {CRM_ID}


# --- applying while a local change moves on -------------------------------------------
#
# A local change goes from the capture log to the queue (a fold, one commit) and from
# the queue to the sync state (a push's outcome, one commit). The apply's reads of where
# it might be (``load_context``) must see it somewhere whatever commits between them,
# and the local row must not change under the plan: each test commits from another
# connection right after the n-th statement of ``load_context`` (PostgreSQL only: on
# SQLite the apply's write transaction keeps every other writer out).

SYNCED_VERSION = 100


def _a_synced_lead(engine: sa.Engine) -> int:
    """A lead synced at ``SYNCED_VERSION`` with last name 'Synced'."""
    with write_transaction(engine) as conn, capture_suppressed(conn):
        lead_id = conn.execute(
            sa.text(
                "INSERT INTO lead (email, last_name, crm_id) VALUES ('s@example.com', 'Synced',"
                " :c) RETURNING id"
            ),
            {"c": CRM_ID},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO sync_record (object, record_id, crm_id, etag, last_synced_at,"
                " synced_values) VALUES ('lead', :i, :c, :e, :t, :v)"
            ),
            {
                "i": lead_id,
                "c": CRM_ID,
                "e": f'W/"{SYNCED_VERSION}"',
                "t": "2026-01-01 00:00:00.000000",
                "v": '{"email": "s@example.com", "last_name": "Synced"}',
            },
        )
    return lead_id


def _from_crm(
    engine: sa.Engine, settings: Settings, lead_id: int, version: int, name: str, **extra: Any
) -> None:
    """Queue a ``from_crm`` update of the lead at ``version`` with last name ``name``."""
    change = ch.Change(
        crm_id=CRM_ID,
        values={"email": "s@example.com", "last_name": name},
        lookups={},
        version=version,
        modified_at="2026-01-01T00:00:00Z",
        **extra,
    )
    row = entry_row(settings.object_specs()["lead"], change, "update", Known(lead_id), utcnow())
    with write_transaction(engine) as conn:
        conn.execute(sa.insert(sync_queue), [row])


@contextmanager
def inside_load_context(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, after: int, commit: Callable[[], None]
) -> Iterator[list[int]]:
    """Run ``commit`` once the ``after``-th statement of ``load_context`` has executed;
    yields the count of its statements (to check that it fired)."""
    from crmsync.store import apply as store_apply

    inside = False
    seen = [0]
    real = store_apply.load_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside
        inside = True
        try:
            return real(*args, **kwargs)
        finally:
            inside = False

    def hook(*_: Any) -> None:
        if inside:
            seen[0] += 1
            if seen[0] == after:
                commit()

    monkeypatch.setattr(store_apply, "load_context", counting)
    event.listen(engine, "after_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", hook)


def _last_name(engine: sa.Engine, lead_id: int) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                sa.text("SELECT last_name FROM lead WHERE id = :i"), {"i": lead_id}
            ).scalar_one()
        )


def _between_reads_on_postgresql(engine: sa.Engine, after: int) -> None:
    if after and engine.dialect.name != "postgresql":
        pytest.skip("SQLite's write transaction keeps other writers out of an apply")


@pytest.mark.parametrize("read_back", [True, False], ids=["read-back", "not-read-back"])
@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
def test_a_push_finishing_while_applying_keeps_its_change(
    engine: sa.Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    after: int,
    read_back: bool,
) -> None:
    """A resync from Dynamics at the synced version while the local change 'Waiting' is
    pushed. The push's outcome (entry gone, sync state at the pushed values) commits
    before the apply or between two of its reads; its new version is read back, or not
    (someone wrote after it: the version known before stays the synced one). Read back,
    the apply must see the change queued or synced since and never put Dynamics' older
    'Synced' over it. Not read back, the read and the sync state are at one version and
    nothing tells a read before the push from one after it that a plugin changed (a
    resync must take that one), so 'Synced' may come back for a moment; the pull of the
    push's own version, which always follows, must then bring 'Waiting' back."""
    _between_reads_on_postgresql(engine, after)
    lead_id = _a_synced_lead(engine)
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'Waiting' WHERE id = :i"), {"i": lead_id})
    capture.fold_pending(engine)
    _from_crm(engine, settings, lead_id, SYNCED_VERSION, "Synced", resync=True)
    other = sa.create_engine(engine.url) if after else engine

    def push_finishes() -> None:
        with write_transaction(other) as conn:
            conn.execute(sa.delete(sync_queue).where(sync_queue.c.direction == "to_crm"))
            conn.execute(
                sa.text(
                    "UPDATE sync_record SET etag = :e, synced_values = :v, last_synced_at = :t"
                ),
                {
                    "e": f'W/"{SYNCED_VERSION + read_back}"',
                    "v": '{"email": "s@example.com", "last_name": "Waiting"}',
                    "t": utcnow(),
                },
            )

    if after == 0:
        push_finishes()
    try:
        with inside_load_context(engine, monkeypatch, after, push_finishes) as seen:
            while Applier(engine, settings, "w").apply_batch_sync():
                pass  # a deferred entry comes back once the push is over
            assert seen[0] >= after
    finally:
        if other is not engine:
            other.dispose()
    if not read_back:
        _from_crm(engine, settings, lead_id, SYNCED_VERSION + 1, "Waiting", own_write=True)
        while Applier(engine, settings, "w").apply_batch_sync():
            pass
    assert _last_name(engine, lead_id) == "Waiting"


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
def test_a_fold_while_applying_keeps_the_change_a_push(
    engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """A Dynamics change of the last name while a local one waits in the capture log
    (committed after the apply's own fold): if another process's fold moves it to the
    queue between two reads, the apply still sees a push waiting, so the two changes are
    a conflict, settled and journaled, never a record with nothing waiting whose local
    change Dynamics' value silently replaces."""
    _between_reads_on_postgresql(engine, after)
    lead_id = _a_synced_lead(engine)
    _from_crm(engine, settings, lead_id, SYNCED_VERSION + 1, "Theirs")
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'Mine' WHERE id = :i"), {"i": lead_id})
    fold = capture.fold_pending
    monkeypatch.setattr(capture, "fold_pending", lambda *_, **__: None)  # the apply's own
    other = sa.create_engine(engine.url) if after else engine
    if after == 0:
        fold(other)
    try:
        with inside_load_context(engine, monkeypatch, after, lambda: fold(other)) as seen:
            assert Applier(engine, settings, "w").apply_batch_sync() == 1
            assert seen[0] >= after
    finally:
        if other is not engine:
            other.dispose()
    with engine.connect() as conn:
        conflicts = conn.execute(sa.text("SELECT count(*) FROM sync_conflict")).scalar_one()
    assert conflicts == 1


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
def test_a_local_change_while_applying_is_not_lost(
    engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """The application changes the last name while a Dynamics change of it is applied:
    committed before the apply read the row, it is a conflict (journaled); after, it
    waits for the apply's lock on the row and is then a local change to push. Never
    read as a change on its way of a row whose older values the plan compares, which
    would take Dynamics' value and drop the change as moot."""
    _between_reads_on_postgresql(engine, after)
    lead_id = _a_synced_lead(engine)
    _from_crm(engine, settings, lead_id, SYNCED_VERSION + 1, "Theirs")
    other = sa.create_engine(engine.url) if after else engine
    writer: list[threading.Thread] = []

    def local_change() -> None:
        with write_transaction(other) as conn:
            conn.execute(
                sa.text("UPDATE lead SET last_name = 'Mine' WHERE id = :i"), {"i": lead_id}
            )

    def meanwhile() -> None:
        writer.append(threading.Thread(target=local_change))
        writer[0].start()
        writer[0].join(timeout=0.5)  # committed at once, or waiting for the apply's lock

    if after == 0:
        local_change()
    try:
        with inside_load_context(engine, monkeypatch, after, meanwhile) as seen:
            assert Applier(engine, settings, "w").apply_batch_sync() == 1
            assert seen[0] >= after
        for t in writer:
            t.join(timeout=10)
            assert not t.is_alive()
    finally:
        if other is not engine:
            other.dispose()
    with engine.connect() as conn:
        conflicts = conn.execute(sa.text("SELECT count(*) FROM sync_conflict")).scalar_one()
    capture.fold_pending(engine)
    with engine.connect() as conn:
        pushes = conn.execute(
            sa.select(sa.func.count()).where(sync_queue.c.direction == "to_crm")
        ).scalar_one()
    name = _last_name(engine, lead_id)
    # Mine kept and on its way, or settled as a conflict by the rules (journaled).
    assert (name, pushes) == ("Mine", 1) or conflicts == 1, (name, pushes, conflicts)
