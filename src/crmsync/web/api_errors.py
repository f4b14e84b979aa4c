"""``/api/v1/sync/errors``: list, summary, export, retry and dismiss; thin over
``store.sync_errors``. The console's Sync Errors tab renders the same data."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import params, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.params import check_choice
from crmsync.store.status import DIRECTIONS, OPERATIONS
from crmsync.store.sync_errors import ErrorFilters
from crmsync.web.auth import actor_of, require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1/sync/errors",
    tags=["sync errors"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 422, 503),
)

EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


def store(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _enum(description: str, values: tuple[str, ...] | list[str]) -> Any:
    return Query(description=description, json_schema_extra={"enum": list(values)})


def error_filters(
    request: Request,
    q: Annotated[
        str | None,
        Query(description="Case-insensitive text in the message, code, label or ids"),
    ] = None,
    object: Annotated[str | None, _enum("Object", STANDARD_OBJECTS)] = None,
    direction: Annotated[str | None, _enum("Direction", DIRECTIONS)] = None,
    operation: Annotated[str | None, _enum("Operation", OPERATIONS)] = None,
    code: Annotated[str | None, Query(description="Error code, exactly")] = None,
    status: Annotated[str | None, _enum("Default open", sync_errors.STATUSES)] = None,
    since: Annotated[str | None, Query(description="Last failed at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="Last failed before (ISO 8601)")] = None,
    category: Annotated[str | None, _enum("Kind of failure", sync_errors.CATEGORIES)] = None,
    field: Annotated[str | None, Query(description="Local column concerned, exactly")] = None,
) -> ErrorFilters:
    return sync_errors.make_filters(
        request.app.state.specs,
        q=q,
        object=object,
        direction=direction,
        operation=operation,
        code=code,
        status=status,
        since=since,
        until=until,
        category=category,
        field=field,
    )


Store = Annotated[Engine, Depends(store)]
Filters = Annotated[ErrorFilters, Depends(error_filters)]
ErrorId = Annotated[int, Path(ge=1, le=params.MAX_ID, description="The error's id")]


class ErrorItem(BaseModel):
    id: int
    object: str
    record_id: int | None
    crm_id: str | None
    record_label: str | None
    operation: str
    direction: str
    error_code: str
    error_message: str
    first_failed_at: str
    last_failed_at: str
    attempts: int
    status: str
    field: str | None = Field(description="The local column the failure concerns, or null")
    category: str = Field(
        description="Kind of failure", json_schema_extra={"enum": list(sync_errors.CATEGORIES)}
    )
    fix: str = Field(description="What to do, in one sentence")
    retry_at: str | None = Field(
        description="When the error is retried automatically (a passing kind), or null"
    )


class ErrorPage(BaseModel):
    items: list[ErrorItem]
    total: int
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


class RetryResult(BaseModel):
    errors: int = Field(description="Errors selected")
    requeued: int = Field(description="Parked entries put back in the backlog")


class RetryRequest(BaseModel):
    """Either ``ids``, or filters as for the list (none: every open error)."""

    model_config = ConfigDict(extra="forbid")

    ids: Annotated[list[int] | None, Field(max_length=params.MAX_LIMIT)] = None
    q: str | None = None
    object: str | None = None
    direction: str | None = None
    operation: str | None = None
    code: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None
    category: str | None = None
    field: str | None = None


@router.get("", response_model=ErrorPage)
def list_errors(
    engine: Store,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=params.MAX_LIMIT)] = params.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Sync errors, newest first, paged by cursor, with the total matching."""
    with engine.connect() as conn:
        return sync_errors.list_errors(conn, filters, limit=limit, cursor=cursor)


@router.get("/summary")
def errors_summary(engine: Store, filters: Filters) -> dict[str, Any]:
    """Counts of the matching errors by object, direction, error code, category and field."""
    with engine.connect() as conn:
        return sync_errors.summary(conn, filters)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in EXPORT_TYPES.values()}}},
)
def export_errors(
    engine: Store,
    filters: Filters,
    format: Annotated[str, _enum("csv or json", tuple(EXPORT_TYPES))] = "csv",
) -> StreamingResponse:
    """Every matching error as a streamed CSV or JSON file."""
    check_choice("format", format, EXPORT_TYPES)
    return StreamingResponse(
        sync_errors.export(engine, filters, format),
        media_type=EXPORT_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="sync-errors.{format}"'},
    )


@router.post("/retry", response_model=RetryResult, responses=error_responses(404))
def retry_errors(
    request: Request, engine: Store, body: Annotated[RetryRequest | None, Body()] = None
) -> dict[str, Any]:
    """Queue the records of the given errors again (``ids``, or all matching the filters)."""
    body = body or RetryRequest()
    given = body.model_dump(exclude={"ids"})
    with write_transaction(engine) as conn:
        return sync_errors.retry(
            conn, request.app.state.specs, ids=body.ids, given=given, actor=actor_of(request)
        )


@router.post("/{id}/retry", response_model=RetryResult, responses=error_responses(404))
def retry_error(request: Request, engine: Store, id: ErrorId) -> dict[str, Any]:
    """Queue this error's record again; the error resolves when it syncs."""
    with write_transaction(engine) as conn:
        return sync_errors.retry_ids(conn, [id], actor=actor_of(request))


@router.post("/{id}/dismiss", response_model=ErrorItem, responses=error_responses(404))
def dismiss_error(request: Request, engine: Store, id: ErrorId) -> dict[str, Any]:
    """Hide this error from the open list (it stays under status=dismissed and all)."""
    with write_transaction(engine) as conn:
        return sync_errors.dismiss(conn, id, actor=actor_of(request))
