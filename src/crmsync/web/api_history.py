"""A record's story: ``/history``, ``/compare`` (live from Dynamics), ``/resync``, and
``/api/v1/search/records``; thin over ``store.history`` and ``store.record_view``.

Dynamics is read with the app's one ``DataverseClient`` (built on first use, closed with
the app). Dynamics unreachable, refusing or not configured is a 502 or 503 naming the
cause, never a traceback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from crmsync.domain import Direction, ObjectSpec, Operation
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.metadata import read_choice_options
from crmsync.engine import changes as ch
from crmsync.engine.pull import entry_row
from crmsync.errors import ConfigError, CrmsyncError, ValidationFailed
from crmsync.mapping import options
from crmsync.mapping.compare import compare_fields, in_sync
from crmsync.store import history, params, record_view
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.types import utcnow
from crmsync.web.api_records import RecordId, Spec, Store
from crmsync.web.auth import actor_of, require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1",
    tags=["records"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 404, 422),
)
# How long a live read of Dynamics may take before the API gives up on it.
READ_SECONDS = 15.0
# How long the options of a choice read from Dynamics serve comparisons.
OPTIONS_SECONDS = 300.0


class Event(BaseModel):
    at: str
    event: str = Field(description="captured, sent, synced, failed, retry_scheduled, ...")
    direction: str | None
    operation: str | None
    fields: list[str] | None = Field(description="The local columns concerned, or null")
    error_code: str | None
    error_message: str | None
    detail: dict[str, Any] | None


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str | None


class FieldSides(BaseModel):
    field: str
    local: Any
    dynamics: Any
    last_synced: Any
    same: bool


class Comparison(BaseModel):
    object: str
    record_id: int
    crm_id: str | None
    fields: list[FieldSides]
    in_sync: bool


class ResyncRequest(BaseModel):
    direction: Direction = Field(description="to_crm: send the local row; from_crm: take Dynamics'")


class ResyncResult(BaseModel):
    object: str
    record_id: int
    crm_id: str | None
    direction: str
    queued_at: str | None


class Found(BaseModel):
    object: str
    id: int
    crm_id: str | None
    label: str | None


class SearchResult(BaseModel):
    items: list[Found]


@router.get("/records/{object}/{id}/history", response_model=EventPage)
def record_history(
    spec: Spec,
    engine: Store,
    id: RecordId,
    limit: Annotated[int, Query(ge=1, le=params.MAX_LIMIT)] = params.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """The record's sync events, newest first, paged by cursor."""
    with read_transaction(engine) as conn:
        view = record_view.load(conn, spec, id)
        return history.timeline(conn, spec.name, id, view.crm_id, limit=limit, cursor=cursor)


def dynamics_client(app: FastAPI) -> DataverseClient:
    """The app's client for Dynamics, made on first use (503 when not configured)."""
    client: DataverseClient | None = getattr(app.state, "dynamics", None)
    if client is None:
        try:
            client = DataverseClient.from_settings(app.state.settings)
        except ConfigError as exc:
            raise HTTPException(503, f"Dynamics is not configured: {exc}") from None
        app.state.dynamics = client
    return client


async def read_dynamics(request: Request, spec: ObjectSpec, crm_id: str) -> dict[str, Any] | None:
    """The record's row in Dynamics (None: not there), or a 502 saying why not."""
    client = dynamics_client(request.app)
    select = ch.select_for(spec, request.app.state.settings.sync_filter_field)
    try:
        return await asyncio.wait_for(
            client.get(spec.entity_set, crm_id, select=select), READ_SECONDS
        )
    except TimeoutError:
        raise HTTPException(502, f"Dynamics did not answer within {READ_SECONDS:g} s") from None
    except CrmsyncError as exc:
        raise HTTPException(502, f"Dynamics could not be read: {str(exc)[:300]}") from None


async def with_choice_options(request: Request, spec: ObjectSpec) -> ObjectSpec:
    """``spec`` with the options of its choices whose labels Dynamics gives, as a worker
    reads them (``engine/choices.py``), kept for ``OPTIONS_SECONDS``; a 502 if Dynamics
    cannot say. Unchanged when it has none, or Dynamics lacks the column."""
    if not options.wanted({spec.name: spec}):
        return spec
    cache: dict[str, tuple[float, ObjectSpec]] = request.app.state.__dict__.setdefault(
        "choice_options", {}
    )
    kept = cache.get(spec.name)
    if kept is not None and time.monotonic() - kept[0] < OPTIONS_SECONDS:
        return kept[1]
    client = dynamics_client(request.app)
    try:
        read = await asyncio.wait_for(read_choice_options(client, spec.logical_name), READ_SECONDS)
    except TimeoutError:
        raise HTTPException(502, f"Dynamics did not answer within {READ_SECONDS:g} s") from None
    except CrmsyncError as exc:
        raise HTTPException(
            502, f"Dynamics' options of {spec.logical_name} could not be read: {str(exc)[:300]}"
        ) from None
    resolved = options.with_options({spec.name: spec}, {spec.name: read})[0][spec.name]
    cache[spec.name] = (time.monotonic(), resolved)
    return resolved


@router.get(
    "/records/{object}/{id}/compare", response_model=Comparison, responses=error_responses(502, 503)
)
async def compare_record(request: Request, spec: Spec, engine: Store, id: RecordId) -> Any:
    """Every mapped field: the local value, Dynamics' (read live), the last synced value."""

    def local() -> record_view.RecordView:
        with read_transaction(engine) as conn:
            return record_view.load(conn, spec, id)

    view = await run_in_threadpool(local)
    remote = await read_dynamics(request, spec, view.crm_id) if view.crm_id else None
    if remote is not None:
        spec = await with_choice_options(request, spec)

    def lookups() -> dict[tuple[str, str], int]:
        with read_transaction(engine) as conn:
            return record_view.parents(conn, request.app.state.specs, spec, remote)

    parents = await run_in_threadpool(lookups) if remote and spec.lookups else {}
    fields = compare_fields(spec, view.row, remote, view.synced_values, parents)
    return {
        "object": spec.name,
        "record_id": id,
        "crm_id": view.crm_id,
        "fields": [f.as_json() for f in fields],
        "in_sync": remote is not None and in_sync(fields),
    }


@router.post(
    "/records/{object}/{id}/resync",
    response_model=ResyncResult,
    responses=error_responses(502, 503),
)
async def resync_record(
    request: Request,
    spec: Spec,
    engine: Store,
    id: RecordId,
    body: Annotated[ResyncRequest, Body()],
) -> Any:
    """Queue the record again: ``to_crm`` sends the local row to Dynamics; ``from_crm``
    reads Dynamics' row and applies it like a pulled change (the conflict rules settle
    fields changed on both sides). The record's history gets a ``resynced`` event."""
    actor = actor_of(request)
    staged: list[dict[str, Any]] = []
    if body.direction == Direction.FROM_CRM:

        def local() -> record_view.RecordView:
            with read_transaction(engine) as conn:
                return record_view.load(conn, spec, id)

        view = await run_in_threadpool(local)
        if not view.crm_id:
            raise ValidationFailed("direction", f"{spec.name} {id} was never synced to Dynamics")
        remote = await read_dynamics(request, spec, view.crm_id)
        if remote is not None:
            change = ch.read_row(spec, remote, request.app.state.settings.sync_filter_field)
            known = ch.Known(record_id=id, synced_values=view.synced_values)
            staged = [entry_row(spec, change, Operation.UPDATE, known, utcnow())]

    def write() -> dict[str, Any]:
        with write_transaction(engine) as conn:
            return record_view.resync(conn, spec, id, body.direction, actor, staged)

    return await run_in_threadpool(write)


@router.get("/search/records", response_model=SearchResult)
def search_records(
    request: Request,
    engine: Store,
    q: Annotated[str, Query(description="An email, a name, a local id or a Dynamics id")],
    limit: Annotated[int, Query(ge=1, le=record_view.SEARCH_MAX)] = 20,
) -> dict[str, Any]:
    """Records of every object matching ``q`` (ids exactly; email and name from the start)."""
    with read_transaction(engine) as conn:
        return {"items": record_view.search(conn, request.app.state.specs, q, limit)}
