"""No echo: 1,000 edits alternating between the two sides, and not one ping-pong.

Every Dynamics write raises the emulator's version counter by one, so the number of
writes crmsync made is the counter's rise minus the Dynamics user's own edits: it must
equal the number of local edits exactly (a pulled change sent back, or a pushed change
applied again and re-sent, would add to it).
"""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa
from pull_support import Sales, count, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.store.schema import sync_conflict, sync_error, sync_queue, sync_throughput

LEADS = 100
ROUNDS = 10  # each round: 50 local edits and 50 Dynamics edits -> 1,000 edits in all


def top_version(sales: Sales) -> int:
    """The emulator's version counter: versions are global and every write takes the
    next one; the tables written here are leads and, for a new client, systemusers."""
    top = 0
    for entity_set in ("leads", "systemusers"):
        body = sales.http.get(
            f"{entity_set}?$select=versionnumber&$orderby=versionnumber desc&$top=1",
            headers={"Prefer": ""},
        ).json()
        top = max(top, int(body["value"][0]["versionnumber"]))
    return top


def test_alternating_edits_make_one_write_per_local_edit_and_no_ping_pong(
    sync_settings: Settings, store: sa.Engine, sales: Sales, sql: Any, drain: Any
) -> None:
    ids = [
        sales.create("leads", {"emailaddress1": f"e{i}@example.com", "lastname": "v0"})
        for i in range(LEADS)
    ]
    drain(sync_settings, store)
    by_crm = {crm_id: row["id"] for crm_id, row in rows(store, "lead").items()}
    assert len(by_crm) == LEADS
    start = top_version(sales)
    local_edits = remote_edits = 0
    half = LEADS // 2
    for r in range(ROUNDS):
        # The halves swap sides every round, so each record alternates between edits
        # made locally and edits made in Dynamics.
        mine, theirs = (ids[:half], ids[half:]) if r % 2 == 0 else (ids[half:], ids[:half])
        sql(
            store,
            "UPDATE lead SET last_name = :v WHERE id IN ("
            + ",".join(str(by_crm[c]) for c in mine)
            + ")",
            {"v": f"local{r}"},
        )
        local_edits += len(mine)
        for crm_id in theirs:
            sales.update("leads", crm_id, {"lastname": f"crm{r}"})
        remote_edits += len(theirs)
        drain(sync_settings, store)

    assert local_edits + remote_edits == 1000
    crmsync_writes = top_version(sales) - start - remote_edits
    assert crmsync_writes == local_edits
    # One more pass finds nothing to do in either direction.
    drain(sync_settings, store)
    assert top_version(sales) - start - remote_edits == local_edits

    last = ROUNDS - 1
    local = rows(store, "lead")
    for i, crm_id in enumerate(ids):
        mine_last = (i < half) == (last % 2 == 0)
        want = f"local{last}" if mine_last else f"crm{last}"
        assert local[crm_id]["last_name"] == want
        remote = sales.http.get(f"leads({crm_id})?$select=lastname").json()["lastname"]
        assert remote == want
    assert count(store, sync_queue) == 0
    assert count(store, sync_error) == 0 and count(store, sync_conflict) == 0
    # Not one request refused (no 412 from a stale If-Match, no 4xx of any kind).
    stats = httpx.get(f"{sync_settings.dynamics_url}/_emulator/stats", timeout=10).json()
    assert set(stats["requests"]["by_status"]) <= {"200", "201", "204"}
    with store.connect() as conn:
        synced = dict(
            conn.execute(
                sa.select(sync_throughput.c.direction, sa.func.sum(sync_throughput.c.synced))
                .where(sync_throughput.c.operation == "update")
                .group_by(sync_throughput.c.direction)
            ).all()
        )
    assert synced == {"to_crm": local_edits, "from_crm": remote_edits}
