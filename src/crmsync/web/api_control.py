"""``POST /api/v1/sync/errors/dismiss``: dismiss a selection of errors or every one a
filter matches; the JSON twin of the console's bulk dismiss (one error:
``/errors/{id}/dismiss`` in ``api_errors``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from crmsync.store import sync_errors
from crmsync.store.db import write_transaction
from crmsync.web.api_errors import RetryRequest
from crmsync.web.auth import actor_of, require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1/sync/errors",
    tags=["sync errors"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 403, 422, 503),
)


class DismissResult(BaseModel):
    errors: int = Field(description="Errors selected")
    dismissed: int = Field(description="Errors now dismissed")


@router.post("/dismiss", response_model=DismissResult, responses=error_responses(404))
def dismiss_errors(
    request: Request, body: Annotated[RetryRequest | None, Body()] = None
) -> dict[str, Any]:
    """Dismiss the given errors (``ids``), or every open error matching the filters
    (none given: every open error)."""
    engine: Engine = request.app.state.engine
    body = body or RetryRequest()
    given = body.model_dump(exclude={"ids"})
    with write_transaction(engine) as conn:
        return sync_errors.dismiss_selected(
            conn, request.app.state.specs, ids=body.ids, given=given, actor=actor_of(request)
        )
