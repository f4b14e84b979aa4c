"""The Sync Errors tab in Chromium with many errors: a filter that cannot be applied,
paging by cursor (first, previous, next, rows per page) and compact rows.

The errors are written with SQL (the worker makes real ones in ``test_console.py``);
what is measured here is how the page shows a long list.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_error
from crmsync.store.types import utcnow

ERRORS = "/admin/microsoft-dynamics/sync-errors"
MESSAGE = (
    "A validation error occurred. The length of the 'lastname' attribute of the 'lead'"
    " entity exceeded the maximum allowed length of '50'. The value supplied was longer"
    " than the column allows; shorten it locally and retry the record, or widen the column"
    " in Dynamics. Correlation id 5c1f0b6e-8d1b-4a57-9f3e-2b0c3f4a5d6e, request {n}."
)


def seed_errors(console: Any, n: int) -> None:
    now = utcnow()
    rows = [
        {
            "object": "lead",
            "direction": "to_crm" if i % 3 else "from_crm",
            "record_key": str(i),
            "record_id": i,
            "crm_id": f"00000000-0000-0000-0000-{i:012d}",
            "record_label": f"a.very.long.first.name.{i}@subsidiary.example-company.com",
            "operation": "update",
            "error_code": "0x80044331",
            "error_message": MESSAGE.format(n=i),
            "first_failed_at": now - timedelta(minutes=i + 5),
            "last_failed_at": now - timedelta(minutes=i),
            "attempts": 3,
            "status": "open",
        }
        for i in range(1, n + 1)
    ]
    with write_transaction(console.engine) as conn:
        conn.execute(sa.insert(sync_error), rows)


def test_a_bad_filter_lists_nothing_keeps_the_input_and_marks_the_field(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    seed_errors(console, 12)
    login(page)
    page.goto(ERRORS)
    rows = page.locator("#errors-table tbody tr")
    expect(rows).to_have_count(12)
    since = page.get_by_label("Failed since")
    since.fill("yesterday")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#filter-problem")).to_contain_text("Filter not applied")
    expect(rows).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Retry all|Dismiss all"))).to_have_count(0)
    expect(page.get_by_role("link", name="Export CSV")).to_have_count(0)
    expect(since).to_have_value("yesterday")
    expect(since).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#problem-since")).to_contain_text("Is not a date and time")
    # The message is the field's accessible description (a screen reader reads it).
    described = since.get_attribute("aria-describedby")
    assert described == "problem-since"
    page.screenshot(path=str(screenshots / "sync-errors-bad-filter.png"), full_page=True)

    # Both date boxes set, in the wrong order: both values stay, "before" is marked.
    since.fill("2026-11-25 10:00")
    page.get_by_label("Failed before").fill("2026-11-24 10:00")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#problem-until")).to_contain_text("earlier than Failed since")
    expect(since).to_have_value("2026-11-25 10:00")
    expect(page.get_by_label("Failed before")).to_have_value("2026-11-24 10:00")
    expect(rows).to_have_count(0)

    # Corrected: the rows and the actions come back, the field is no longer marked.
    page.get_by_label("Failed before").fill("")
    since.fill(
        (utcnow() - timedelta(days=1)).astimezone(console.settings.zone).strftime("%Y-%m-%d %H:%M")
    )
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(12)
    expect(since).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Retry all 12")).to_be_visible()


def test_paging_follows_the_cursor_back_and_forth_with_a_page_size(
    page: Any, console: Any, login: Any
) -> None:
    seed_errors(console, 120)
    login(page)
    page.goto(ERRORS)
    rows = page.locator("#errors-table tbody tr")
    count = page.locator("#result-count")
    expect(rows).to_have_count(50)
    expect(count).to_have_text("Showing 1\u201350 of 120")
    expect(page.locator("#page-of")).to_have_text("Page 1 of 3")

    page.get_by_label("Rows per page").select_option("25")
    expect(page).to_have_url(re.compile(r"limit=25"))
    expect(rows).to_have_count(25)
    expect(count).to_have_text("Showing 1\u201325 of 120")
    first_ids = rows.evaluate_all("rs => rs.map(r => r.dataset.errorId)")

    page.get_by_role("link", name="Next page").click()
    expect(count).to_have_text("Showing 26\u201350 of 120")
    page.get_by_role("link", name="Next page").click()
    expect(count).to_have_text("Showing 51\u201375 of 120")
    expect(page.locator("#page-of")).to_have_text("Page 3 of 5")
    third_ids = rows.evaluate_all("rs => rs.map(r => r.dataset.errorId)")
    page.get_by_role("link", name="Previous page").click()
    expect(count).to_have_text("Showing 26\u201350 of 120")
    page.get_by_role("link", name="Next page").click()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.errorId)") == third_ids
    page.get_by_role("link", name="First page").click()
    expect(count).to_have_text("Showing 1\u201325 of 120")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.errorId)") == first_ids
    expect(page.get_by_role("link", name="Previous page")).to_have_count(0)

    # A page number in the address claims nothing: the label is the rows shown.
    page.goto(ERRORS + "?page=99999999")
    expect(count).to_have_text("Showing 1\u201350 of 120")


def test_rows_are_compact_at_1440_by_900(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    seed_errors(console, 50)
    page.set_viewport_size({"width": 1440, "height": 900})
    login(page)
    page.goto(ERRORS)
    rows = page.locator("#errors-table tbody tr")
    expect(rows).to_have_count(50)
    # From the table's top, at least fifteen whole rows fit on the screen.
    page.locator("#errors-table thead").evaluate("h => h.scrollIntoView({block: 'start'})")
    visible = rows.evaluate_all(
        "rs => rs.filter(r => { const b = r.getBoundingClientRect();"
        " return b.top >= 0 && b.bottom <= window.innerHeight; }).length"
    )
    assert visible >= 15, f"{visible} rows visible at 1440x900"
    heights = rows.evaluate_all("rs => rs.map(r => r.getBoundingClientRect().height)")
    assert max(heights) <= 52, heights
    # Emails are cut with an ellipsis, not broken across lines.
    label = rows.first.locator(".record .label")
    assert label.evaluate("e => e.getClientRects().length") == 1
    page.screenshot(path=str(screenshots / "sync-errors-compact.png"))

    # The rest on demand, by keyboard too: the full message, record, ids, first failure.
    summary = rows.first.locator("summary")
    summary.focus()
    page.keyboard.press("Enter")
    more = rows.first.locator(".more-body")
    expect(more).to_be_visible()
    expect(more).to_contain_text("request 1.")
    expect(more).to_contain_text("a.very.long.first.name.1@subsidiary.example-company.com")
    expect(more).to_contain_text("First failed")
    page.keyboard.press("Enter")
    expect(more).to_be_hidden()
