"""The initial load's bulk path (``engine/load.py``) on real SQLite and PostgreSQL: what
it inserts, with which sync state, and what it leaves to the ordinary (queued) path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.engine import load
from crmsync.store import inbound
from crmsync.store.db import write_transaction
from crmsync.store.schema import lead, sync_queue, sync_record, sync_throughput

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ACCOUNT = "aaaaaaaa-0000-0000-0000-00000000000a"


def guid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def lead_row(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "@odata.etag": f'W/"{1000 + n}"',
        "leadid": guid(n).upper(),  # Dynamics' case; ids are kept lower-case
        "emailaddress1": f"l{n}@example.com",
        "firstname": f"F{n}",
        "lastname": f"L{n}",
        "companyname": None,
        "modifiedon": "2026-11-25T10:00:00Z",
        "_modifiedby_value": guid(999),
        "versionnumber": 1000 + n,
        **extra,
    }


def insert(
    engine: sa.Engine,
    settings: Settings,
    obj: str,
    rows: list[dict[str, Any]],
    filter_field: str | None = None,
) -> load.Loaded:
    specs = settings.object_specs()
    with write_transaction(engine) as conn:
        return load.insert_new(conn, specs, specs[obj], rows, filter_field, NOW)


def test_new_records_are_inserted_with_their_sync_state_and_no_capture(
    engine: sa.Engine, settings: Settings
) -> None:
    rows = [lead_row(1), lead_row(2, companyname="Acme", modifiedon="2026-11-25T12:30:00+02:00")]
    done = insert(engine, settings, "lead", rows)
    assert (done.inserted, done.rest) == ([guid(1), guid(2)], [])
    with engine.connect() as conn:
        local = {r.crm_id: r for r in conn.execute(sa.select(lead))}
        state = {r.crm_id: r for r in conn.execute(sa.select(sync_record))}
        queued = conn.execute(sa.select(sa.func.count()).select_from(sync_queue)).scalar()
        counted = conn.execute(sa.select(sa.func.sum(sync_throughput.c.synced))).scalar()
    assert local[guid(2)].company == "Acme" and local[guid(1)].email == "l1@example.com"
    assert queued == 0  # applied writes are not captured to go back
    assert counted == 2
    s = state[guid(2)]
    assert (s.object, s.record_id, s.etag, s.crm_version) == (
        "lead",
        local[guid(2)].id,
        'W/"1002"',
        1002,
    )
    assert s.crm_modified_at == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    assert state[guid(1)].crm_modified_at == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert s.last_synced_at == NOW
    synced = s.synced_values if isinstance(s.synced_values, dict) else json.loads(s.synced_values)
    assert synced == {
        "email": "l2@example.com",
        "first_name": "F2",
        "last_name": "L2",
        "company": "Acme",
    }


def test_known_unfit_excluded_and_orphaned_records_are_left_to_the_queue(
    engine: sa.Engine, settings: Settings
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.insert(lead).values(crm_id=guid(1), email="here@example.com"))
        # A push in flight chose this id; its local row has no crm_id yet.
        conn.execute(
            sa.insert(sync_queue).values(
                object="lead",
                direction="to_crm",
                record_key="77",
                record_id=77,
                crm_id=guid(2),
                operation="insert",
                state="pending",
                first_queued_at=NOW,
                last_changed_at=NOW,
                version=1,
                attempts=0,
                next_attempt_at=NOW,
            )
        )
    rows = [
        lead_row(1),
        lead_row(2),
        lead_row(3, lastname="x" * 256),  # longer than the local column
        lead_row(4, firstname=42),  # not text
        lead_row(5, new_synctomkto=False),  # excluded by the sync filter
        lead_row(6, new_synctomkto=None),  # only an explicit No excludes
        lead_row(7, modifiedon="not a time", versionnumber=None),
    ]
    done = insert(engine, settings, "lead", rows, "new_synctomkto")
    assert done.inserted == [guid(6), guid(7)]
    assert [r["leadid"] for r in done.rest] == [guid(n).upper() for n in (1, 2, 3, 4, 5)]
    with engine.connect() as conn:
        s = conn.execute(sa.select(sync_record).where(sync_record.c.crm_id == guid(7))).one()
    # Unreadable time -> none, version from the ETag: as the ordinary path reads them.
    assert (s.crm_modified_at, s.crm_version) == (None, 1007)

    contact = {"contactid": guid(20), "lastname": "Child", "_parentcustomerid_value": ACCOUNT}
    orphan = {"contactid": guid(21), "lastname": "Orphan", "_parentcustomerid_value": guid(22)}
    insert(engine, settings, "account", [{"accountid": ACCOUNT, "name": "Acme"}])
    done = insert(engine, settings, "contact", [contact, orphan])
    assert done.inserted == [guid(20)] and done.rest == [orphan]
    with engine.connect() as conn:
        account_id = conn.execute(sa.text("SELECT id FROM account")).scalar_one()
        child = conn.execute(sa.text("SELECT account_id FROM contact")).scalar_one()
        synced = conn.execute(
            sa.select(sync_record.c.synced_values).where(sync_record.c.crm_id == guid(20))
        ).scalar_one()
    assert child == account_id and synced["account_id"] == account_id


def test_a_refused_page_is_left_whole_to_the_queue(engine: sa.Engine, settings: Settings) -> None:
    # The same id twice in one page (or another worker inserting it first): the database
    # refuses, the savepoint undoes the page, and every row goes the ordinary way.
    rows = [lead_row(1), lead_row(2), lead_row(1)]
    done = insert(engine, settings, "lead", rows)
    assert done.inserted == [] and done.rest == rows
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lead)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_record)).scalar() == 0


def test_pages_larger_than_one_statement(
    engine: sa.Engine, settings: Settings, monkeypatch: Any
) -> None:
    monkeypatch.setattr(inbound, "ROWS_PER_STATEMENT", 3)  # SQLite's VALUES lists
    monkeypatch.setattr(inbound, "ARRAY_ROWS", 3)  # PostgreSQL's arrays
    rows = [lead_row(n) for n in range(1, 11)]
    assert len(insert(engine, settings, "lead", rows).inserted) == 10
    with engine.connect() as conn:
        pairs = conn.execute(sa.select(lead.c.crm_id, lead.c.id).order_by(lead.c.crm_id)).all()
        state = dict(conn.execute(sa.select(sync_record.c.crm_id, sync_record.c.record_id)).all())
    assert [c for c, _ in pairs] == [guid(n) for n in range(1, 11)]
    assert state == dict(pairs)


def test_stored_times_match_the_ordinary_reading() -> None:
    texts = [
        "2026-11-25T16:07:33Z",
        "2026-11-25T16:07:33.5Z",
        "2026-11-25T18:07:33+02:00",
        "2026-13-25T16:07:33Z",
        "2026-W48-3T16:07:3Z",
        "junk",
        None,
        5,
    ]
    assert inbound.stored_times(texts, sqlite=True) == [
        "2026-11-25 16:07:33.000000",
        "2026-11-25 16:07:33.500000",
        "2026-11-25 16:07:33.000000",
        None,
        None,
        None,
        None,
        None,
    ]
    assert inbound.stored_times(texts[:1], sqlite=False) == ["2026-11-25T16:07:33Z"]


def test_a_reconciliation_sets_aside_only_records_held_at_their_version(
    engine: sa.Engine, settings: Settings
) -> None:
    """What a full read may skip without a ``Change`` or a queue entry (``settled``)."""
    rows = [lead_row(n) for n in range(1, 8)]
    insert(engine, settings, "lead", rows)
    with write_transaction(engine) as conn:
        r = sync_record.c
        ids = {c: i for c, i in conn.execute(sa.select(lead.c.crm_id, lead.c.id))}

        def state(n: int, **values: Any) -> None:
            conn.execute(sa.update(sync_record).where(r.record_id == ids[guid(n)]).values(**values))

        state(2, crm_version=1001)  # Dynamics has 1002: changed since
        state(3, excluded=True)  # excluded here: its rejoin is the ordinary path's
        state(4, crm_version=None, etag='W/"1004"')  # synced by a push: the ETag says
        state(5, crm_version=None, etag=None)  # no version known: cannot tell
        conn.execute(sa.delete(sync_record).where(r.record_id == ids[guid(6)]))  # no state
    rows[6] = lead_row(7, new_synctomkto=False)  # excluded in Dynamics now
    rows.append(lead_row(8))  # new
    done = insert(engine, settings, "lead", rows, "new_synctomkto")
    assert done.settled == [guid(1), guid(4)]
    assert done.inserted == [guid(8)]
    left = sorted(str(row["leadid"]).lower() for row in done.rest)
    assert left == [guid(2), guid(3), guid(5), guid(6), guid(7)]
