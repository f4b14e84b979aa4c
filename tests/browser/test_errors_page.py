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


def seed_kinds(console: Any) -> None:
    """Three kinds of error on two fields, as the worker writes them."""
    now = utcnow()
    kinds = [
        ("0x80044331", "data_too_long", "last_name", 3),
        ("0x80044331", "data_too_long", "email", 2),
        ("http_503", "unavailable", None, 4),
    ]
    rows = []
    for code, category, field, n in kinds:
        for _ in range(n):
            i = len(rows) + 1
            rows.append(
                {
                    "object": "lead",
                    "direction": "to_crm",
                    "record_key": str(i),
                    "record_id": i,
                    "crm_id": None,
                    "record_label": f"kind{i}@example.com",
                    "operation": "update",
                    "error_code": code,
                    "error_message": f"failure {i}",
                    "first_failed_at": now - timedelta(minutes=i + 5),
                    "last_failed_at": now - timedelta(minutes=i),
                    "attempts": 1,
                    "status": "open",
                    "category": category,
                    "field": field,
                }
            )
    with write_transaction(console.engine) as conn:
        conn.execute(sa.insert(sync_error), rows)


def test_kind_field_and_fix_are_columns_filters_and_in_the_summary(
    page: Any, console: Any, login: Any, screenshots: Path
) -> None:
    from crmsync import diagnosis

    seed_kinds(console)
    login(page)
    page.goto(ERRORS)
    rows = page.locator("#errors-table tbody tr")
    expect(rows).to_have_count(9)
    by_kind = page.locator("#summary-category tbody tr")
    expect(by_kind).to_have_count(2)
    expect(by_kind.first).to_contain_text("Data too long")  # 5, then Unavailable's 4
    expect(by_kind.first.locator("td.num")).to_have_text("5")
    expect(by_kind.nth(1).locator("td.num")).to_have_text("4")
    expect(page.locator("#summary-field")).to_contain_text("last_name")
    expect(page.locator("#summary-field tbody tr").first.locator("td.num")).to_have_text("3")
    # One row's columns: its kind, its field and what to do.
    row = page.locator("#errors-table tbody tr", has_text="kind1@example.com")
    expect(row.locator("td.category")).to_have_text("Data too long")
    expect(row.locator("td.field")).to_have_text("last_name")
    expect(row.locator("td.fix")).to_have_text(diagnosis.fix_for("data_too_long", "0x80044331"))
    page.screenshot(path=str(screenshots / "sync-errors-kinds.png"))

    # Filter by field from the form, then by kind from the summary.
    page.get_by_label("Field").fill("email")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(2)
    expect(page).to_have_url(re.compile(r"field=email"))
    page.goto(ERRORS)
    page.locator("#summary-category").get_by_role("link", name="Data too long").click()
    expect(rows).to_have_count(5)
    expect(page.get_by_label("Kind")).to_have_value("data_too_long")
    page.get_by_label("Kind").select_option("unavailable")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(4)
    # A kind that is not one of the list is refused, naming the field.
    page.goto(ERRORS + "?category=bogus")
    expect(page.locator("#filter-problem")).to_contain_text("Kind")
    expect(rows).to_have_count(0)


def test_retry_all_of_a_kind_from_the_summary(page: Any, console: Any, login: Any) -> None:
    seed_kinds(console)
    with write_transaction(console.engine) as conn:
        # Parked entries for the unavailable ones (ids 6..9), so a retry has work to do.
        for key in ("6", "7", "8", "9", "1"):
            conn.execute(
                sa.text(
                    "INSERT INTO sync_queue (object, direction, record_key, record_id,"
                    " operation, version, attempts, state, first_queued_at, last_changed_at,"
                    " next_attempt_at)"
                    " VALUES ('lead', 'to_crm', :k, :k, 'update', 1, 8, 'parked', :t, :t, :t)"
                ),
                {"k": key, "t": utcnow()},
            )
    login(page)
    page.goto(ERRORS)
    page.on("dialog", lambda d: d.accept())
    kind = page.locator("#summary-category tbody tr", has_text="Unavailable")
    kind.get_by_role("button", name="Retry all").click()
    expect(page.locator(".flash, [role=status]").first).to_contain_text("Retried 4 errors")
    with console.engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT record_key, state FROM sync_queue")).all())
    assert states == {"6": "pending", "7": "pending", "8": "pending", "9": "pending", "1": "parked"}
