"""``/api/v1/docs`` in Chromium with every request off the server blocked: Swagger UI
renders the API from the package's assets, under the console's CSP, asking nothing of
any other host."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from playwright.sync_api import expect


def test_api_docs_render_offline_under_the_csp(page: Any, console: Any, screenshots: Path) -> None:
    origin = urlparse(console.url).netloc
    outside: list[str] = []
    problems: list[str] = []

    def route(r: Any) -> None:
        host = urlparse(r.request.url).netloc
        if host and host != origin and not r.request.url.startswith("data:"):
            outside.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto("/api/v1/docs")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    # The API's operations, rendered from /api/v1/openapi.json.
    expect(page.locator(".swagger-ui .information-container .title")).to_contain_text("crmsync")
    expect(
        page.locator(".opblock-summary-path", has_text="/api/v1/sync/errors").first
    ).to_be_visible()
    page.locator(".opblock-summary-path", has_text="/api/v1/sync/status").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    page.screenshot(path=str(screenshots / "api-docs.png"))
    assert outside == [], outside
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems

    # The assets are the package's, and nothing else of it is served.
    for name, kind in (("swagger-ui.css", "text/css"), ("swagger-ui-bundle.js", "text/javascript")):
        asset = page.request.get(f"/swagger-ui/{name}")
        assert asset.status == 200 and asset.headers["content-type"].startswith(kind)
    assert page.request.get("/swagger-ui/index.html").status == 404
    assert page.request.get("/swagger-ui/..%2f..%2f__init__.py").status == 404
