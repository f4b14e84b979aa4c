"""The demo mapping's custom table in Chromium: its row on Sync Status and its errors on
Sync Errors, filtered by object, after the real worker synced it with the emulator.

The store is upgraded to the demo's mapping (``src/crmsync/demo/mapping.toml``) and the
session's emulator serves it for this test; the registration Dynamics refuses is one
whose name is longer than the table's 100-character name column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from crmsync.config import load_settings
from crmsync.demo.runner import demo_mapping
from crmsync.emulator import mapped
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.web.app import create_app

STATUS = "/admin/microsoft-dynamics/sync-status"
ERRORS = "/admin/microsoft-dynamics/sync-errors"
PASSWORD = "correct horse battery staple"
LONG_NAME = "Partner Kickoff 2026 (" + ", ".join(["Keynote", "Workshop A"] * 8) + ")"


@pytest.fixture
def custom_console(
    tmp_path: Path, sqlite_template: Path, emulator_url: str, serve_app: Any
) -> Iterator[Any]:
    target = tmp_path / "store.db"
    target.write_bytes(sqlite_template.read_bytes())
    settings = load_settings(
        database_url=f"sqlite:///{target}",
        dynamics_url=emulator_url,
        authority_url=emulator_url,
        tenant_id="crmsync-tests",
        client_id="crmsync-app",
        client_secret="test-secret",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        lease_seconds=10,
        admin_password=PASSWORD,
        objects=demo_mapping(),
    )
    added = mapped.serve_mapping(settings.object_specs().values())
    engine = create_store_engine(settings.database_url)
    try:
        migrate.upgrade(engine, settings.object_specs().values())
        with serve_app(create_app(settings, engine=engine)) as url:
            yield url, engine, settings
    finally:
        engine.dispose()
        mapped.forget(added)
        activate(default_objects())


def test_the_custom_tables_row_and_its_errors(
    browser: Any, custom_console: Any, screenshots: Path
) -> None:
    url, engine, settings = custom_console
    with write_transaction(engine) as conn:
        contact = conn.execute(
            sa.text(
                "INSERT INTO contact (email, first_name, last_name)"
                " VALUES ('ada@example.com', 'Ada', 'Lovelace') RETURNING id"
            )
        ).scalar_one()
        for name in ("Dynamics Summit 2026: Ada Lovelace", LONG_NAME):
            conn.execute(
                sa.text(
                    "INSERT INTO event_registration (name, attended, fee, contact_id)"
                    " VALUES (:name, 0, '49.00', :contact)"
                ),
                {"name": name, "contact": contact},
            )
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, last_name, lead_score) VALUES ('l@example.com', 'L', 70)"
            )
        )
    _drain(settings, engine)
    # Two changes waiting, so that the row has a backlog to show.
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO event_registration (name, contact_id) VALUES ('Later', :c)"),
            {"c": contact},
        )
        conn.execute(sa.text("UPDATE event_registration SET attended = 1 WHERE name LIKE 'D%'"))
    with engine.connect() as conn:
        synced = conn.execute(
            sa.text("SELECT count(*) FROM event_registration WHERE crm_id IS NOT NULL")
        ).scalar()
    assert synced == 1

    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(STATUS + "$"))

        row = page.locator('#status-table tr[data-object="event_registration"]')
        expect(row).to_contain_text("Event registration")
        expect(row.locator('td[data-col="inserts"]')).to_have_text("1")
        expect(row.locator('td[data-col="updates"]')).to_have_text("1")
        expect(row.locator('td[data-col="total"]')).to_have_text("2")
        page.screenshot(path=str(screenshots / "sync-status-custom-object.png"), full_page=True)

        page.get_by_role("link", name="Sync Errors").click()
        expect(page).to_have_url(re.compile(ERRORS))
        page.get_by_label("Object").select_option("event_registration")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"object=event_registration"))
        rows = page.locator("#errors-table tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("0x80044331")
        expect(rows.first).to_contain_text("new_name")
        expect(rows.first).to_contain_text("Partner Kickoff 2026")
        # The other objects' errors are not in the filtered list.
        page.get_by_label("Object").select_option("lead")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("#result-count")).to_have_text("No errors match.")
    finally:
        context.close()


def _drain(settings: Any, engine: sa.Engine) -> None:
    """``worker --once`` in-process, on its own thread (Playwright owns this one's loop)."""
    import asyncio
    import threading

    from crmsync.dynamics.client import DataverseClient
    from crmsync.engine.worker import Worker

    failure: list[BaseException] = []

    async def go() -> None:
        async with DataverseClient.from_settings(settings) as client:
            await Worker(engine, client, settings, concurrency=2).run(once=True)

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(go(), timeout=60))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(65)
    if failure:
        raise failure[0]
