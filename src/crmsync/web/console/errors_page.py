"""The Sync Errors tab: search, filters, paging, summary by code, export, retry, dismiss.

JSON twins: ``GET /api/v1/sync/errors`` (and ``/summary``, ``/export``), ``POST
/api/v1/sync/errors/retry`` and ``/dismiss``. Filters are validated by the same
``sync_errors.make_filters`` as the API; the only console-specific step is reading the
form's ``datetime-local`` values (no offset) as times on the console's clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from crmsync.errors import ValidationFailed
from crmsync.store import params, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.records import NotFound
from crmsync.store.status import DIRECTIONS, OPERATIONS
from crmsync.store.sync_errors import ErrorFilters
from crmsync.web.console.login import require_login
from crmsync.web.console.render import notify, redirect, render, settings_of

PATH = "/admin/microsoft-dynamics/sync-errors"
FILTER_FIELDS = ("q", "object", "direction", "operation", "code", "status", "since", "until")
PAGE_SIZE = 50
MAX_PAGE = 1_000_000
_ID = re.compile(r"[0-9]{1,19}")

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])


def form_timestamp(field: str, value: str | None, zone: ZoneInfo) -> datetime | None:
    """A timestamp from the filter form: ISO 8601, and without an offset on the zone's clock
    (what ``<input type=datetime-local>`` sends)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(field, "is not a date and time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(ZoneInfo("UTC"))


def filters_from(values: Mapping[str, Any], specs: Any, zone: ZoneInfo) -> ErrorFilters:
    """Validated filters from the page's query or a form (empty fields ignored)."""
    given = {k: str(values[k]) for k in FILTER_FIELDS if values.get(k)}
    return sync_errors.make_filters(
        specs,
        q=given.get("q"),
        object=given.get("object"),
        direction=given.get("direction"),
        operation=given.get("operation"),
        code=given.get("code"),
        status=given.get("status"),
        since=form_timestamp("since", given.get("since"), zone),
        until=form_timestamp("until", given.get("until"), zone),
    )


def api_query(filters: ErrorFilters) -> dict[str, str]:
    """The filters as the API's query parameters (timestamps in UTC ISO 8601)."""
    query: dict[str, str] = {}
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        if value is not None and not (name == "status" and value == "open"):
            query[name] = str(value)
    return query


def form_values(filters: ErrorFilters, zone: ZoneInfo) -> dict[str, str]:
    """The filters as the form shows them (times on the console's clock)."""
    values = api_query(filters)
    for name in ("since", "until"):
        at = getattr(filters, name)
        if at is not None:
            values[name] = at.astimezone(zone).strftime("%Y-%m-%dT%H:%M")
    values.setdefault("status", "open")
    return values


def store_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.get(PATH, response_class=HTMLResponse)
def sync_errors_page(request: Request) -> Response:
    zone = settings_of(request).zone
    specs = request.app.state.specs
    params = request.query_params
    problem = None
    try:
        filters = filters_from(params, specs, zone)
    except ValidationFailed as exc:
        problem = f"{exc.field}: {exc.message}"
        filters = ErrorFilters()
    cursor = params.get("cursor") or None
    raw_page = params.get("page", "")
    page = int(raw_page) if _ID.fullmatch(raw_page) else 1
    page = min(max(page, 1), MAX_PAGE)
    with store_of(request).connect() as conn:
        try:
            listing = sync_errors.list_errors(conn, filters, limit=PAGE_SIZE, cursor=cursor)
        except ValidationFailed as exc:  # a stale or edited cursor: start again
            problem = problem or f"{exc.field}: {exc.message}"
            listing = sync_errors.list_errors(conn, filters, limit=PAGE_SIZE)
            page = 1
        summary = sync_errors.summary(conn, filters)
    query = api_query(filters)
    first = (page - 1) * PAGE_SIZE + 1 if listing["items"] else 0
    context = {
        "path": PATH,
        "filters": form_values(filters, zone),
        "filtered": filters.given or filters.status != "open",
        "problem": problem,
        "listing": listing,
        "summary": summary,
        "objects": list(specs),
        "directions": DIRECTIONS,
        "operations": OPERATIONS,
        "statuses": sync_errors.STATUSES,
        "hidden": query,
        "export_csv": "/api/v1/sync/errors/export?" + urlencode({**query, "format": "csv"}),
        "export_json": "/api/v1/sync/errors/export?" + urlencode({**query, "format": "json"}),
        "api_url": "/api/v1/sync/errors?" + urlencode(query),
        "first": first,
        "last": first + len(listing["items"]) - 1 if listing["items"] else 0,
        "page": page,
        "next_url": (
            PATH + "?" + urlencode({**query, "cursor": listing["next_cursor"], "page": page + 1})
            if listing["next_cursor"]
            else None
        ),
        "first_url": PATH + ("?" + urlencode(query) if query else "") if cursor else None,
        "return_query": urlencode(query),
    }
    return render(request, "sync_errors.html", context, status_code=422 if problem else 200)


def selected_ids(form: FormData) -> list[int]:
    """The errors a form names: the row's own button (``one``) or the ticked boxes."""
    one = form.get("one")
    raw = [one] if one else form.getlist("ids")
    ids = []
    for value in raw:
        text = value if isinstance(value, str) else ""
        if not _ID.fullmatch(text) or not 1 <= int(text) <= params.MAX_ID:
            raise ValidationFailed("ids", f"{text[:40]!r} is not an error id")
        ids.append(int(text))
    return ids


async def _action(request: Request, action: str) -> Response:
    zone = settings_of(request).zone
    form = await request.form()
    filters_given: dict[str, Any] = {k: form.get(k) for k in FILTER_FIELDS}
    back = {k: str(v) for k, v in filters_given.items() if isinstance(v, str) and v}
    try:
        filters = filters_from(filters_given, request.app.state.specs, zone)
        back = api_query(filters)
        whole_filter = form.get("scope") == "filter" and not form.get("one")
        ids = None if whole_filter else selected_ids(form)
        if ids is not None and not ids:
            notify(request, "Select one or more errors first.", "error")
            return redirect(PATH, back)
        result = await run_in_threadpool(_apply, store_of(request), action, filters, ids)
    except (ValidationFailed, NotFound) as exc:
        notify(request, f"Nothing done: {exc}", "error")
        return redirect(PATH, back)
    n = result["errors"]
    noun = "error" if n == 1 else "errors"
    if action == "retry":
        message = (
            f"{result['requeued']:,} of {n:,} {noun} queued again;"
            " they leave the list once their records sync."
        )
    else:
        message = f"{result['dismissed']:,} {noun} dismissed."
    notify(request, message)
    return redirect(PATH, back)


def _apply(
    engine: Engine, action: str, filters: ErrorFilters, ids: list[int] | None
) -> dict[str, Any]:
    with write_transaction(engine) as conn:
        if action == "retry":
            if ids is None:
                return sync_errors.retry_matching(conn, filters)
            return sync_errors.retry_ids(conn, ids)
        if ids is None:
            return sync_errors.dismiss_matching(conn, filters)
        return sync_errors.dismiss_ids(conn, ids)


@router.post(PATH + "/retry")
async def retry_form(request: Request) -> Response:
    return await _action(request, "retry")


@router.post(PATH + "/dismiss")
async def dismiss_form(request: Request) -> Response:
    return await _action(request, "dismiss")
