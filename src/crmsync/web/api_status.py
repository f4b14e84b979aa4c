"""``/api/v1/sync/status``, ``/throughput``, ``/pause`` and ``/resume``: thin over
``store.status``. The console's Sync Status tab renders the same data."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import status
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.params import check_choice, parse_timestamp
from crmsync.store.records import resolve_object
from crmsync.web.auth import require_api_auth
from crmsync.web.errors import error_responses

router = APIRouter(
    prefix="/api/v1/sync",
    tags=["sync status"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 422, 503),
)

VIEWS = ("backlog", "last_hour")


def store(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def object_names(request: Request) -> list[str]:
    return list(request.app.state.specs)


Store = Annotated[Engine, Depends(store)]
Config = Annotated[Settings, Depends(settings_of)]
Objects = Annotated[list[str], Depends(object_names)]
At = Annotated[
    str | None,
    Query(
        description="ISO 8601 timestamp with offset; default now", examples=["2026-11-25T13:00:00Z"]
    ),
]
DirectionParam = Annotated[
    str | None,
    Query(description="to_crm or from_crm", json_schema_extra={"enum": list(status.DIRECTIONS)}),
]


@router.get("/status")
def sync_status(
    engine: Store,
    config: Config,
    objects: Objects,
    view: Annotated[
        str, Query(description="backlog or last_hour", json_schema_extra={"enum": list(VIEWS)})
    ] = "backlog",
    direction: DirectionParam = None,
    at: At = None,
) -> dict[str, Any]:
    """The Sync Status table: the backlog per object, or what synced in the last hour."""
    check_choice("view", view, VIEWS)
    check_choice("direction", direction, status.DIRECTIONS)
    when = parse_timestamp("at", at)
    with read_transaction(engine) as conn:
        if view == "last_hour":
            return status.last_hour(conn, objects, config.zone, at=when)
        return status.backlog(conn, objects, direction=direction, at=when)


@router.get("/status/{object}", responses=error_responses(404))
def sync_status_details(
    request: Request,
    engine: Store,
    object: Annotated[
        str,
        Path(
            description="A mapped object: lead, contact, account, opportunity or a custom one",
            json_schema_extra={"enum": list(STANDARD_OBJECTS)},
        ),
    ],
    config: Config,
    view: Annotated[
        str,
        Query(
            description="backlog (waiting changes) or last_hour (synced in the last hour)",
            json_schema_extra={"enum": list(VIEWS)},
        ),
    ] = "backlog",
    at: At = None,
) -> dict[str, Any]:
    """One object's backlog per operation, with the oldest waiting record of each; or,
    with ``view=last_hour``, its records synced in the last complete clock hour per
    direction and operation."""
    spec = resolve_object(request.app.state.specs, object)
    check_choice("view", view, VIEWS)
    when = parse_timestamp("at", at)
    with read_transaction(engine) as conn:
        if view == "last_hour":
            return status.last_hour_details(conn, spec.name, config.zone, at=when)
        return status.details(conn, spec.name, at=when)


@router.get("/throughput")
def sync_throughput(
    engine: Store,
    config: Config,
    objects: Objects,
    hours: Annotated[int, Query(ge=1, le=status.MAX_HOURS, description="Clock hours")] = 24,
    object: Annotated[
        str | None,
        Query(description="Only this object", json_schema_extra={"enum": list(STANDARD_OBJECTS)}),
    ] = None,
    at: At = None,
) -> dict[str, Any]:
    """Records synced per clock hour, per object and operation, oldest hour first."""
    check_choice("object", object, objects)
    when = parse_timestamp("at", at)
    with engine.connect() as conn:
        return status.throughput(
            conn, [object] if object else objects, config.zone, hours=hours, at=when
        )


class Scope(BaseModel):
    """What to pause or resume; a missing value or ``*`` means every one."""

    model_config = ConfigDict(extra="forbid")

    object: Annotated[str, Field(description="A mapped object, or * for all")] = "*"
    direction: Annotated[str, Field(description="to_crm, from_crm or *")] = "*"


def _scope(scope: Scope | None, objects: list[str]) -> Scope:
    scope = scope or Scope()
    check_choice("object", scope.object, [*objects, "*"])
    check_choice("direction", scope.direction, [*status.DIRECTIONS, "*"])
    return scope


OptionalScope = Annotated[Scope | None, Body()]


@router.post("/pause")
def pause(engine: Store, objects: Objects, scope: OptionalScope = None) -> dict[str, Any]:
    """Stop the workers claiming entries of an object and/or direction."""
    s = _scope(scope, objects)
    with write_transaction(engine) as conn:
        status.pause(conn, s.object, s.direction)
        return {"paused": status.paused(conn)}


@router.post("/resume")
def resume(engine: Store, objects: Objects, scope: OptionalScope = None) -> dict[str, Any]:
    """Lift the pauses the given object and/or direction cover (all by default)."""
    s = _scope(scope, objects)
    with write_transaction(engine) as conn:
        status.resume(conn, s.object, s.direction)
        return {"paused": status.paused(conn)}
