"""The Sync Status chart and the Last hour details in Chromium: dates on the axis, each
hour's figures by keyboard and as a table, the current hour as partial, and the hour's
synced records by operation and direction in the details dialog."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from crmsync.store import queue
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_throughput
from crmsync.store.status import hour_window
from crmsync.store.types import utcnow

STATUS = "/admin/microsoft-dynamics/sync-status"


def seed_throughput(console: Any) -> tuple[Any, Any]:
    """The last complete hour: lead 40 inserts to Dynamics, 5 updates from it; the
    current bucket: 9 lead updates to Dynamics. Returns the last hour's window."""
    now = utcnow()
    start, end = hour_window(now, console.settings.zone)
    rows = [
        ("to_crm", "insert", 40, start),
        ("from_crm", "update", 5, start + timedelta(minutes=15)),
        ("to_crm", "update", 9, queue.bucket_start(now)),
        ("to_crm", "insert", 12, start - timedelta(hours=5)),
    ]
    with write_transaction(console.engine) as conn:
        conn.execute(
            sa.insert(sync_throughput),
            [
                {"bucket_start": at, "object": "lead", "direction": d, "operation": op, "synced": n}
                for d, op, n, at in rows
            ],
        )
    return start, end


def test_chart_figures_by_keyboard_and_table(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    seed_throughput(console)
    login(page)
    page.goto(STATUS)
    hours = page.locator("#chart .hour")
    expect(hours).to_have_count(25)
    # The axis has dates as well as hours.
    expect(page.locator("#chart .axis-date").first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d$"))
    # One tab stop for the chart: the current hour, partial and said so.
    current = page.locator('#chart .hour[tabindex="0"]')
    expect(current).to_have_count(1)
    expect(current).to_have_class(re.compile("hour-partial"))
    page.locator("#status-table tbody tr").last.focus()
    page.keyboard.press("Tab")
    expect(current).to_be_focused()
    readout = page.locator("#chart-readout")
    expect(readout).to_contain_text("so far: Lead 9; 9 in all")
    expect(current).to_have_attribute("aria-label", re.compile("so far: Lead 9; 9 in all"))
    # Left: the last complete hour's figures.
    page.keyboard.press("ArrowLeft")
    expect(hours.nth(23)).to_be_focused()
    expect(readout).to_contain_text("Lead 45; 45 in all")
    expect(readout).not_to_contain_text("so far")
    page.keyboard.press("Home")
    expect(hours.first).to_be_focused()
    page.screenshot(path=str(screenshots / "sync-status-chart.png"), full_page=True)
    # A refresh keeps the focus on the same hour.
    page.evaluate("window.crmsyncRefresh()")
    page.wait_for_timeout(500)
    expect(page.locator("#chart .hour").first).to_be_focused()

    # The same figures as a table, the newest hour first.
    page.get_by_text("Hourly figures as a table").click()
    table = page.locator("#throughput-table")
    expect(table.locator("tbody tr")).to_have_count(25)
    expect(table.locator("tbody tr").first).to_contain_text("so far")
    expect(table.locator("tbody tr").nth(1)).to_contain_text("45")


def test_last_hour_details_show_the_hours_synced_records(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    start, end = seed_throughput(console)
    login(page)
    page.goto(STATUS + "?view=last_hour")
    zone = console.settings.zone
    window = f"{start.astimezone(zone):%H:%M} to {end.astimezone(zone):%H:%M}"
    page.locator('#status-table tr[data-object="lead"]').dblclick()
    dialog = page.locator("dialog#details")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Lead: synced from {window}")
    expect(dialog).not_to_contain_text("waiting")
    insert = dialog.locator('tr[data-operation="insert"]')
    expect(insert.locator('td[data-direction="to_crm"]')).to_have_text("40")
    expect(insert.locator('td[data-direction="from_crm"]')).to_have_text("0")
    update = dialog.locator('tr[data-operation="update"]')
    expect(update.locator('td[data-direction="from_crm"]')).to_have_text("5")
    expect(dialog).to_contain_text("45 records in all")
    page.screenshot(path=str(screenshots / "sync-status-last-hour-details.png"))
    page.keyboard.press("Escape")
    # Back in the Backlog view, the dialog shows the waiting changes again.
    page.get_by_label("View").select_option("backlog")
    page.locator('#status-table tr[data-object="lead"]').dblclick()
    expect(dialog).to_contain_text("Lead: waiting changes")
