"""An unknown console address in Chromium: a page in the console's layout with a way
back, not raw JSON; the tab has an icon."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect


def test_unknown_page_is_a_console_page_with_an_icon(page: Any, console: Any, login: Any) -> None:
    login(page)
    response = page.goto("/admin/microsoft-dynamics/sync-stats")
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.locator("main")).to_contain_text("/admin/microsoft-dynamics/sync-stats")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    icon = page.locator('link[rel="icon"][href="/favicon.ico"]')
    expect(icon).to_have_count(1)
    assert page.request.get("/favicon.ico").headers["content-type"] == "image/x-icon"
    page.get_by_role("link", name="Sync Errors").last.click()
    expect(page).to_have_url(console.url + "/admin/microsoft-dynamics/sync-errors")
