"""The drift audit and its repair end to end, against drift planted on both sides.

The emulator here is this module's own, so that the test can write into its store
behind change tracking's back (a row changed in place with a new version, as a write
change tracking never reported; a row removed without a deletion entry). Locally,
capture is suppressed for the planted writes. The audit must find exactly the planted
drift (not a value differing only in representation), the repair must fix it by the
rules, and a second audit must find nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from pull_support import count

from crmsync.config import Settings, load_settings
from crmsync.domain import Direction, JobKind, JobState
from crmsync.dynamics.client import DataverseClient
from crmsync.emulator import mapped
from crmsync.emulator.app import Emulator, create_app
from crmsync.engine.audit import Auditor
from crmsync.engine.jobs import JobRunner
from crmsync.engine.pull import Puller
from crmsync.engine.resync import Resyncer, check_request
from crmsync.mapping import activate, default_objects
from crmsync.store import audit, capture, jobs, migrate
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.schema import sync_change, sync_queue

MAPPING: dict[str, Any] = {
    "lead": {"fields": {"budget": {"attribute": "new_budget", "type": "money"}}},
}


@pytest.fixture
def emulator(serve_app: Any) -> Iterator[tuple[Emulator, str]]:
    emu = create_app()
    server: AbstractContextManager[str] = serve_app(emu)
    with server as url:
        yield emu, url


@pytest.fixture
def settings_here(sync_settings: Settings, emulator: tuple[Emulator, str]) -> Iterator[Settings]:
    _, url = emulator
    settings = load_settings(
        **{
            **sync_settings.model_dump(),
            "dynamics_url": url,
            "authority_url": url,
            "objects": MAPPING,
        }
    )
    added = mapped.serve_mapping(settings.object_specs().values())
    yield settings
    mapped.forget(added)
    activate(default_objects())


@pytest.fixture
def synced(settings_here: Settings, store: sa.Engine, drain: Any) -> dict[int, str]:
    """Six leads synced to Dynamics: local id -> Dynamics id."""
    migrate.upgrade(store, settings_here.object_specs().values())
    with write_transaction(store) as conn:
        for i in range(1, 7):
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name, budget) VALUES (:e, :n, :b)"),
                {"e": f"l{i}@x.org", "n": f"Lead{i}", "b": f"{100 * i}.00"},
            )
    drain(settings_here, store)
    with store.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT id, crm_id FROM lead")).all())
    assert len(ids) == 6 and all(ids.values())
    return {int(k): str(v) for k, v in ids.items()}


def _behind_tracking(emu: Emulator, crm_id: str, **values: Any) -> None:
    """Change a Dynamics row in place with a new version: change tracking walks rows in
    write order from the newest, so a row left at its old place is never reported."""
    row = emu.store.get("leads", crm_id)
    assert row is not None
    row.update(values)
    row["versionnumber"] = emu.store.next_version()


def _vanish(emu: Emulator, crm_id: str) -> None:
    """Delete a Dynamics row with no deletion entry for change tracking."""
    table = emu.store.tables["leads"]
    table.rows.pop(crm_id)
    table._dirty_removed = True


def _plant(emu: Emulator, store: sa.Engine, ids: dict[int, str]) -> None:
    _behind_tracking(emu, ids[1], lastname="ChangedThere")
    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(sa.text("UPDATE lead SET last_name = 'ChangedHere' WHERE id = 2"))
        conn.execute(sa.text("DELETE FROM lead WHERE id = 4"))
    _vanish(emu, ids[3])
    # 500.00 locally, 500 in Dynamics (another spelling of one value), at a new version.
    _behind_tracking(emu, ids[5], new_budget=500)


def _audit(settings: Settings, store: sa.Engine, *, repair: bool = False) -> dict[str, Any]:
    with write_transaction(store) as conn:
        job = jobs.create(conn, JobKind.AUDIT, "lead", None, {"repair": repair})

    async def go() -> Any:
        async with DataverseClient.from_settings(settings) as client:
            runner = JobRunner(store, Puller(store, client, settings), "test-audit")
            return await runner.run_one(job.id)

    ended = asyncio.run(go())
    assert ended is not None and ended.state is JobState.DONE, ended
    with store.connect() as conn:
        (found,) = audit.last_results(conn, ["lead"])
    return found


def _kinds(found: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in found["samples"]:
        out.setdefault(s["kind"], set()).add(s["crm_id"])
    return out


def test_audit_finds_exactly_the_planted_drift_and_repair_fixes_it(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
    drain: Any,
) -> None:
    emu, _ = emulator
    _plant(emu, store, synced)
    found = _audit(settings_here, store)
    assert (found["only_local"], found["only_dynamics"], found["different"]) == (1, 1, 2)
    assert found["checked"] == 6
    assert _kinds(found) == {
        "only_local": {synced[3]},
        "only_dynamics": {synced[4]},
        "different": {synced[1], synced[2]},
    }
    fields = {s["crm_id"]: s.get("fields") for s in found["samples"] if s["kind"] == "different"}
    assert fields[synced[1]] == [
        {"field": "last_name", "local": "Lead1", "dynamics": "ChangedThere"}
    ]
    # An audit without repair queues nothing.
    assert count(store, sync_queue) == 0 and count(store, sync_change) == 0

    repaired = _audit(settings_here, store, repair=True)
    assert repaired["repaired"] == 4
    drain(settings_here, store)
    with store.connect() as conn:
        local = {r.id: r for r in conn.execute(sa.text("SELECT * FROM lead"))}
    assert local[1].last_name == "ChangedThere"  # Dynamics' change applied
    assert emu.store.get("leads", synced[2])["lastname"] == "ChangedHere"  # local one pushed
    assert 3 not in local  # deleted in Dynamics: deleted here
    assert emu.store.get("leads", synced[4]) is None  # deleted here: deleted there
    assert Decimal(str(local[5].budget)) == Decimal("500.00")
    again = _audit(settings_here, store)
    assert (again["only_local"], again["only_dynamics"], again["different"]) == (0, 0, 0)
    assert again["checked"] == 4 and again["samples"] == []


def test_small_pages_in_parts_find_each_record_once(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages of two ids, each matched in parts of one; the only-local pass in id ranges
    whose bounds move with every page: no record missed at a bound, none found twice."""
    monkeypatch.setattr("crmsync.engine.audit.PAGE", 2)
    emu, _ = emulator
    _plant(emu, store, synced)
    with write_transaction(store) as conn, capture_suppressed(conn):
        # Ids 7-18, never synced and unknown to the sync: the first range, (0, 9], holds
        # twice a page of them; the second's rows come only after all of them.
        for i in range(12):
            conn.execute(sa.text("INSERT INTO lead (email) VALUES (:e)"), {"e": f"n{i}@x.org"})
    found = _audit(settings_here, store)
    assert (found["only_local"], found["only_dynamics"], found["different"]) == (13, 1, 2)
    assert found["checked"] == 5 + 13
    kinds = _kinds(found)
    assert kinds["only_dynamics"] == {synced[4]}
    assert kinds["different"] == {synced[1], synced[2]}
    assert synced[3] in kinds["only_local"]


def test_dry_run_resync_reads_only_and_reports_the_differences(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
) -> None:
    emu, _ = emulator
    _plant(emu, store, synced)
    with store.connect() as conn:
        before = [
            dict(r) for r in conn.execute(sa.text("SELECT * FROM lead ORDER BY id")).mappings()
        ]
    emu.log.clear()
    specs = settings_here.object_specs()

    async def dry(direction: Direction) -> dict[str, Any]:
        async with DataverseClient.from_settings(settings_here) as client:
            puller = Puller(store, client, settings_here)
            resyncer = Resyncer(store, puller, "test-dry", jobs_lease())
            req = check_request(specs, "lead", direction, None, None, [])
            return await resyncer.dry_run(req)

    to_crm = asyncio.run(dry(Direction.TO_CRM))
    # Five local leads: lead 1 and 2 differ, lead 3 is gone from Dynamics.
    assert (to_crm["matched"], to_crm["would_change"]) == (5, 3)
    from_crm = asyncio.run(dry(Direction.FROM_CRM))
    # Five Dynamics leads: lead 1 and 2 differ, lead 4 is gone locally.
    assert (from_crm["matched"], from_crm["would_change"]) == (5, 3)
    with store.connect() as conn:
        after = [
            dict(r) for r in conn.execute(sa.text("SELECT * FROM lead ORDER BY id")).mappings()
        ]
    assert after == before
    assert count(store, sync_queue) == 0 and count(store, sync_change) == 0
    # Dynamics was only read (the token endpoint aside).
    sent = [(m, p) for _, m, p, _ in emu.log if "/oauth2/" not in p]
    assert sent and {m for m, _ in sent} == {"GET"}, sent


def jobs_lease() -> Any:
    from datetime import timedelta

    return timedelta(seconds=60)


def test_a_record_pushed_during_the_scan_is_not_deleted_by_the_repair(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
    drain: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lead created locally and pushed after Dynamics' pages were read is not in the
    first pass: it is no drift (it synced meanwhile), and the repair must not stage
    its deletion as if Dynamics had deleted it."""
    emu, _ = emulator
    scan = Auditor._scan

    async def scan_then_push(self: Auditor, *args: Any, **kwargs: Any) -> None:
        await scan(self, *args, **kwargs)
        with write_transaction(store) as conn:
            conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('new@x.org', 'New')"))
        await asyncio.to_thread(drain, settings_here, store)

    monkeypatch.setattr(Auditor, "_scan", scan_then_push)
    found = _audit(settings_here, store, repair=True)
    monkeypatch.setattr(Auditor, "_scan", scan)
    assert found["only_local"] == 0, found["samples"]
    drain(settings_here, store)
    with store.connect() as conn:
        crm_id = conn.execute(sa.text("SELECT crm_id FROM lead WHERE email = 'new@x.org'")).scalar()
    assert crm_id is not None  # still here
    assert emu.store.get("leads", str(crm_id)) is not None


def test_local_changes_made_during_the_audit_are_not_drift(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changes made here while the audit runs (no worker runs: they wait in the capture
    log or the queue) are the sync's to send: a changed lead is not 'different', a
    deleted one not 'only in Dynamics', a new one not 'only here'. They used to be
    counted (and, with repair, queued again), as the audit folded the log only once,
    before its first page. Here each change lands just after a fold of the audit's, so
    that the comparison meets it still in the log."""
    fold = capture.fold_pending
    folds: list[int] = []

    def fold_then_write(*args: Any, **kwargs: Any) -> int:
        n = fold(*args, **kwargs)
        folds.append(n)
        with write_transaction(store) as conn:
            if len(folds) == 1:  # before the first page's comparison
                conn.execute(sa.text("UPDATE lead SET last_name = 'Moved' WHERE id = 2"))
                conn.execute(sa.text("DELETE FROM lead WHERE id = 6"))
            elif len(folds) == 2:  # before the search for records only here
                conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('n@x', 'N')"))
        return n

    monkeypatch.setattr(capture, "fold_pending", fold_then_write)
    found = _audit(settings_here, store)
    monkeypatch.setattr(capture, "fold_pending", fold)
    assert len(folds) == 2
    assert (found["only_local"], found["only_dynamics"], found["different"]) == (0, 0, 0), found
    assert found["checked"] == 6  # the six in Dynamics; the new lead is not counted
    assert count(store, sync_change) == 1 and count(store, sync_queue) == 2


def test_a_large_dry_run_over_the_api_is_a_job_with_the_same_report(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dry run compares a page at a time; the API's stops after ``AT_ONCE`` records
    (here 3, in pages of 2) and answers 202 with a dry-run job, whose result is the
    report a dry run to the end makes. A small one still answers at once. Nothing is
    written either way but the job's row."""
    import httpx

    from crmsync.web.app import create_app as create_web_app

    emu, _ = emulator
    _plant(emu, store, synced)
    monkeypatch.setattr("crmsync.engine.resync.LOCAL_PAGE", 2)
    monkeypatch.setattr("crmsync.engine.resync.DYNAMICS_PAGE", 2)
    web = create_web_app(
        load_settings(**{**settings_here.model_dump(), "api_token": "t"}), engine=store
    )

    async def post(body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=web),
            base_url="http://test",
            headers={"Authorization": "Bearer t"},
        ) as c:
            return await c.post("/api/v1/sync/resync", json=body)

    small = asyncio.run(post({"object": "lead", "dry_run": True}))
    assert small.status_code == 200, small.text
    assert (small.json()["matched"], small.json()["would_change"]) == (5, 3)
    assert small.json()["complete"] is True
    monkeypatch.setattr("crmsync.web.api_jobs.AT_ONCE", 3)
    for direction, expected in (("to_crm", (5, 3)), ("from_crm", (5, 3))):
        emu.log.clear()
        resp = asyncio.run(post({"object": "lead", "direction": direction, "dry_run": True}))
        assert resp.status_code == 202, resp.text
        assert resp.json()["params"]["dry_run"] is True
        reads = [p for _, m, p, _ in emu.log if "/oauth2/" not in p]
        assert len(reads) <= 3, reads  # two pages' worth, not the whole window
        with store.connect() as conn:
            assert jobs.get(conn, resp.json()["id"]).state is JobState.QUEUED

        async def run(job_id: int) -> Any:
            async with DataverseClient.from_settings(settings_here) as client:
                runner = JobRunner(store, Puller(store, client, settings_here), "w")
                return await runner.run_one(job_id)

        ended = asyncio.run(run(resp.json()["id"]))
        assert ended.state is JobState.DONE, ended
        assert (ended.result["matched"], ended.result["would_change"]) == expected
        assert len(ended.result["samples"]) == 3 and ended.done == 5
    assert count(store, sync_queue) == 0 and count(store, sync_change) == 0


def test_a_from_crm_resync_at_the_synced_version_is_no_conflict(
    settings_here: Settings,
    store: sa.Engine,
    synced: dict[int, str],
    emulator: tuple[Emulator, str],
    drain: Any,
) -> None:
    """Dynamics' version of every lead is the one last synced. Resynced from Dynamics:
    a lead that drifted here unseen gets Dynamics' values back; one with a local change
    waiting to be sent keeps it (and sends it), with no conflict; one that agrees stays
    as it is. Nothing older than the synced version is applied, no error is parked."""
    from crmsync.store.schema import sync_conflict, sync_error

    emu, _ = emulator
    with write_transaction(store) as conn, capture_suppressed(conn):
        conn.execute(sa.text("UPDATE lead SET last_name = 'Drifted' WHERE id = 1"))
    with write_transaction(store) as conn:
        conn.execute(sa.text("UPDATE lead SET last_name = 'Waiting' WHERE id = 2"))
    capture.fold_pending(store)
    versions = {i: emu.store.get("leads", c)["versionnumber"] for i, c in synced.items()}
    with write_transaction(store) as conn:
        job = jobs.create(conn, JobKind.RESYNC, "lead", Direction.FROM_CRM, {"ids": [1, 2, 3]})

    async def run() -> Any:
        async with DataverseClient.from_settings(settings_here) as client:
            return await JobRunner(store, Puller(store, client, settings_here), "w").run_one(job.id)

    ended = asyncio.run(run())
    assert ended.state is JobState.DONE and ended.result == {"queued": 3}, ended
    drain(settings_here, store)
    with store.connect() as conn:
        names = dict(conn.execute(sa.text("SELECT id, last_name FROM lead")).all())
    assert (names[1], names[2], names[3]) == ("Lead1", "Waiting", "Lead3")
    assert emu.store.get("leads", synced[2])["lastname"] == "Waiting"
    assert emu.store.get("leads", synced[1])["versionnumber"] == versions[1]  # not sent back
    assert emu.store.get("leads", synced[3])["versionnumber"] == versions[3]
    assert count(store, sync_conflict) == 0 and count(store, sync_error) == 0
    assert count(store, sync_queue) == 0
