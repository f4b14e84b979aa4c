"""The Sync Status tab: backlog or last hour per object, row details, the 24-hour
throughput chart, and pause/resume.

JSON twins: ``GET /api/v1/sync/status``, ``/status/{object}``, ``/throughput`` and
``POST /api/v1/sync/pause|resume``, built on the same ``store.status`` functions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine

from crmsync.domain import JobKind
from crmsync.engine.resync import check_request
from crmsync.errors import Busy, ValidationFailed
from crmsync.store import audit, jobs, params, status
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.records import NotFound, resolve_object
from crmsync.store.types import utcnow
from crmsync.web.console import views
from crmsync.web.console.login import require_login
from crmsync.web.console.render import notify, redirect, render, settings_of

PATH = "/admin/microsoft-dynamics/sync-status"
VIEWS = {"backlog": "Backlog", "last_hour": "Last hour"}
CHART_HOURS = 24
HOUR = timedelta(hours=1)
REFRESH_SECONDS = 10
JOBS_SHOWN = 8

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_login)])


def store_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def objects_of(request: Request) -> list[str]:
    return list(request.app.state.specs)


def status_data(request: Request, view: str) -> dict[str, Any]:
    """What the API's ``/sync/status`` and ``/sync/throughput`` say, plus the chart."""
    zone = settings_of(request).zone
    objects = objects_of(request)
    with read_transaction(store_of(request)) as conn:
        if view == "last_hour":
            body = status.last_hour(conn, objects, zone)
        else:
            body = status.backlog(conn, objects)
        # The complete hours and the current one so far: throughput "as of" the end of
        # this clock hour (its buckets after now are empty), drawn as partial.
        now = utcnow()
        _, this_hour = status.hour_window(now, zone)
        history = status.throughput(conn, objects, zone, hours=CHART_HOURS + 1, at=this_hour + HOUR)
        recent_jobs = [jobs.as_json(j) for j in jobs.recent(conn, limit=JOBS_SHOWN)]
        last_audit = audit.last_results(conn, objects)
    rows = []
    for row in body["objects"]:
        age = views.age_seconds(row.get("oldest_queued_at"), body.get("as_of"))
        rows.append({**row, "age": age, "paused": views.is_paused(body["paused"], row["object"])})
    return {
        "body": body,
        "rows": rows,
        "view": view,
        "views": VIEWS,
        "window": views.window_label(body["window"], zone) if "window" in body else None,
        "chart": views.throughput_chart(history, zone, now=now),
        "history": history,
        "directions": status.DIRECTIONS,
        "objects": objects,
        "path": PATH,
        "refresh_seconds": REFRESH_SECONDS,
        "jobs": recent_jobs,
        "audit": last_audit,
    }


@router.get(PATH, response_class=HTMLResponse)
def sync_status_page(
    request: Request, view: str = "backlog", partial: str | None = None
) -> Response:
    if view not in VIEWS:
        view = "backlog"
    context = status_data(request, view)
    return render(request, "_status_live.html" if partial else "sync_status.html", context)


@router.get(PATH + "/{object}", response_class=HTMLResponse)
def sync_status_details_page(
    request: Request, object: str, partial: str | None = None, view: str = "backlog"
) -> Response:
    """A row's details: its waiting changes, or in the Last hour view what it synced in
    that hour by operation and direction (JSON twin: ``/api/v1/sync/status/{object}``)."""
    try:
        spec = resolve_object(request.app.state.specs, object)
    except NotFound as exc:
        return render(request, "not_found.html", {"message": str(exc)}, status_code=404)
    zone = settings_of(request).zone
    with read_transaction(store_of(request)) as conn:
        if view == "last_hour":
            body = status.last_hour_details(conn, spec.name, zone)
        else:
            body = status.details(conn, spec.name)
    operations = [(op, body[status.PLURAL[op]]) for op in status.OPERATIONS]
    context = {
        "body": body,
        "operations": operations,
        "path": PATH,
        "view": "last_hour" if view == "last_hour" else "backlog",
        "window": views.window_label(body["window"], zone) if "window" in body else None,
    }
    return render(request, "_status_details.html" if partial else "status_details.html", context)


Scope = Annotated[str, Form(max_length=32)]


def _scope(request: Request, obj: str, direction: str) -> tuple[str, str]:
    params.check_choice("object", obj, [*objects_of(request), "*"])
    params.check_choice("direction", direction, [*status.DIRECTIONS, "*"])
    return obj, direction


def _back(view: str) -> Response:
    return redirect(PATH, {"view": view if view in VIEWS else ""})


@router.post(PATH + "/pause")
def pause_form(
    request: Request, object: Scope = "*", direction: Scope = "*", view: Scope = ""
) -> Response:
    try:
        obj, d = _scope(request, object, direction)
    except ValidationFailed as exc:
        notify(request, f"Nothing paused: {exc.field} {exc.message}", "error")
        return _back(view)
    with write_transaction(store_of(request)) as conn:
        status.pause(conn, obj, d)
    notify(request, f"Paused: {views.paused_label({'object': obj, 'direction': d})}.")
    return _back(view)


@router.post(PATH + "/resume")
def resume_form(
    request: Request, object: Scope = "*", direction: Scope = "*", view: Scope = ""
) -> Response:
    try:
        obj, d = _scope(request, object, direction)
    except ValidationFailed as exc:
        notify(request, f"Nothing resumed: {exc.field} {exc.message}", "error")
        return _back(view)
    with write_transaction(store_of(request)) as conn:
        lifted = status.resume(conn, obj, d)
    scope = views.paused_label({"object": obj, "direction": d})
    notify(request, f"Resumed: {scope}." if lifted else f"Nothing was paused for {scope}.")
    return _back(view)


Text = Annotated[str, Form(max_length=64)]


@router.post(PATH + "/resync")
def resync_form(
    request: Request,
    object: Scope = "",
    direction: Scope = "to_crm",
    since: Text = "",
    until: Text = "",
) -> Response:
    """Queue a resync job (the console's twin of ``POST /api/v1/sync/resync``)."""
    try:
        req = check_request(
            request.app.state.specs,
            object,
            direction,
            params.parse_timestamp("since", since or None),
            params.parse_timestamp("until", until or None),
            [],
        )
    except ValidationFailed as exc:
        notify(request, f"Nothing queued: {exc.field} {exc.message}", "error")
        return _back("")
    with write_transaction(store_of(request)) as conn:
        job = jobs.create(conn, JobKind.RESYNC, req.object, req.direction, req.params())
    notify(request, f"Resync of {req.object} ({req.direction}) queued as job {job.id}.")
    return _back("")


@router.post(PATH + "/audit")
def audit_form(request: Request, repair: Text = "") -> Response:
    try:
        with write_transaction(store_of(request)) as conn:
            job = jobs.ask_for_audit(conn, None, bool(repair))
    except Busy as exc:
        notify(request, f"No audit queued: {exc}.", "error")
        return _back("")
    notify(request, f"Audit queued as job {job.id}.")
    return _back("")


@router.post(PATH + "/jobs/{job_id}/cancel")
def cancel_form(request: Request, job_id: int) -> Response:
    try:
        with write_transaction(store_of(request)) as conn:
            job = jobs.cancel(conn, job_id)
    except NotFound as exc:
        notify(request, str(exc), "error")
        return _back("")
    notify(request, f"Job {job.id}: {job.state}.")
    return _back("")
