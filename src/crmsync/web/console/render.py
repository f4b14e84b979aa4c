"""Jinja2 rendering for the console: one template environment, autoescaped, with the
view helpers as filters and the session's CSRF token and notices in every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from crmsync.config import Settings
from crmsync.web import csrf
from crmsync.web.console import views
from crmsync.web.session import logged_in

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
FLASH_KEY = "notice"
# Only our own script and styles run, pages cannot be framed (clickjacking), forms post
# only here: a second wall behind autoescaping.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
# Jinja2Templates turns autoescape on for .html; say so where a reader looks for it.
templates.env.autoescape = True
templates.env.filters.update(
    count=views.count,
    duration=views.duration,
    title=views.title,
    direction=lambda d: views.DIRECTION_TITLES.get(d, d),
    operation=lambda o: views.OPERATION_TITLES.get(o, o),
    paused_label=views.paused_label,
)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def notify(request: Request, message: str, kind: str = "ok") -> None:
    """A one-time notice shown at the top of the next page (after a redirect)."""
    request.session[FLASH_KEY] = {"message": message, "kind": kind}


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    zone = settings_of(request).zone
    notice = request.session.pop(FLASH_KEY, None) if FLASH_KEY in request.session else None
    page = {
        "csrf_token": csrf.token(request),
        "signed_in": logged_in(request),
        "notice": notice,
        "zone": zone,
        "zone_name": zone.key,
        "local": lambda value: views.local(value, zone),
        **context,
    }
    response = templates.TemplateResponse(request, name, page, status_code=status_code)
    # Pages show live data and carry a CSRF token: never cache them.
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(path: str, query: dict[str, str] | None = None) -> RedirectResponse:
    """303 See Other: after a form post, the browser GETs the page again."""
    clean = {k: v for k, v in (query or {}).items() if v}
    return RedirectResponse(f"{path}?{urlencode(clean)}" if clean else path, status_code=303)
