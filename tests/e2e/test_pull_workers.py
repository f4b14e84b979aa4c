"""Pull and push in several worker processes at once, on PostgreSQL.

Three ``crmsync worker --once`` processes start together on a store with local leads to
push and a Dynamics with leads, accounts and contacts to pull: all three read the same
initial load and stage it concurrently, and all claim from both directions. Then three
long-running workers poll while both sides keep editing. Nothing may be lost or applied
twice: local and Dynamics hold the same records with the same values, each remote
record was inserted locally exactly once (the throughput counters), each local lead
exists once in Dynamics, and the queue and the error list are empty.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pull_support import Sales, count, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.store.schema import sync_error, sync_queue, sync_throughput

REMOTE_LEADS, LOCAL_LEADS, ACCOUNTS, CONTACTS = 200, 200, 10, 60
CONTACT_SELECT = "contactid,emailaddress1,lastname,_parentcustomerid_value"


@pytest.fixture
def pg_sync_settings(sync_settings: Settings) -> Settings:
    if not sync_settings.database_url.startswith("postgresql"):
        pytest.skip("many worker processes share one store only on PostgreSQL")
    return sync_settings


def inserted_from_crm(engine: sa.Engine) -> dict[str, int]:
    t = sync_throughput.c
    with engine.connect() as conn:
        return {
            o: int(n)
            for o, n in conn.execute(
                sa.select(t.object, sa.func.sum(t.synced))
                .where(t.direction == "from_crm", t.operation == "insert")
                .group_by(t.object)
            )
        }


def assert_same_both_sides(engine: sa.Engine, url: str, crm_rows: Any) -> None:
    remote_leads = {r["leadid"]: r for r in crm_rows(url)}
    local_leads = rows(engine, "lead")
    if set(local_leads) != set(remote_leads):
        with engine.connect() as conn:
            print("NOCRM", conn.execute(sa.text("SELECT * FROM lead WHERE crm_id IS NULL")).all())
            print("Q", conn.execute(sa.text("SELECT * FROM sync_queue")).all())
        for k in set(remote_leads) - set(local_leads):
            print("MISSING", remote_leads[k])
        for k in set(local_leads) - set(remote_leads):
            print("EXTRA", local_leads[k])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == len(remote_leads)
    assert set(local_leads) == set(remote_leads)
    for crm_id, row in local_leads.items():
        assert row["last_name"] == remote_leads[crm_id]["lastname"], crm_id
        assert row["email"] == remote_leads[crm_id]["emailaddress1"], crm_id
    accounts = {a["crm_id"]: a["id"] for a in rows(engine, "account").values()}
    remote_contacts = {r["contactid"]: r for r in crm_rows(url, "contacts", CONTACT_SELECT)}
    local_contacts = rows(engine, "contact")
    assert set(local_contacts) == set(remote_contacts)
    for crm_id, row in local_contacts.items():
        assert row["last_name"] == remote_contacts[crm_id]["lastname"]
        assert row["account_id"] == accounts[remote_contacts[crm_id]["_parentcustomerid_value"]]
    assert count(engine, sync_queue) == 0
    assert count(engine, sync_error) == 0


def wait_until_sigterm_handled(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until ``proc`` has installed its SIGTERM handler (Linux: ``SigCgt`` in /proc)."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():  # not Linux: give start-up a generous moment instead
        time.sleep(5)
        return
    deadline = time.monotonic() + timeout
    while True:
        caught = next(ln for ln in status.read_text().splitlines() if ln.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        assert time.monotonic() < deadline, "worker never installed its SIGTERM handler"
        time.sleep(0.05)


@pytest.mark.postgres
def test_pull_and_push_in_three_processes_lose_and_duplicate_nothing(
    pg_sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    sql: Any,
    insert_leads: Any,
    crm_rows: Any,
    configure: Any,
    start_worker: Callable[..., Any],
) -> None:
    url = pg_sync_settings.dynamics_url or ""
    accounts = [sales.create("accounts", {"name": f"A{i}"}) for i in range(ACCOUNTS)]
    contacts = [
        sales.create(
            "contacts",
            {
                "lastname": f"C{i}",
                "parentcustomerid_account@odata.bind": f"/accounts({accounts[i % ACCOUNTS]})",
            },
        )
        for i in range(CONTACTS)
    ]
    remote = [
        sales.create("leads", {"emailaddress1": f"r{i}@example.com", "lastname": f"R{i}"})
        for i in range(REMOTE_LEADS)
    ]
    insert_leads(store, LOCAL_LEADS, "local")
    # Small pages and batches, a little latency: the processes overlap in every step.
    configure(url, latency_ms=5)
    procs = [start_worker("--once", "--concurrency", "2", batch_size=25) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert_same_both_sides(store, url, crm_rows)
    assert inserted_from_crm(store) == {
        "account": ACCOUNTS,
        "contact": CONTACTS,
        "lead": REMOTE_LEADS,
    }

    # Long-running workers polling while both sides keep changing.
    procs = [start_worker("--concurrency", "2", batch_size=25, poll_seconds=0.3) for _ in range(3)]
    for i in range(0, REMOTE_LEADS, 4):
        sales.update("leads", remote[i], {"lastname": f"R{i}-crm"})
    sql(store, "UPDATE lead SET last_name = last_name || '-local' WHERE email LIKE 'local%'")
    for crm_id in contacts[:10]:
        sales.update(
            "contacts", crm_id, {"parentcustomerid_account@odata.bind": f"/accounts({accounts[0]})"}
        )
    added = [sales.create("leads", {"lastname": f"Late{i}"}) for i in range(20)]
    for crm_id in remote[1:40:4]:
        sales.delete("leads", crm_id)
    deadline = time.monotonic() + 90
    while True:
        try:
            assert_same_both_sides(store, url, crm_rows)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                for proc in procs:
                    proc.kill()
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    print("WORKER", proc.returncode, err[-3000:])
                raise
            time.sleep(0.5)
    # Ask them to stop only once each handles SIGTERM: the other two may have done all
    # the work while a starved one was still importing, and SIGTERM would kill it.
    for proc in procs:
        wait_until_sigterm_handled(proc)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert set(added) <= set(rows(store, "lead"))
    assert inserted_from_crm(store)["lead"] == REMOTE_LEADS + len(added)
    local = rows(store, "lead")
    assert sum(1 for r in local.values() if r["last_name"].endswith("-local")) == LOCAL_LEADS
