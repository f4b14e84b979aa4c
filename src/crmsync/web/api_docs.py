"""``/api/v1/docs``: Swagger UI over ``/api/v1/openapi.json``, offline.

FastAPI's own docs page loads Swagger UI from a CDN, so without the internet it is a
blank page (and a CDN script is one more party that could run code in the page). Here
the page and its two assets come from the pinned ``swagger-ui-bundle-v2`` package, the
start-up script is ours (``static/api-docs.js``: no inline script), and the page carries
the console's Content-Security-Policy, so nothing can load from anywhere else.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

from crmsync.web.auth import API_PREFIX
from crmsync.web.console.render import SECURITY_HEADERS

DOCS_PATH = f"{API_PREFIX}/docs"
ASSETS_PATH = "/swagger-ui"
ASSETS_DIR = Path(str(swagger_ui_bundle.swagger_ui_path))
# The only files served from the package: what the page below loads.
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>crmsync API · Swagger UI</title>
  <link rel="icon" href="/favicon.ico">
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js" defer></script>
  <script src="/static/api-docs.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{API_PREFIX}/openapi.json"></div>
  <noscript>Swagger UI needs JavaScript; the API's description is at
    <a href="{API_PREFIX}/openapi.json">{API_PREFIX}/openapi.json</a>.</noscript>
</body>
</html>
"""


def docs_page() -> Response:
    return HTMLResponse(PAGE, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such resource: {ASSETS_PATH}/{name}")
    # The package is pinned, so its files change only with an upgrade: cache for a day.
    return FileResponse(
        ASSETS_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


def install(app: FastAPI) -> None:
    """Mount the page and its assets (public, as the OpenAPI description is)."""
    app.add_api_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(ASSETS_PATH + "/{name}", asset, methods=["GET"], include_in_schema=False)
