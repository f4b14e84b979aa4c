"""The record page in Chromium, over a store the real worker filled against the emulator:
from an error to its record page and back, both sides side by side with the one
difference marked, and the retry button.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

ERRORS = "/admin/microsoft-dynamics/sync-errors"


def sales(console: Any) -> httpx.Client:
    """A Dynamics user of its own (not crmsync's application user)."""
    url = console.settings.dynamics_url
    token = httpx.post(
        f"{url}/t/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "sales", "client_secret": "s"},
        timeout=10,
    ).json()["access_token"]
    return httpx.Client(
        base_url=f"{url}/api/data/v9.2/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def add_lead(console: Any, email: str, last_name: str) -> int:
    console.sql(
        "INSERT INTO lead (email, first_name, last_name, company) VALUES (:e, 'Ada', :n, 'Acme')",
        {"e": email, "n": last_name},
    )
    return int(console.scalar("SELECT max(id) FROM lead"))


def test_from_an_error_to_its_record_page_and_back(page: Any, console: Any, login: Any) -> None:
    lead = add_lead(console, "long@example.com", "x" * 60)
    console.drain()
    login(page)
    page.goto(ERRORS + "?object=lead")
    page.locator("a.record-link").first.click()
    expect(page).to_have_url(re.compile(rf"/admin/microsoft-dynamics/records/lead/{lead}\?back="))
    expect(page.locator("#record-title")).to_contain_text("long@example.com")
    error = page.locator("#record-errors li")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("0x80044331")
    expect(page.locator("#never-synced")).to_be_visible()
    events = page.locator("#timeline tbody tr")
    expect(events).to_have_count(4)
    assert [events.nth(i).get_attribute("data-event") for i in range(4)] == [
        "parked",
        "failed",
        "sent",
        "captured",
    ]
    page.locator("#back-link").click()
    expect(page).to_have_url(f"{console.url}{ERRORS}?object=lead")


def test_both_sides_with_the_one_difference_marked(page: Any, console: Any, login: Any) -> None:
    lead = add_lead(console, "sides@example.com", "Lovelace")
    console.drain()
    crm_id = console.scalar(f"SELECT crm_id FROM lead WHERE id = {lead}")
    with sales(console) as dynamics:
        dynamics.patch(f"leads({crm_id})", json={"lastname": "Byron"}).raise_for_status()
    login(page)
    page.goto(f"/admin/microsoft-dynamics/records/lead/{lead}")
    expect(page.locator("#sync-verdict")).to_have_text("The two sides differ")
    differing = page.locator("#compare-table tr.differs")
    expect(differing).to_have_count(1)
    expect(differing).to_have_attribute("data-field", "last_name")
    expect(differing.locator('td[data-side="local"]')).to_have_text("Lovelace")
    expect(differing.locator('td[data-side="dynamics"]')).to_have_text("Byron")
    same = page.locator('#compare-table tr[data-field="email"]')
    expect(same.locator('td[data-side="dynamics"]')).to_have_text("sides@example.com")
    expect(same).not_to_have_class("differs")


def test_the_retry_button(page: Any, console: Any, login: Any) -> None:
    console.emulator(duplicate_detection=True)
    with sales(console) as dynamics:
        created = dynamics.post(
            "leads",
            json={"emailaddress1": "dup@example.com", "lastname": "Other"},
            headers={"Prefer": "return=representation"},
        )
        created.raise_for_status()
        other = created.json()["leadid"]
        lead = add_lead(console, "dup@example.com", "Mine")
        # The other record is crmsync's to pull too: pause pulls so only the push runs.
        console.sql(
            "INSERT INTO sync_pause (object, direction, paused_at)"
            " VALUES ('lead', 'from_crm', CURRENT_TIMESTAMP)"
        )
        console.drain()
        login(page)
        page.goto(f"/admin/microsoft-dynamics/records/lead/{lead}")
        error = page.locator("#record-errors li")
        expect(error).to_contain_text("0x80040333")
        # The duplicate goes away in Dynamics; a retry needs no local change.
        dynamics.delete(f"leads({other})").raise_for_status()
    page.locator("#record-errors button", has_text="Retry").click()
    expect(page.locator(".notice")).to_have_text("Retried: queued to sync again.")
    expect(page).to_have_url(f"{console.url}/admin/microsoft-dynamics/records/lead/{lead}")
    console.drain()
    page.reload()
    expect(page.locator("#no-errors")).to_be_visible()
    expect(page.locator('#timeline tbody tr[data-event="retried"]')).to_contain_text(
        "console:admin"
    )
    assert console.scalar(f"SELECT crm_id FROM lead WHERE id = {lead}")


def test_the_search_box_finds_a_record(page: Any, console: Any, login: Any) -> None:
    lead = add_lead(console, "Findable.Person@example.com", "Person")
    login(page)
    page.goto(ERRORS)
    page.get_by_role("searchbox", name="Find a record").fill("findable.person")
    page.get_by_role("button", name="Find").click()
    page.locator("#search-results a").first.click()
    expect(page).to_have_url(f"{console.url}/admin/microsoft-dynamics/records/lead/{lead}")
    page.goto("/admin/microsoft-dynamics/records?find=nobody-like-this")
    expect(page.locator("#no-results")).to_be_visible()
