"""``/api/v1/sync/resync``, ``/audit`` and ``/jobs``: resyncs and audits as jobs.

``POST /resync`` takes the CLI's options as JSON: a dry run of up to ``AT_ONCE``
records answers at once with what would change (it reads both sides); a larger one, so
that no request runs for minutes nor past a proxy's time limit, and any resync, is a job
queued (202) for a worker to run (a dry-run job's result is the dry run's report).
``GET /audit`` is the last audit's findings per object (``store/audit.py``); ``POST
/audit`` asks for one. State changes need the bearer token or the session's CSRF token
(``web/csrf.py``), like every state-changing endpoint.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from crmsync.domain import JobKind
from crmsync.engine.jobs import dry_run_here
from crmsync.engine.resync import AT_ONCE, check_request
from crmsync.errors import Busy, CrmsyncError, Retriable
from crmsync.store import audit, jobs
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.params import check_choice, parse_timestamp
from crmsync.web.api_status import Config, Store
from crmsync.web.auth import require_api_auth
from crmsync.web.errors import error_response, error_responses

router = APIRouter(
    prefix="/api/v1/sync",
    tags=["resync and audit"],
    dependencies=[Depends(require_api_auth)],
    responses=error_responses(401, 403, 422, 503),
)


class ResyncBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: str = Field(description="The object to resync", examples=["lead"])
    direction: str = Field("to_crm", description="to_crm or from_crm")
    since: str | None = Field(None, description="Changed at or after (ISO 8601, with offset)")
    until: str | None = Field(None, description="Changed before (ISO 8601, with offset)")
    ids: list[int | str] = Field(
        default_factory=list,
        max_length=10_000,
        description="Local ids (from_crm: also Dynamics ids); none: the window, or all",
    )
    dry_run: bool = Field(False, description="Change nothing: report what would change")


class AuditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: str | None = Field(None, description="Only this object; none: every mapped one")
    repair: bool = Field(False, description="Queue the fixes under the conflict rules")


@router.post("/resync", responses={202: {"description": "The resync job, queued"}})
async def resync(request: Request, store: Store, settings: Config, body: ResyncBody) -> Any:
    """Queue an object's records again in one direction, or (``dry_run``) report
    ``{"matched", "would_change", "samples", "complete"}`` without changing anything.
    A dry run matching more than 1,000 records is a job (202) whose result is that
    report."""
    req = check_request(
        request.app.state.specs,
        body.object,
        body.direction,
        parse_timestamp("since", body.since),
        parse_timestamp("until", body.until),
        body.ids,
    )
    if body.dry_run:
        try:
            report = await dry_run_here(settings, store, req, at_most=AT_ONCE)
        except Retriable as exc:
            return error_response(503, "dynamics_unavailable", f"Dynamics did not answer: {exc}")
        except CrmsyncError as exc:
            return error_response(502, "dynamics_refused", str(exc))
        if report["complete"]:
            return report
        req = replace(req, dry_run=True)
    with write_transaction(store) as conn:
        job = jobs.create(conn, JobKind.RESYNC, req.object, req.direction, req.params())
    return JSONResponse(jobs.as_json(job), status_code=202)


@router.get("/audit")
def last_audit(request: Request, store: Store) -> dict[str, Any]:
    """The last audit's findings per object: ``checked``, ``only_local``,
    ``only_dynamics``, ``different``, ``samples``, ``started_at``, ``finished_at``."""
    with read_transaction(store) as conn:
        return {"objects": audit.last_results(conn, list(request.app.state.specs))}


@router.post(
    "/audit",
    responses={202: {"description": "The audit job, queued"}, **error_responses(409)},
)
def start_audit(
    request: Request, store: Store, body: Annotated[AuditBody | None, Body()] = None
) -> JSONResponse:
    """Ask for an audit (a worker runs it); ``repair`` queues the fixes. Refused (409,
    ``audit_running``) while an audit of the same records, the scheduled one included,
    waits or runs: the message names its job."""
    body = body or AuditBody(object=None, repair=False)
    check_choice("object", body.object, request.app.state.specs)
    try:
        with write_transaction(store) as conn:
            job = jobs.ask_for_audit(conn, body.object, body.repair)
    except Busy as exc:
        return error_response(409, "audit_running", str(exc))
    return JSONResponse(jobs.as_json(job), status_code=202)


@router.get("/jobs")
def list_jobs(store: Store) -> dict[str, Any]:
    """The running and waiting jobs, then the latest finished ones."""
    with read_transaction(store) as conn:
        return {"jobs": [jobs.as_json(j) for j in jobs.recent(conn)]}


JobId = Annotated[int, Path(ge=1, le=2**62, description="The job's id")]


@router.get("/jobs/{job_id}", responses=error_responses(404))
def get_job(store: Store, job_id: JobId) -> dict[str, Any]:
    with read_transaction(store) as conn:
        return jobs.as_json(jobs.get(conn, job_id))


@router.post("/jobs/{job_id}/cancel", responses=error_responses(404))
def cancel_job(store: Store, job_id: JobId) -> dict[str, Any]:
    """Cancel a job: a waiting one, or one whose worker is dead (its lease ran out), at
    once; a running one at its next page."""
    with write_transaction(store) as conn:
        return jobs.as_json(jobs.cancel(conn, job_id))
