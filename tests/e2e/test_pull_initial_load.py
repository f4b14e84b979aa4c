"""An initial load stopped half-way (the worker dies after committing some pages) and
run again loses nothing and duplicates nothing: the delta link is saved only with the
last page, and the pages already stored are recognised as known on the second read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from pull_support import Sales, count, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.pull import Puller
from crmsync.store.schema import sync_cursor, sync_error, sync_queue, sync_record


class Died(Exception):
    pass


def test_initial_load_stopped_half_way_then_resumed_loses_and_duplicates_nothing(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any, crm_rows: Any
) -> None:
    for i in range(25):
        sales.create("leads", {"emailaddress1": f"p{i}@example.com", "lastname": f"P{i}"})

    async def first_run() -> None:
        async with DataverseClient.from_settings(sync_settings) as client:
            puller = Puller(store, client, sync_settings, page_size=10)
            stage, calls = puller._stage_page, []

            def dies_on_the_second_page(*args: Any, **kwargs: Any) -> int:
                calls.append(1)
                if len(calls) == 2:
                    raise Died
                return stage(*args, **kwargs)

            puller._stage_page = dies_on_the_second_page  # type: ignore[method-assign]
            await puller.pull("lead")

    with pytest.raises(Died):
        asyncio.run(first_run())
    # One page is stored with its sync state; no delta link yet, nothing queued.
    assert len(rows(store, "lead")) == 10
    assert count(store, sync_record) == 10
    assert count(store, sync_cursor, sync_cursor.c.delta_link.is_not(None)) == 0
    assert count(store, sync_queue) == 0

    drain(sync_settings, store)
    remote = {r["leadid"]: r for r in crm_rows(sync_settings.dynamics_url or "")}
    local = rows(store, "lead")
    assert set(local) == set(remote) and len(remote) == 25
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 25
    for crm_id, row in local.items():
        assert (row["email"], row["last_name"]) == (
            remote[crm_id]["emailaddress1"],
            remote[crm_id]["lastname"],
        )
    assert count(store, sync_record, sync_record.c.object == "lead") == 25
    assert count(store, sync_cursor, sync_cursor.c.object == "lead") == 1
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0

    # The saved delta link carries on from there: a later change arrives by itself.
    some = next(iter(local))
    sales.update("leads", some, {"lastname": "Later"})
    drain(sync_settings, store)
    assert rows(store, "lead")[some]["last_name"] == "Later"
    assert count(store, sync_queue) == 0
