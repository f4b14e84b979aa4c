"""``/api/v1/records``: the local records as JSON, thin over ``store.records``.

Endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, so the
synchronous store calls never block the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from crmsync.domain import STANDARD_OBJECTS, ObjectSpec
from crmsync.errors import ValidationFailed
from crmsync.store import params, records
from crmsync.store.db import read_transaction, write_transaction
from crmsync.web.auth import require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1/records",
    tags=["records"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 404, 422),
)

PAGE_PARAMS = ("limit", "cursor")


class Record(BaseModel):
    """A local record: its ids, its fields (which depend on the object), timestamps."""

    model_config = ConfigDict(extra="allow")

    id: int
    crm_id: str | None
    created_at: str | None = Field(description="null for an object attached to an existing table")
    updated_at: str | None = Field(description="null for an object attached to an existing table")


class SyncInfo(BaseModel):
    state: str = Field(description="pending, synced or error")
    last_synced_at: str | None


class RecordWithSync(Record):
    sync: SyncInfo


class RecordPage(BaseModel):
    items: list[Record]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


def store(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def object_spec(
    request: Request,
    object: Annotated[
        str,
        Path(
            description="A mapped object: lead, contact, account, opportunity or a custom one",
            json_schema_extra={"enum": list(STANDARD_OBJECTS)},
        ),
    ],
) -> ObjectSpec:
    return records.resolve_object(request.app.state.specs, object)


Store = Annotated[Engine, Depends(store)]
Spec = Annotated[ObjectSpec, Depends(object_spec)]
RecordId = Annotated[int, Path(description="The record's local id")]
Fields = Annotated[
    dict[str, Any],
    Body(
        description="Field values by column name (e.g. email, first_name for a lead); "
        "id, crm_id and the timestamps are read-only",
        examples=[{"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}],
    ),
]


@router.post(
    "/{object}", status_code=201, response_model=Record, responses=error_responses(400, 503)
)
def create_record(spec: Spec, engine: Store, payload: Fields) -> dict[str, Any]:
    """Create a record; its change is queued for Dynamics in the same transaction."""
    with write_transaction(engine) as conn:
        return records.create_record(conn, spec, payload)


@router.get("/{object}/{id}", response_model=RecordWithSync, responses=error_responses(503))
def get_record(spec: Spec, engine: Store, id: RecordId) -> dict[str, Any]:
    """One record and where it stands with Dynamics."""
    with read_transaction(engine) as conn:
        record = records.get_record(conn, spec, id)
        record["sync"] = records.sync_state(conn, spec, id).as_json()
    return record


@router.get(
    "/{object}",
    response_model=RecordPage,
    responses=error_responses(503),
)
def list_records(
    request: Request,
    spec: Spec,
    engine: Store,
    limit: Annotated[int, Query(ge=1, le=params.MAX_LIMIT)] = params.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Records in id order, paged by cursor.

    Any other query parameter is a filter: ``?email=ada@example.com`` keeps the records
    whose ``email`` equals that value (``id``, ``crm_id`` and every field of the object
    may be filtered on).
    """
    filters: dict[str, str] = {}
    for field, value in request.query_params.multi_items():
        if field in PAGE_PARAMS:
            continue
        if field in filters:
            raise ValidationFailed(field, "given more than once")
        filters[field] = value
    with engine.connect() as conn:
        page = records.list_records(conn, spec, filters, limit=limit, cursor=cursor)
    return {"items": page.items, "next_cursor": page.next_cursor}


@router.patch("/{object}/{id}", response_model=Record, responses=error_responses(400, 503))
def update_record(spec: Spec, engine: Store, id: RecordId, payload: Fields) -> dict[str, Any]:
    """Change the given fields; the others keep their values."""
    with write_transaction(engine) as conn:
        return records.update_record(conn, spec, id, payload)


@router.delete(
    "/{object}/{id}", status_code=204, response_class=Response, responses=error_responses(503)
)
def delete_record(spec: Spec, engine: Store, id: RecordId) -> Response:
    """Delete a record; a synced one is then deleted in Dynamics too."""
    with write_transaction(engine) as conn:
        records.delete_record(conn, spec, id)
    return Response(status_code=204)
