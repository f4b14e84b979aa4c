"""Resync and audit jobs (``sync_job``): asked for, claimed under a lease, advanced, ended.

A job is asked for by the CLI or the API (``create``) and run by whichever process
claims it (``claim``): a worker's upkeep, or the CLI that asked and waits. The claim is
a lease like a queue entry's: a process that dies (``kill -9``) leaves a job any other
may claim once the lease runs out, and it resumes at its ``position``, which the runner
saves with ``advance`` in the transaction of the work it did (so no page of work is done
twice, nor skipped). A run that cannot go on (Dynamics unreachable, or a failure
crmsync did not expect) gives the job back with ``retry_later``: held by no one, not to
be claimed before a time, with the reason in ``error``. Cancelling sets a flag the runner
reads between pages; a job no live process holds (waiting, given back, or its holder's
lease run out) is cancelled at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.domain import Direction, JobKind, JobState
from crmsync.errors import Busy
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_audit_seen, sync_job
from crmsync.store.types import utcnow
from crmsync.values import Job

ACTIVE = (JobState.QUEUED, JobState.RUNNING)
# Counts kept in a job's position beside where it got to: runs in a row that failed
# unexpectedly (the runner fails the job at its limit) and runs in a row that found
# Dynamics unreachable (its backoff's exponent). ``advance`` drops them and the reason
# (``error``): progress ends a run of failures.
FAILED_RUNS = "failed_runs"
OUTAGES = "outages"
COUNTS = (FAILED_RUNS, OUTAGES)
# pg_advisory_xact_lock's key for asking for the scheduled audit ("crmsync audit").
AUDIT_LOCK = 0x63726D73_61756474


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        kind=JobKind(row.kind),
        object=row.object,
        direction=Direction(row.direction) if row.direction else None,
        params=dict(row.params or {}),
        state=JobState(row.state),
        done=row.done,
        total=row.total,
        position=dict(row.position) if row.position else None,
        result=dict(row.result) if row.result else None,
        error=row.error,
        cancel_requested=bool(row.cancel_requested),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        claimed_by=row.claimed_by,
        claimed_until=row.claimed_until,
    )


def create(
    conn: Connection,
    kind: JobKind,
    obj: str | None,
    direction: Direction | None,
    params: Mapping[str, Any],
    now: datetime | None = None,
) -> Job:
    """Ask for a job; it waits (``queued``) until a process claims it."""
    now = now or utcnow()
    new_id = conn.execute(
        sa.insert(sync_job)
        .values(
            kind=kind,
            object=obj,
            direction=direction,
            params=dict(params),
            state=JobState.QUEUED,
            created_at=now,
        )
        .returning(sync_job.c.id)
    ).scalar_one()
    return get(conn, new_id)


def schedule_audit(engine: Engine, every: timedelta, now: datetime | None = None) -> Job | None:
    """Ask for an audit of every object unless one was asked for within ``every`` (or
    one is waiting or running); returns the job asked for, if any. Many workers may call
    it: on PostgreSQL an advisory lock makes them ask once."""
    now = now or utcnow()
    j = sync_job.c
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})
        recent = conn.execute(
            sa.select(j.id)
            .where(
                j.kind == JobKind.AUDIT,
                sa.or_(j.state.in_(ACTIVE), j.created_at > now - every),
            )
            .limit(1)
        ).scalar()
        if recent is not None:
            return None
        return create(conn, JobKind.AUDIT, None, None, {"repair": False, "scheduled": True}, now)


def ask_for_audit(
    conn: Connection, obj: str | None, repair: bool, now: datetime | None = None
) -> Job:
    """Ask for an audit of ``obj`` (None: every object) as a person does (the CLI, the
    API, the console), or raise ``Busy`` naming the audit asked for already that
    covers it, waiting or running and not cancelled (one of every object covers all):
    a second would read the same records again beside it. On PostgreSQL the scheduled
    audit's advisory lock makes the check and the ask one step; SQLite's write
    transaction is one already."""
    now = now or utcnow()
    j = sync_job.c
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})
    covering = conn.execute(
        sa.select(sync_job)
        .where(
            j.kind == JobKind.AUDIT,
            j.state.in_(ACTIVE),
            j.cancel_requested.is_(False),  # stopping at its next page
            *([] if obj is None else [sa.or_(j.object.is_(None), j.object == obj)]),
        )
        .order_by(j.id)
        .limit(1)
    ).first()
    if covering is not None:
        raise Busy(busy_message(_job(covering)), job_id=covering.id)
    return create(conn, JobKind.AUDIT, obj, None, {"repair": repair}, now)


def busy_message(job: Job) -> str:
    """Why an audit was not asked for: the one that covers it (one line)."""
    scope = f"of {job.object}" if job.object else "of every object"
    how = "scheduled " if job.params.get("scheduled") else ""
    since = f" since {job.started_at:%Y-%m-%d %H:%M:%S}Z" if job.started_at else ""
    return (
        f"{how}audit job {job.id} {scope} is {job.state}{since} ({job.done} records checked);"
        " a second audit would read the same records again: wait for it to end, or"
        f" cancel job {job.id} and ask again"
    )


def audit_after_reconciling(
    engine: Engine, obj: str, within: timedelta, now: datetime | None = None
) -> Job | None:
    """Ask for an audit with repair of ``obj`` after its expired delta token was
    reconciled (the reconciliation sees only Dynamics' side), unless one for it was
    asked for within ``within``; returns the job asked for, if any."""
    now = now or utcnow()
    j = sync_job.c
    with write_transaction(engine) as conn:
        recent = conn.execute(
            sa.select(j.id)
            .where(
                j.kind == JobKind.AUDIT,
                j.object == obj,
                sa.or_(j.state.in_(ACTIVE), j.created_at > now - within),
            )
            .limit(1)
        ).scalar()
        if recent is not None:
            return None
        params = {"repair": True, "reason": "delta_token_expired"}
        return create(conn, JobKind.AUDIT, obj, None, params, now)


def get(conn: Connection, job_id: int) -> Job:
    from crmsync.store.params import MAX_ID
    from crmsync.store.records import NotFound

    if not 1 <= job_id <= MAX_ID:  # no such id in the store (nor one it could bind)
        raise NotFound(f"no job {job_id}")
    row = conn.execute(sa.select(sync_job).where(sync_job.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _job(row)


def recent(conn: Connection, limit: int = 20) -> list[Job]:
    """The active jobs, then the latest finished ones, newest first (Sync Status)."""
    j = sync_job.c
    rows = conn.execute(
        sa.select(sync_job)
        .order_by(sa.case((j.state.in_(ACTIVE), 0), else_=1), j.id.desc())
        .limit(max(1, min(limit, 200)))
    )
    return [_job(r) for r in rows]


def claim(
    engine: Engine,
    worker: str,
    lease: timedelta,
    *,
    job_id: int | None = None,
    kinds: tuple[JobKind, ...] = tuple(JobKind),
    now: datetime | None = None,
) -> Job | None:
    """Claim the oldest active job (or ``job_id``) that no live lease holds, nor is
    given back to resume later than ``now``."""
    now = now or utcnow()
    j = sync_job.c
    with write_transaction(engine) as conn:
        pick = (
            sa.select(j.id)
            .where(
                j.state.in_(ACTIVE),
                j.kind.in_(list(kinds)),
                sa.or_(j.claimed_until.is_(None), j.claimed_until < now, j.claimed_by == worker),
                *([j.id == job_id] if job_id is not None else []),
            )
            .order_by(j.id)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        found = conn.execute(pick).scalar()
        if found is None:
            return None
        conn.execute(
            sa.update(sync_job)
            .where(j.id == found)
            .values(
                claimed_by=worker,
                claimed_until=now + lease,
                state=JobState.RUNNING,
                started_at=sa.func.coalesce(j.started_at, now),
            )
        )
        return get(conn, found)


def advance(
    conn: Connection,
    job: Job,
    worker: str,
    position: Mapping[str, Any] | None,
    *,
    done: int = 0,
    total: int | None = None,
    lease: timedelta,
    now: datetime | None = None,
) -> bool:
    """Save where the job got to (in the caller's transaction, beside the work done) and
    renew the lease; False if this process no longer holds the job (the caller must then
    roll its work back: another process resumes it)."""
    now = now or utcnow()
    j = sync_job.c
    values: dict[str, Any] = {
        "position": (
            {k: v for k, v in position.items() if k not in COUNTS} if position is not None else None
        ),
        "done": j.done + done,
        "claimed_until": now + lease,
        "error": None,
    }
    if total is not None:
        values["total"] = total
    res = conn.execute(
        sa.update(sync_job)
        .where(j.id == job.id, j.claimed_by == worker, j.state == JobState.RUNNING)
        .values(**values)
    )
    return res.rowcount == 1


def retry_later(
    engine: Engine,
    job_id: int,
    worker: str,
    *,
    position: Mapping[str, Any] | None,
    error: str,
    at: datetime,
) -> bool:
    """Give back a running job this process holds, for any process to resume at its
    position from ``at`` on (``claim`` passes by a job held by no one whose
    ``claimed_until`` is still ahead), with the reason in ``error``; False if this
    process no longer holds it."""
    j = sync_job.c
    with write_transaction(engine) as conn:
        res = conn.execute(
            sa.update(sync_job)
            .where(j.id == job_id, j.claimed_by == worker, j.state == JobState.RUNNING)
            .values(
                position=dict(position) if position is not None else None,
                error=error[:2000],
                claimed_by=None,
                claimed_until=at,
            )
        )
    return res.rowcount == 1


def renew(engine: Engine, job_id: int, worker: str, lease: timedelta) -> bool:
    """Extend this process's lease of a running job; False if it no longer holds it."""
    j = sync_job.c
    with write_transaction(engine) as conn:
        res = conn.execute(
            sa.update(sync_job)
            .where(j.id == job_id, j.claimed_by == worker, j.state == JobState.RUNNING)
            .values(claimed_until=utcnow() + lease)
        )
    return res.rowcount == 1


def cancel_requested(engine: Engine, job_id: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.select(sync_job.c.cancel_requested).where(sync_job.c.id == job_id)
            ).scalar()
        )


def cancel(conn: Connection, job_id: int, now: datetime | None = None) -> Job:
    """Cancel a job: one no live process holds at once (waiting, given back to resume
    later, or held by a process whose lease ran out: dead, as ``claim`` takes it), a
    running one at its next page (the runner reads the flag). One statement, so that a
    claim between reading the job and writing it cannot make it lose the cancel; a
    finished job is left as it ended. A holder that was only late (not dead) finds the
    job no longer running at its next write and stops (``advance`` is False)."""
    now = now or utcnow()
    get(conn, job_id)  # NotFound
    j = sync_job.c
    at_once = sa.or_(
        j.state == JobState.QUEUED,
        j.claimed_by.is_(None),
        j.claimed_until.is_(None),
        j.claimed_until < now,
    )
    conn.execute(
        sa.update(sync_job)
        .where(j.id == job_id, j.state.in_(ACTIVE))
        .values(
            cancel_requested=True,
            state=sa.case((at_once, JobState.CANCELLED), else_=j.state),
            finished_at=sa.case((at_once, now), else_=j.finished_at),
            claimed_by=sa.case((at_once, None), else_=j.claimed_by),
            claimed_until=sa.case((at_once, None), else_=j.claimed_until),
        )
    )
    job = get(conn, job_id)
    if job.state is JobState.CANCELLED:
        _forget_seen(conn, job_id)
    return job


def finish(
    engine: Engine,
    job: Job,
    worker: str,
    state: JobState,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    """End a job this process holds (done, failed or cancelled), and drop what an audit
    read from Dynamics (``sync_audit_seen``): only the job itself used it. A job ended
    meanwhile (cancelled while given back) stays as it ended."""
    now = now or utcnow()
    j = sync_job.c
    with write_transaction(engine) as conn:
        ended = conn.execute(
            sa.update(sync_job)
            .where(j.id == job.id, j.claimed_by == worker, j.state == JobState.RUNNING)
            .values(
                state=state,
                result=dict(result) if result is not None else None,
                error=error[:2000] if error else None,
                finished_at=now,
                claimed_by=None,
                claimed_until=None,
            )
        )
        if ended.rowcount == 1:
            _forget_seen(conn, job.id)


def _forget_seen(conn: Connection, job_id: int) -> None:
    """Drop what the audit ``job_id`` read from Dynamics (only the job itself used it)."""
    s = sync_audit_seen.c
    if conn.dialect.name == "sqlite" and not any(
        conn.execute(sa.select(s.job_id).where(other).limit(1)).first()
        for other in (s.job_id < job_id, s.job_id > job_id)
    ):
        # The job's rows are all there are (the write lock keeps it so): a DELETE without
        # WHERE drops the table's pages at once (SQLite's truncate optimisation), where
        # one row at a time took 0.8 s for a million.
        conn.execute(sa.delete(sync_audit_seen))
        return
    conn.execute(sa.delete(sync_audit_seen).where(s.job_id == job_id))


def release(engine: Engine, worker: str) -> None:
    """Give back the jobs this process holds (a graceful stop): another resumes them."""
    j = sync_job.c
    with write_transaction(engine) as conn:
        conn.execute(
            sa.update(sync_job)
            .where(j.claimed_by == worker, j.state == JobState.RUNNING)
            .values(claimed_by=None, claimed_until=None)
        )


def as_json(job: Job) -> dict[str, Any]:
    """A job as the API and ``--json`` show it."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": job.id,
        "kind": job.kind,
        "object": job.object,
        "direction": job.direction,
        "params": job.params,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "result": job.result,
        "error": job.error,
        "retry_at": iso(job.retry_at),
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
