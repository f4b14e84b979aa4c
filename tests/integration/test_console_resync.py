"""Sync Status's resync and audit section: the forms queue jobs, the live part shows
them with their progress and the last audit's figures, and a job can be cancelled."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import Engine
from test_console_pages import STATUS, admin  # noqa: F401 (fixture)

from crmsync.store import audit, jobs
from crmsync.store.db import write_transaction


async def test_resync_and_audit_forms_and_the_live_section(
    admin: tuple[httpx.AsyncClient, str],  # noqa: F811
    engine: Engine,
) -> None:
    c, token = admin
    r = await c.post(
        f"{STATUS}/resync",
        data={
            "object": "lead",
            "direction": "from_crm",
            "since": "2026-11-01T00:00Z",
            "csrf_token": token,
        },
    )
    assert r.status_code == 303
    html = (await c.get(r.headers["location"])).text
    assert "Resync of lead (from_crm) queued as job 1." in html
    assert "resync lead" in html and "queued" in html

    r = await c.post(
        f"{STATUS}/resync", data={"object": "account", "direction": "to_crm", "csrf_token": token}
    )
    html = (await c.get(r.headers["location"])).text
    assert "Nothing queued: direction account does not sync to Dynamics" in html

    # A form without the CSRF token is refused.
    refused = await c.post(f"{STATUS}/audit", data={"repair": "1"})
    assert refused.status_code == 403
    r = await c.post(f"{STATUS}/audit", data={"repair": "1", "csrf_token": token})
    html = (await c.get(r.headers["location"])).text
    assert "Audit queued as job 2." in html and "(repair)" in html
    r = await c.post(f"{STATUS}/audit", data={"csrf_token": token})  # beside it: refused
    html = (await c.get(r.headers["location"])).text
    assert "No audit queued: audit job 2 of every object is queued" in html

    r = await c.post(f"{STATUS}/jobs/1/cancel", data={"csrf_token": token})
    html = (await c.get(r.headers["location"])).text
    assert "Job 1: cancelled." in html
    with engine.connect() as conn:
        assert jobs.get(conn, 1).state == "cancelled"

    now = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    with write_transaction(engine) as conn:
        audit.save_result(
            conn,
            {
                "object": "lead",
                "job_id": 2,
                "checked": 1200,
                "only_local": 3,
                "only_dynamics": 1,
                "different": 2,
                "repaired": 0,
                "samples": [
                    {
                        "kind": "different",
                        "record_id": 5,
                        "crm_id": "x",
                        "fields": [{"field": "last_name", "local": "A", "dynamics": "B"}],
                    }
                ],
                "started_at": now,
                "finished_at": now,
            },
        )
    live = (await c.get(f"{STATUS}?partial=1")).text
    assert 'id="audit-table"' in live and "1,200" in live
    assert "last_name: A here, B in Dynamics" in live


async def test_cancelling_a_job_id_no_store_holds_is_a_notice_not_a_500(
    admin: tuple[httpx.AsyncClient, str],  # noqa: F811
) -> None:
    c, token = admin
    r = await c.post(f"{STATUS}/jobs/{2**70}/cancel", data={"csrf_token": token})
    assert r.status_code == 303, r.text
    html = (await c.get(r.headers["location"])).text
    assert f"no job {2**70}" in html
