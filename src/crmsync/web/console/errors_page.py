"""The Sync Errors tab: search, filters, paging, summary by code, export, retry, dismiss.

JSON twins: ``GET /api/v1/sync/errors`` (and ``/summary``, ``/export``), ``POST
/api/v1/sync/errors/retry`` and ``/dismiss``. Filters are validated by the same
``sync_errors.make_filters`` as the API; the only console-specific step is reading the
form's date boxes (ISO 8601, ``YYYY-MM-DD HH:MM`` without an offset) as times on the
console's clock.

Invariants: a filter that cannot be applied lists no row and offers no bulk action (a
wrong filter must never widen to everything), and the form keeps what was typed, each bad
field marked. The page's place ("Showing 51-100 of 186") is counted from its cursor,
never read from the URL.
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

from crmsync.domain import ErrorStatus
from crmsync.errors import ValidationFailed
from crmsync.store import params, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.records import NotFound
from crmsync.store.status import DIRECTIONS, OPERATIONS
from crmsync.store.sync_errors import ErrorFilters
from crmsync.web.auth import actor_of
from crmsync.web.console import views
from crmsync.web.console.login import require_login
from crmsync.web.console.render import notify, redirect, render, settings_of

PATH = "/admin/microsoft-dynamics/sync-errors"
FILTER_FIELDS = (
    "q",
    "object",
    "direction",
    "operation",
    "code",
    "category",
    "field",
    "status",
    "since",
    "until",
)
PAGE_SIZES = (25, 50, 100, 200)
PAGE_SIZE = 50
# How the form shows a time, and what it reads besides any ISO 8601 form.
FORM_TIME = "%Y-%m-%d %H:%M"
_ID = re.compile(r"[0-9]{1,19}")
FIELD_TITLES = {
    "q": "Search",
    "object": "Object",
    "direction": "Direction",
    "operation": "Operation",
    "code": "Error code",
    "category": "Kind",
    "field": "Field",
    "status": "Status",
    "since": "Failed since",
    "until": "Failed before",
    "limit": "Rows per page",
}
# The store's words for a reversed window name the API's parameter; the form's names it.
_REWORDED = {"is before since": "is earlier than Failed since"}
NO_ROWS: dict[str, Any] = {"items": [], "total": 0, "next_cursor": None}

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])


def form_timestamp(field: str, value: str | None, zone: ZoneInfo) -> datetime | None:
    """A timestamp from the filter form: ISO 8601 (``2026-11-25 14:05`` or with a ``T``,
    seconds or an offset), a time without an offset being on the zone's clock."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(field, "is not a date and time (YYYY-MM-DD HH:MM)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return params.in_range(field, parsed)


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
        category=given.get("category"),
        field=given.get("field"),
        status=given.get("status"),
        since=form_timestamp("since", given.get("since"), zone),
        until=form_timestamp("until", given.get("until"), zone),
    )


def read_filters(
    values: Mapping[str, Any], specs: Any, zone: ZoneInfo
) -> tuple[ErrorFilters | None, dict[str, str]]:
    """The filters, or None and every bad field's reason (not just the first: each field
    found bad is set aside and the rest checked again)."""
    given = {k: values[k] for k in FILTER_FIELDS if values.get(k)}
    problems: dict[str, str] = {}
    for _ in range(len(FILTER_FIELDS) + 1):
        try:
            filters = filters_from(given, specs, zone)
        except ValidationFailed as exc:
            problems[exc.field] = _REWORDED.get(exc.message, exc.message)
            if given.pop(exc.field, None) is None:
                break
            continue
        return (None, problems) if problems else (filters, {})
    return None, problems


def page_size(raw: str | None) -> int:
    """The page size asked for: one of ``PAGE_SIZES`` (default ``PAGE_SIZE``)."""
    if not raw:
        return PAGE_SIZE
    if not _ID.fullmatch(raw) or int(raw) not in PAGE_SIZES:
        choices = ", ".join(map(str, PAGE_SIZES))
        raise ValidationFailed("limit", f"must be one of {choices}")
    return int(raw)


def api_query(filters: ErrorFilters) -> dict[str, str]:
    """The filters as the API's query parameters (timestamps in UTC ISO 8601)."""
    query: dict[str, str] = {}
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        if value is not None and not (name == "status" and value == ErrorStatus.OPEN):
            query[name] = str(value)
    return query


def form_values(filters: ErrorFilters, zone: ZoneInfo) -> dict[str, str]:
    """The filters as the form shows them (times on the console's clock)."""
    values = api_query(filters)
    for name in ("since", "until"):
        at = getattr(filters, name)
        if at is not None:
            values[name] = at.astimezone(zone).strftime(FORM_TIME)
    values.setdefault("status", ErrorStatus.OPEN)
    return values


def category_title(category: str) -> str:
    """``data_too_long`` as the console words it: ``Data too long``."""
    return category.replace("_", " ").capitalize()


def page_label(first: int, shown: int, total: int) -> str:
    """``Showing 51-100 of 186`` (an en dash), from the page's real place: ``first`` is
    ``sync_errors.position`` of its cursor, never a number from the URL."""
    if not shown:
        return "No errors match." if not first else "No more errors on this page."
    return f"Showing {first + 1:,}\u2013{first + shown:,} of {total:,}"


def page_of(before: int, limit: int, total: int) -> str | None:
    """``Page 2 of 4``: where the page starts, in pages of ``limit`` (None: nothing to page).

    Counted from the rows before the cursor and the rows from it on, not from ``total``
    alone: when rows leave the list between loads (resolved, dismissed) ``before`` is no
    longer a multiple of ``limit``, and a page with rows before it is never page 1.
    """
    if total <= limit and not before:
        return None
    page = -(-before // limit) + 1
    pages = page - 1 + max(1, -(-max(0, total - before) // limit))
    return f"Page {page:,} of {pages:,}"


def store_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _url(query: Mapping[str, str], **extra: str | int | None) -> str:
    clean = {k: str(v) for k, v in {**query, **extra}.items() if v not in (None, "")}
    return PATH + ("?" + urlencode(clean) if clean else "")


@router.get(PATH, response_class=HTMLResponse)
def sync_errors_page(request: Request) -> Response:
    zone = settings_of(request).zone
    specs = request.app.state.specs
    params = request.query_params
    filters, problems = read_filters(params, specs, zone)
    try:
        limit = page_size(params.get("limit"))
    except ValidationFailed as exc:
        problems[exc.field], limit = exc.message, PAGE_SIZE
        filters = None
    cursor = params.get("cursor") or None
    stale = None
    listing, summary, before, previous = NO_ROWS, {"total": 0, "by_code": {}}, 0, None
    if filters is not None:
        with store_of(request).connect() as conn:
            try:
                listing = sync_errors.list_errors(conn, filters, limit=limit, cursor=cursor)
                before = sync_errors.position(conn, filters, cursor)
                if cursor is not None:
                    previous = sync_errors.previous_cursor(conn, filters, cursor, limit)
            except ValidationFailed as exc:  # a stale or edited cursor: start again
                stale = f"{exc.field}: {exc.message}; showing the first page"
                listing = sync_errors.list_errors(conn, filters, limit=limit)
                cursor = None
            summary = sync_errors.summary(conn, filters)
    query = api_query(filters) if filters is not None else {}
    sized = {**query, "limit": str(limit) if limit != PAGE_SIZE else ""}
    shown = len(listing["items"])
    context = {
        "path": PATH,
        # A filter that cannot be applied keeps what the user typed, to be corrected.
        "filters": (
            form_values(filters, zone)
            if filters is not None
            else {k: str(params[k]) for k in FILTER_FIELDS if params.get(k)}
        ),
        "filtered": filters is None or filters.given or filters.status != ErrorStatus.OPEN,
        "problems": problems,
        "stale": stale,
        "listing": listing,
        "summary": summary,
        "objects": list(specs),
        "directions": DIRECTIONS,
        "operations": OPERATIONS,
        "statuses": sync_errors.STATUSES,
        "categories": sync_errors.CATEGORIES,
        "category_of": category_title,
        "hidden": query,
        "export_csv": "/api/v1/sync/errors/export?" + urlencode({**query, "format": "csv"}),
        "export_json": "/api/v1/sync/errors/export?" + urlencode({**query, "format": "json"}),
        "api_url": "/api/v1/sync/errors?" + urlencode({**query, "limit": limit}),
        "count_label": page_label(before, shown, listing["total"]),
        "page_of": page_of(before, limit, listing["total"]),
        "page_sizes": PAGE_SIZES,
        "limit": limit,
        "next_url": _url(sized, cursor=listing["next_cursor"]) if listing["next_cursor"] else None,
        "first_url": _url(sized) if cursor else None,
        "previous_url": _url(sized, cursor=previous) if cursor else None,
        "return_query": urlencode(query),
        "field_titles": FIELD_TITLES,
        "title_of": views.title,
        "direction_of": lambda d: views.DIRECTION_TITLES.get(d, d),
        "operation_of": lambda o: views.OPERATION_TITLES.get(o, o),
        "capitalize_of": str.capitalize,
    }
    status = 422 if problems or stale else 200
    return render(request, "sync_errors.html", context, status_code=status)


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
        result = await run_in_threadpool(
            _apply,
            store_of(request),
            request.app.state.specs,
            action,
            filters,
            ids,
            actor_of(request),
        )
    except (ValidationFailed, NotFound) as exc:
        notify(request, f"Nothing done: {exc}", "error")
        return redirect(PATH, back)
    message = action_message(action, result)
    notify(request, message)
    return redirect(PATH, back)


def action_message(action: str, result: Mapping[str, int]) -> str:
    """What a retry or dismissal did, in words (``result`` as ``sync_errors`` returns)."""
    n = result["errors"]
    errors = f"{n:,} error" + ("" if n == 1 else "s")
    if action == "dismiss":
        return f"Dismissed {errors}."
    queued = result["requeued"]
    records = f"{queued:,} record" + ("" if queued == 1 else "s")
    return (
        f"Retried {errors}: {records} queued to sync again."
        " An error leaves this list once its record syncs."
    )


def _apply(
    engine: Engine,
    specs: Any,
    action: str,
    filters: ErrorFilters,
    ids: list[int] | None,
    actor: str | None = None,
) -> dict[str, Any]:
    # The same entry points as the API's and the CLI's: ids, or the filters as raw values.
    given = None if ids is not None else api_query(filters)
    with write_transaction(engine) as conn:
        if action == "retry":
            return sync_errors.retry(conn, specs, ids=ids, given=given, actor=actor)
        return sync_errors.dismiss_selected(conn, specs, ids=ids, given=given, actor=actor)


@router.post(PATH + "/retry")
async def retry_form(request: Request) -> Response:
    return await _action(request, "retry")


@router.post(PATH + "/dismiss")
async def dismiss_form(request: Request) -> Response:
    return await _action(request, "dismiss")
