"""The admin console in Chromium: log in, read the Sync Status backlog and last hour,
open a row's details, search, filter, export and retry errors, pause and resume, log out.

Every number on screen comes from a store that the real worker filled by talking to the
emulator; the emulator rejects some records, so the errors are real Dynamics errors.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_throughput
from crmsync.store.status import hour_window
from crmsync.store.types import utcnow

STATUS = "/admin/microsoft-dynamics/sync-status"
ERRORS = "/admin/microsoft-dynamics/sync-errors"
XSS_LABEL = "<script>window.__xss = 1</script>@example.com"


def seed(console: Any) -> None:
    """A known state, made by the worker against the emulator:

    - synced: leads ok1..ok3 and dup@example.com;
    - errors (4): a second dup@example.com (duplicate detection, 0x80040333), a lead with a
      too-long last name and a ``<script>`` email (0x80044331), a contact in an entity set
      the app user may not write (0x80040220), and, as it may not read that entity set
      either, the whole contact object from Dynamics (0x80040220, no record);
    - backlog: lead 4 inserts and 2 updates; the other objects nothing;
    - last complete hour: 7 lead records synced (a throughput bucket).
    """
    console.emulator(duplicate_detection=True, denied_entity_sets=["contacts"])
    for n in (1, 2, 3):
        console.sql(
            "INSERT INTO lead (email, last_name) VALUES (:e, 'Ok')", {"e": f"ok{n}@example.com"}
        )
    console.sql("INSERT INTO lead (email, last_name) VALUES ('dup@example.com', 'One')")
    console.drain()
    console.sql("INSERT INTO lead (email, last_name) VALUES ('dup@example.com', 'Two')")
    console.sql(
        "INSERT INTO lead (email, last_name) VALUES (:e, :l)", {"e": XSS_LABEL, "l": "x" * 51}
    )
    console.sql("INSERT INTO contact (email, last_name) VALUES ('denied@example.com', 'No')")
    console.drain()
    console.sql(
        "UPDATE lead SET last_name = 'Changed'"
        " WHERE email IN ('ok1@example.com', 'ok2@example.com')"
    )
    for n in range(4):
        console.sql(
            "INSERT INTO lead (email, last_name) VALUES (:e, 'New')", {"e": f"new{n}@example.com"}
        )
    start, _ = hour_window(utcnow(), console.settings.zone)
    with write_transaction(console.engine) as conn:
        conn.execute(
            sa.insert(sync_throughput).values(
                bucket_start=start, object="lead", direction="to_crm", operation="insert", synced=7
            )
        )


def cell(page: Any, obj: str, col: str) -> Any:
    return page.locator(f'#status-table tr[data-object="{obj}"] td[data-col="{col}"]')


def test_login_backlog_last_hour_details_and_logout(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    seed(console)
    page.goto(STATUS)
    expect(page).to_have_url(re.compile(r"/login"))
    login(page)
    expect(page).to_have_url(re.compile(STATUS + "$"))
    expect(page.get_by_role("navigation", name="Main")).to_contain_text("Admin")
    expect(page.get_by_role("link", name="Microsoft Dynamics").first).to_be_visible()
    expect(page.get_by_role("link", name="Sync Status")).to_have_attribute("aria-current", "page")

    # The backlog of the seeded state.
    expect(cell(page, "lead", "inserts")).to_have_text("4")
    expect(cell(page, "lead", "updates")).to_have_text("2")
    expect(cell(page, "lead", "total")).to_have_text("6")
    expect(cell(page, "contact", "total")).to_have_text("0")
    expect(cell(page, "account", "total")).to_have_text("0")
    expect(cell(page, "lead", "age")).to_have_text(re.compile(r"^\d+ (s|min)$"))
    expect(page.locator("svg.chart-svg rect.bar")).not_to_have_count(0)
    page.screenshot(path=str(screenshots / "sync-status.png"), full_page=True)

    # Double-click a row: the oldest waiting insert and update, with ids and age.
    page.locator('#status-table tr[data-object="lead"]').dblclick()
    dialog = page.locator("dialog#details")
    expect(dialog).to_be_visible()
    expect(dialog.locator('tr[data-operation="insert"]')).to_contain_text("new0@example.com")
    expect(dialog.locator('tr[data-operation="insert"]')).to_contain_text("To Dynamics")
    expect(dialog.locator('tr[data-operation="update"]')).to_contain_text("ok1@example.com")
    crm_id = console.scalar("SELECT crm_id FROM lead WHERE email = 'ok1@example.com'")
    expect(dialog.locator('tr[data-operation="update"]')).to_contain_text(crm_id)
    expect(dialog.locator('tr[data-operation="delete"]')).to_contain_text("Nothing waiting")
    page.screenshot(path=str(screenshots / "sync-status-details.png"))
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # Keyboard: Enter on a focused row opens it too.
    page.locator('#status-table tr[data-object="contact"]').focus()
    page.keyboard.press("Enter")
    expect(dialog).to_contain_text("Contact: waiting changes")
    page.keyboard.press("Escape")

    # Last hour: N/A for inserts and updates, the synced count, the window on the clock.
    page.get_by_label("View").select_option("last_hour")
    expect(page).to_have_url(re.compile(r"view=last_hour"))
    expect(cell(page, "lead", "inserts")).to_have_text("N/A")
    expect(cell(page, "lead", "updates")).to_have_text("N/A")
    expect(cell(page, "lead", "synced")).to_have_text("7")
    expect(cell(page, "contact", "synced")).to_have_text("0")
    start, end = hour_window(utcnow(), console.settings.zone)
    zone = console.settings.zone
    window = f"{start.astimezone(zone):%H:%M} to {end.astimezone(zone):%H:%M}"
    expect(page.locator("#window")).to_have_text(window)

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.get_by_role("status")).to_contain_text("logged out")
    page.goto(STATUS)
    expect(page).to_have_url(re.compile(r"/login"))


def test_wrong_password_is_refused(page: Any, login: Any) -> None:
    login(page, password="nope")
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    expect(page).to_have_url(re.compile(r"/login"))


def test_pause_lets_the_backlog_grow_and_resume_drains_it(
    page: Any, console: Any, login: Any
) -> None:
    page.clock.install()  # the page's timers run when the test says so
    login(page)
    control = page.get_by_role("region", name="Pause or resume")
    control.get_by_label("Object").select_option("lead")
    control.get_by_label("Direction").select_option("to_crm")
    control.get_by_role("button", name="Pause").click()
    expect(page.locator(".paused-banner")).to_contain_text("Lead, to Dynamics")
    expect(page.locator('#status-table tr[data-object="lead"] .badge')).to_have_text("Paused")

    console.sql("INSERT INTO lead (email, last_name) VALUES ('p1@example.com', 'P')")
    console.drain()  # a paused scope is not claimed: the worker has nothing to do
    page.clock.run_for(9_000)
    expect(cell(page, "lead", "inserts")).to_have_text("0")  # not refreshed yet
    page.clock.run_for(1_500)  # the 10-second auto-refresh
    expect(cell(page, "lead", "inserts")).to_have_text("1")
    expect(page.locator("#refreshed")).to_contain_text("Updated")
    console.sql("INSERT INTO lead (email, last_name) VALUES ('p2@example.com', 'P')")
    page.evaluate("window.crmsyncRefresh()")
    expect(cell(page, "lead", "inserts")).to_have_text("2")

    page.locator(".paused-banner").get_by_role("button", name="Resume").click()
    expect(page.locator(".paused-banner")).to_have_count(0)
    console.drain()
    page.reload()
    expect(cell(page, "lead", "total")).to_have_text("0")
    assert console.scalar("SELECT count(*) FROM lead WHERE crm_id IS NOT NULL") == 2


def test_errors_search_filter_export_retry_dismiss(
    page: Any, console: Any, login: Any, tmp_path: Path, screenshots: Path
) -> None:
    seed(console)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    login(page)
    page.get_by_role("link", name="Sync Errors").click()
    expect(page).to_have_url(re.compile(ERRORS))
    rows = page.locator("#errors-table tbody tr")
    expect(rows).to_have_count(4)
    whole = rows.filter(has_text="every record")
    expect(whole).to_have_count(1)
    expect(whole).to_contain_text("From Dynamics")
    expect(whole).to_contain_text("prvReadContact")
    # A <script> label is shown as text and never runs.
    expect(page.locator("#errors-table")).to_contain_text(XSS_LABEL)
    assert page.evaluate("window.__xss") is None
    expect(page.locator("#summary-table")).to_contain_text("0x80040333")
    expect(page.locator("#summary-table")).to_contain_text("0x80040220")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(screenshots / "sync-errors.png"), full_page=True)

    # Search: by email, case-insensitively.
    page.get_by_label("Search", exact=True).fill("DUP@example")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("0x80040333")
    expect(rows.first).to_contain_text("Insert")
    expect(rows.first).to_contain_text("To Dynamics")

    # Filters: object contact only (the record, and the object as a whole).
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Object").select_option("contact")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(2)
    denied = rows.filter(has_text="denied@example.com")
    expect(denied).to_have_count(1)
    expect(page).to_have_url(re.compile(r"object=contact"))

    # Export: the CSV of the current filter.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    path = tmp_path / "errors.csv"
    download_info.value.save_as(path)
    exported = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert sorted(r["record_label"] for r in exported) == ["", "denied@example.com"]
    assert {r["error_code"] for r in exported} == {"0x80040220"}

    # Retry the record after fixing the cause: it leaves the open list once the worker
    # synced it, and the object's error once the worker read contacts again.
    console.emulator(duplicate_detection=True, denied_entity_sets=[])
    denied.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_contain_text(
        "Retried 1 error: 1 record queued to sync again."
    )
    assert dialogs == ["Retry this error?"]
    console.drain()
    page.reload()
    expect(rows).to_have_count(0)
    expect(page.locator("#result-count")).to_have_text("No errors match.")
    page.get_by_label("Status").select_option("resolved")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(2)

    # Dismiss a selection: tick one lead error, dismiss; it leaves the open list.
    page.goto(ERRORS)
    expect(rows).to_have_count(2)
    rows.filter(has_text="dup@example.com").get_by_role("checkbox").check()
    page.get_by_role("button", name="Dismiss selected").click()
    expect(page.get_by_role("status")).to_contain_text("Dismissed 1 error.")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("0x80044331")
    assert console.scalar("SELECT status FROM sync_error WHERE error_code = '0x80040333'") == (
        "dismissed"
    )


def test_console_works_at_800px(page: Any, console: Any, login: Any, screenshots: Path) -> None:
    seed(console)
    page.set_viewport_size({"width": 800, "height": 900})
    login(page)
    for path in (STATUS, ERRORS):
        page.goto(path)
        # Nothing wider than the window but the tables' own scrolling wrappers.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} overflows by {overflow}px at 800px"
    page.goto(STATUS)
    expect(cell(page, "lead", "total")).to_have_text("6")
    page.screenshot(path=str(screenshots / "sync-status-800.png"), full_page=True)
