"""The operator console: Admin > Microsoft Dynamics > Sync Status and Sync Errors.

Server-rendered Jinja2 pages over the same store queries as the JSON API, a
stylesheet and a small dependency-free script served from ``web/static`` (no CDN, no
build step). ``install`` mounts it all on the app.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from crmsync.web import errors
from crmsync.web.console import errors_page, login, record_page, status_page
from crmsync.web.console.render import STATIC_DIR, redirect, render
from crmsync.web.csrf import CsrfRejected
from crmsync.web.errors import error_response

STATIC_PATH = "/static"
# Machine-facing paths keep the JSON error shape whatever the client accepts.
MACHINE_PREFIXES = ("/api/", "/healthz", "/metrics", "/_")


def wants_page(request: Request) -> bool:
    """Whether an error answers with a console page: a browser asking for HTML, outside
    the API and the operations endpoints."""
    path = request.url.path
    if path.startswith(MACHINE_PREFIXES) or request.method not in ("GET", "HEAD"):
        return False
    return "text/html" in request.headers.get("accept", "")


async def _http_error(request: Request, exc: Exception) -> Response:
    """An unknown console page is a page in the console's layout, not raw JSON."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and wants_page(request):
        message = f"There is no page at {request.url.path}."
        return render(request, "not_found.html", {"message": message}, status_code=404)
    return await errors.http_error(request, exc)


def _favicon() -> Response:
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")


def _home() -> Response:
    return redirect(status_page.PATH)


async def _csrf_rejected(request: Request, exc: Exception) -> Response:
    """A console form with a stale token gets a page saying what to do; the API keeps its
    JSON error shape."""
    if request.url.path.startswith("/api/"):
        return error_response(403, "forbidden", str(getattr(exc, "detail", "forbidden")))
    return render(request, "stale_form.html", {}, status_code=403)


def install(app: FastAPI) -> None:
    app.add_exception_handler(login.LoginRequired, login.login_required)
    app.add_exception_handler(CsrfRejected, _csrf_rejected)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_api_route("/favicon.ico", _favicon, methods=["GET"], include_in_schema=False)
    app.include_router(login.router)
    app.include_router(status_page.router)
    app.include_router(errors_page.router)
    app.include_router(record_page.router)
    for path in ("/", "/admin", "/admin/microsoft-dynamics"):
        app.add_api_route(
            path,
            _home,
            methods=["GET"],
            include_in_schema=False,
            dependencies=[Depends(login.require_login)],
        )
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
