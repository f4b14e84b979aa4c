"""One record's page: both sides side by side (read live from Dynamics), its open errors
with their fix, its timeline, and retry, dismiss and resync; and the record search.

Reached from an error row on Sync Errors, from the oldest waiting record in the Sync
Status details and from the search box in the tabs' header. JSON twins: ``/history``,
``/compare``, ``/resync`` under ``/api/v1/records/{object}/{id}`` and
``/api/v1/search/records``, over the same store functions.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from crmsync.domain import Direction, ObjectSpec
from crmsync.errors import ValidationFailed
from crmsync.mapping.compare import compare_fields, in_sync
from crmsync.store import history, params, record_view, sync_errors
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.records import NotFound, resolve_object
from crmsync.web.api_history import ResyncRequest, read_dynamics, resync_record
from crmsync.web.auth import actor_of
from crmsync.web.console.login import require_login
from crmsync.web.console.render import notify, redirect, render, settings_of

BASE = "/admin/microsoft-dynamics"
PATH = BASE + "/records"
TIMELINE_PAGE = 50

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])


def record_path(obj: str, record_id: int, back: str | None = None) -> str:
    """The record page's path; ``back`` is where its "back" link goes."""
    query = f"?{urlencode({'back': back})}" if back else ""
    return f"{PATH}/{obj}/{record_id}{query}"


def safe_back(back: str | None) -> str:
    """A console page to go back to: only our own pages (no open redirect)."""
    if back:
        parts = urlsplit(back)
        if not parts.scheme and not parts.netloc and parts.path.startswith(BASE + "/"):
            return back
    return BASE + "/sync-errors"


def dynamics_link(request: Request, spec: ObjectSpec, crm_id: str | None) -> str | None:
    """The record in Dynamics' own UI, for an https environment URL (not the emulator)."""
    url = settings_of(request).dynamics_url
    if not crm_id or not url or not url.startswith("https://"):
        return None
    query = urlencode({"etn": spec.logical_name, "pagetype": "entityrecord", "id": crm_id})
    return f"{url.rstrip('/')}/main.aspx?{query}"


def _spec(request: Request, obj: str) -> ObjectSpec:
    try:
        return resolve_object(request.app.state.specs, obj)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(PATH, response_class=HTMLResponse)
def search_page(request: Request, find: str = "") -> Response:
    q = find
    found: list[dict[str, Any]] = []
    problem = None
    if q.strip():
        try:
            with read_transaction(request.app.state.engine) as conn:
                found = record_view.search(conn, request.app.state.specs, q, 50)
        except ValidationFailed as exc:
            problem = str(exc.message)
    context = {"find": q, "found": found, "problem": problem, "path": PATH, "tab": "records"}
    return render(request, "record_search.html", context)


@router.get(PATH + "/{obj}/{record_id}", response_class=HTMLResponse)
async def record_page(
    request: Request, obj: str, record_id: int, cursor: str | None = None, back: str = ""
) -> Response:
    spec = _spec(request, obj)
    engine = request.app.state.engine

    def local() -> tuple[record_view.RecordView, dict[str, Any]]:
        with read_transaction(engine) as conn:
            view = record_view.load(conn, spec, record_id)
            page = history.timeline(
                conn, spec.name, record_id, view.crm_id, limit=TIMELINE_PAGE, cursor=cursor
            )
            return view, page

    try:
        view, timeline = await run_in_threadpool(local)
    except (NotFound, ValidationFailed) as exc:
        raise HTTPException(404, str(exc)) from None
    remote, unreadable = None, None
    if view.crm_id:
        try:
            remote = await read_dynamics(request, spec, view.crm_id)
        except HTTPException as exc:
            unreadable = str(exc.detail)

    def lookups() -> dict[tuple[str, str], int]:
        with read_transaction(engine) as conn:
            return record_view.parents(conn, request.app.state.specs, spec, remote)

    parents = await run_in_threadpool(lookups) if remote and spec.lookups else {}
    fields = compare_fields(spec, view.row, remote, view.synced_values, parents)
    here = record_path(spec.name, record_id, back or None)
    context = {
        "tab": "records",
        "spec": spec,
        "record_id": record_id,
        "label": view.row.get(spec.label_column),
        "view": view,
        "last_synced": params.iso(view.last_synced_at),
        "fields": fields,
        "in_sync": remote is not None and in_sync(fields),
        "remote_missing": bool(view.crm_id) and remote is None and unreadable is None,
        "unreadable": unreadable,
        "timeline": timeline["items"],
        "next_url": f"{here}{'&' if back else '?'}cursor={timeline['next_cursor']}"
        if timeline["next_cursor"]
        else None,
        "first_url": here if cursor else None,
        "back": safe_back(back),
        "here": here,
        "dynamics_link": dynamics_link(request, spec, view.crm_id),
        "pushes": spec.flow.pushes,
        "pulls": spec.flow.pulls,
        "action": f"{PATH}/{spec.name}/{record_id}",
    }
    return render(request, "record.html", context)


async def _form(request: Request) -> tuple[dict[str, str], str]:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    return values, values.get("here", "")


def _back_to(obj: str, record_id: int, here: str) -> Response:
    target = here if here.startswith(f"{PATH}/{obj}/{record_id}") else record_path(obj, record_id)
    return redirect(target)


@router.post(PATH + "/{obj}/{record_id}/{action}")
async def record_action(request: Request, obj: str, record_id: int, action: str) -> Response:
    """retry / dismiss (an error of this record, ``error_id``) and resync (``direction``)."""
    spec = _spec(request, obj)
    if action not in ("retry", "dismiss", "resync"):
        raise HTTPException(404, f"no action {action}")
    values, here = await _form(request)
    actor = actor_of(request)
    try:
        if action == "resync":
            direction = values.get("direction", "")
            if direction not in tuple(Direction):
                raise ValidationFailed("direction", "to_crm or from_crm")
            body = ResyncRequest(direction=Direction(direction))
            await resync_record(request, spec, request.app.state.engine, record_id, body)
            side = "Dynamics" if direction == Direction.FROM_CRM else "the local record"
            notify(request, f"Queued to sync again from {side}.")
            return _back_to(spec.name, record_id, here)
        text = values.get("error_id", "")
        if not text.isdecimal() or not 1 <= int(text) <= params.MAX_ID:
            raise ValidationFailed("error_id", f"{text[:40]!r} is not an error id")

        def run() -> dict[str, Any]:
            with write_transaction(request.app.state.engine) as conn:
                if action == "retry":
                    return sync_errors.retry_ids(conn, [int(text)], actor=actor)
                return sync_errors.dismiss(conn, int(text), actor=actor)

        result = await run_in_threadpool(run)
    except (ValidationFailed, NotFound) as exc:
        notify(request, f"Nothing done: {exc}", "error")
        return _back_to(spec.name, record_id, here)
    except HTTPException as exc:  # Dynamics unreadable for a resync from it
        notify(request, f"Nothing done: {exc.detail}", "error")
        return _back_to(spec.name, record_id, here)
    if action == "retry":
        queued = result["requeued"]
        notify(request, "Retried: queued to sync again." if queued else "Nothing was waiting.")
    else:
        notify(request, "Dismissed.")
    return _back_to(spec.name, record_id, here)
