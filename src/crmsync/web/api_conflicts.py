"""``GET /api/v1/sync/conflicts``: the conflict journal, thin over ``store.conflicts``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import conflicts, params
from crmsync.web.api_status import Objects, Store
from crmsync.web.auth import require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1/sync",
    tags=["sync conflicts"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 422, 503),
)


class ConflictItem(BaseModel):
    id: int
    object: str
    record_id: int | None
    crm_id: str | None
    field: str
    local_value: str | None
    crm_value: str | None
    winner: str = Field(description="local or crm")
    rule: str = Field(description="local_wins, crm_wins or newest_wins")
    detected_at: str


class ConflictPage(BaseModel):
    items: list[ConflictItem]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


@router.get("/conflicts", response_model=ConflictPage)
def list_conflicts(
    engine: Store,
    objects: Objects,
    object: Annotated[
        str | None, Query(description="Object", json_schema_extra={"enum": list(STANDARD_OBJECTS)})
    ] = None,
    record_id: Annotated[
        int | None, Query(ge=1, le=params.MAX_ID, description="Local record id")
    ] = None,
    field: Annotated[str | None, Query(description="Local column name, exactly")] = None,
    since: Annotated[str | None, Query(description="Detected at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="Detected before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=params.MAX_LIMIT)] = params.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Fields both sides changed, the value each had and which won, newest first."""
    filters = conflicts.make_filters(
        objects, object=object, record_id=record_id, field=field, since=since, until=until
    )
    with engine.connect() as conn:
        return conflicts.list_conflicts(conn, filters, limit=limit, cursor=cursor)
