"""Job runs that fail, cancels that race them or find their worker dead, and one audit
of the same records at a time, on both backends.

A job whose run raises what crmsync did not expect (here a genuine one: a job row whose
``since`` no version of crmsync can read) is given back with the reason and a backoff,
and after ``MAX_FAILED_RUNS`` runs in a row ends as ``failed``, its error in the job row,
the API and ``crmsync jobs list``; the runner goes on with the other jobs. No Dynamics
is needed: the jobs here are ``to_crm`` resyncs, which only queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.cli import app as cli_app
from crmsync.config import load_settings
from crmsync.domain import Direction, JobKind, JobState
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.jobs import MAX_FAILED_RUNS, JobRunner
from crmsync.engine.pull import Puller
from crmsync.errors import Busy
from crmsync.store import audit as store_audit
from crmsync.store import capture, jobs
from crmsync.store.db import write_transaction
from crmsync.store.types import utcnow
from crmsync.values import Job
from crmsync.web.app import create_app

TOKEN = "jobs-token"
LEASE = timedelta(seconds=60)


@pytest.fixture
def runner(engine: Engine, db_url: str) -> Iterator[JobRunner]:
    # Slow backoff: a job given back is plainly not claimable until the test says so.
    settings = load_settings(database_url=db_url, retry_base_seconds=60, retry_max_seconds=600)
    client = DataverseClient.with_static_token("http://127.0.0.1:9", "never-used")
    yield JobRunner(engine, Puller(engine, client, settings), "w1")
    asyncio.run(client.aclose())


def _get(engine: Engine, job_id: int) -> Job:
    with engine.connect() as conn:
        return jobs.get(conn, job_id)


def _create(engine: Engine, params: dict[str, Any]) -> Job:
    with write_transaction(engine) as conn:
        return jobs.create(conn, JobKind.RESYNC, "lead", Direction.TO_CRM, params)


def _time_passes(engine: Engine, job_id: int) -> None:
    """The job's backoff is over (its not-before time moved to the past)."""
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE sync_job SET claimed_until = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": job_id},
        )


def test_a_job_failing_unexpectedly_ends_failed_and_the_others_run(
    engine: Engine, runner: JobRunner, db_url: str
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('a@x.org', 'A')"))
    capture.fold_pending(engine)
    poison = _create(engine, {"since": "not a time", "until": None, "ids": []})
    good = _create(engine, {"since": None, "until": None, "ids": []})

    first = asyncio.run(runner.run_one())
    assert first is not None and first.id == poison.id
    assert first.state is JobState.RUNNING and first.claimed_by is None
    assert first.retry_at is not None and first.retry_at > utcnow() + timedelta(seconds=20)
    assert first.error is not None and first.error.startswith(f"run 1 of {MAX_FAILED_RUNS}")
    assert "ValueError" in first.error
    # Backing off, the poison job is passed by: the other job runs.
    ran = asyncio.run(runner.run_one())
    assert ran is not None and ran.id == good.id and ran.state is JobState.DONE
    assert ran.result == {"queued": 1}
    assert asyncio.run(runner.run_one()) is None

    for _ in range(2, MAX_FAILED_RUNS + 1):
        _time_passes(engine, poison.id)
        again = asyncio.run(runner.run_one())
        assert again is not None and again.id == poison.id
    ended = _get(engine, poison.id)
    assert ended.state is JobState.FAILED and ended.finished_at is not None
    assert ended.error is not None
    assert ended.error.startswith(f"failed {MAX_FAILED_RUNS} runs in a row")
    assert "not a time" in ended.error
    _time_passes(engine, poison.id)
    assert asyncio.run(runner.run_one()) is None  # never claimed again

    api = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)

    async def shown() -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as c:
            return (await c.get(f"/api/v1/sync/jobs/{poison.id}")).json()

    body = asyncio.run(shown())
    assert body["state"] == "failed" and body["error"] == ended.error
    listed = CliRunner().invoke(
        cli_app, ["jobs", "list"], env={"CRMSYNC_DATABASE_URL": db_url, "COLUMNS": "300"}
    )
    assert listed.exit_code == 0, listed.output
    assert "failed" in listed.output and "not a time" in listed.output


def test_progress_ends_a_run_of_failures(engine: Engine, runner: JobRunner) -> None:
    """The counts kept beside the position, and the reason, go with the next page done."""
    job = _create(engine, {"since": None, "until": None, "ids": []})
    claimed = jobs.claim(engine, "w1", LEASE)
    assert claimed is not None
    kept = {"after": 0, "queued": 0, jobs.FAILED_RUNS: 2, jobs.OUTAGES: 1}
    assert jobs.retry_later(
        engine, job.id, "w1", position=kept, error="run 2 failed", at=utcnow() - LEASE
    )
    assert jobs.claim(engine, "w2", LEASE) is not None
    with write_transaction(engine) as conn:
        assert jobs.advance(conn, job, "w2", {**kept, "after": 5}, done=5, lease=LEASE)
    now = _get(engine, job.id)
    assert now.position == {"after": 5, "queued": 0} and now.error is None


def test_a_job_given_back_is_not_claimed_before_its_time(engine: Engine) -> None:
    job = _create(engine, {"since": None, "until": None, "ids": []})
    assert jobs.claim(engine, "w1", LEASE) is not None
    at = utcnow() + timedelta(seconds=30)
    assert jobs.retry_later(engine, job.id, "w1", position=None, error="down", at=at)
    assert not jobs.retry_later(engine, job.id, "w1", position=None, error="again", at=at)
    assert jobs.claim(engine, "w1", LEASE, now=at - timedelta(seconds=1)) is None
    assert jobs.claim(engine, "w2", LEASE, now=at - timedelta(seconds=1)) is None
    shown = jobs.as_json(_get(engine, job.id))
    assert shown["retry_at"] == at.isoformat().replace("+00:00", "Z")
    assert shown["state"] == "running" and shown["error"] == "down"
    again = jobs.claim(engine, "w2", LEASE, now=at + timedelta(seconds=1))
    assert again is not None and again.id == job.id and again.retry_at is None


# --- cancels racing the runner ---------------------------------------------------------


def test_a_cancel_racing_a_claim_is_not_lost(engine: Engine) -> None:
    """A worker claims the job between the cancel's reading it (queued) and its write.
    The cancel used to write only "where still queued": it wrote nothing, answered
    ``running`` and the job ran to its end. On SQLite the cancel's write lock keeps the
    claim out, so there the claim comes first; the outcome must be the same."""
    job = _create(engine, {"since": None, "until": None, "ids": []})
    claimed: list[Job | None] = []

    def claim_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SYNC_JOB") and not claimed:
            claimed.append(jobs.claim(engine, "w1", LEASE))

    if engine.dialect.name == "sqlite":
        claimed.append(jobs.claim(engine, "w1", LEASE))
    with write_transaction(engine) as conn:
        sa.event.listen(conn, "before_cursor_execute", claim_first)
        answered = jobs.cancel(conn, job.id)
    assert claimed and claimed[0] is not None and claimed[0].id == job.id
    assert answered.state is JobState.RUNNING and answered.cancel_requested
    assert jobs.cancel_requested(engine, job.id)  # the runner stops at its next page


def test_a_job_cancelled_while_given_back_stays_cancelled(engine: Engine) -> None:
    """Given back (Dynamics unreachable), a job no process holds is cancelled at once;
    the process that held it can neither set it back to running nor end it as done."""
    job = _create(engine, {"since": None, "until": None, "ids": []})
    held = jobs.claim(engine, "w1", LEASE)
    assert held is not None
    later = utcnow() + timedelta(minutes=5)
    assert jobs.retry_later(engine, job.id, "w1", position=None, error="down", at=later)
    with write_transaction(engine) as conn:
        assert jobs.cancel(conn, job.id).state is JobState.CANCELLED
    jobs.finish(engine, held, "w1", JobState.DONE, result={"queued": 1})
    with write_transaction(engine) as conn:
        assert not jobs.advance(conn, held, "w1", {"after": 1}, done=1, lease=LEASE)
    assert not jobs.renew(engine, job.id, "w1", LEASE)
    assert jobs.claim(engine, "w1", LEASE, now=later + LEASE) is None
    ended = _get(engine, job.id)
    assert ended.state is JobState.CANCELLED and ended.result is None
    with write_transaction(engine) as conn:  # cancelling again leaves it as it ended
        assert jobs.cancel(conn, job.id).finished_at == ended.finished_at


def test_a_running_job_cancelled_ends_cancelled_not_done(engine: Engine, runner: JobRunner) -> None:
    """The cancel lands while the runner works on a page (here: between its check of
    the flag and its page's write); the runner stops at the next check."""
    with write_transaction(engine) as conn:
        for i in range(3):
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name) VALUES (:e, 'L')"), {"e": f"{i}@x"}
            )
    capture.fold_pending(engine)
    job = _create(engine, {"since": None, "until": None, "ids": []})
    pages: list[int] = []
    resync = runner.resyncer

    original = resync._check_cancel

    def check_then_cancel(j: Job) -> None:
        pages.append(1)
        original(j)
        if len(pages) == 1:
            with write_transaction(engine) as conn:
                jobs.cancel(conn, j.id)

    resync._check_cancel = check_then_cancel  # type: ignore[method-assign]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("crmsync.engine.resync.LOCAL_PAGE", 2)
        ended = asyncio.run(runner.run_one())
    assert ended is not None and ended.id == job.id
    assert ended.state is JobState.CANCELLED and ended.cancel_requested
    assert ended.done == 2 and len(pages) == 2  # the page under way, then it stopped


# --- the audit's lock --------------------------------------------------------------------


def test_one_audit_at_a_time_and_no_scheduled_one_beside_a_manual_one(engine: Engine) -> None:
    """A job is held by one process (its lease): a second worker claims nothing, by id
    or not. The daily audit is not asked for while any audit waits or runs (a manual one
    of one object included), nor within a day of the last."""
    with write_transaction(engine) as conn:
        manual = jobs.create(conn, JobKind.AUDIT, "lead", None, {"repair": False})
    assert jobs.schedule_audit(engine, timedelta(days=1)) is None  # waiting
    held = jobs.claim(engine, "w1", LEASE)
    assert held is not None and held.id == manual.id
    assert jobs.claim(engine, "w2", LEASE) is None
    assert jobs.claim(engine, "w2", LEASE, job_id=manual.id) is None
    later = utcnow() + timedelta(days=2)
    assert jobs.schedule_audit(engine, timedelta(days=1), now=later) is None  # running
    jobs.finish(engine, held, "w1", JobState.DONE, result={"objects": {}})
    assert jobs.schedule_audit(engine, timedelta(days=1)) is None  # asked for today
    scheduled = jobs.schedule_audit(engine, timedelta(days=1), now=later)
    assert scheduled is not None and scheduled.params["scheduled"] is True
    assert jobs.schedule_audit(engine, timedelta(days=1), now=later) is None


def _api(engine: Engine, db_url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    api = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(go())


def _cli(db_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), env={"CRMSYNC_DATABASE_URL": db_url})


def test_an_audit_asked_for_beside_one_covering_it_is_refused(engine: Engine, db_url: str) -> None:
    """The scheduled audit (every object) runs: a person's audit of one object, or of
    all, is refused with the running job's id (CLI exit status 3, API 409), and no job
    is added; an audit of one object covers only that object."""
    scheduled = jobs.schedule_audit(engine, timedelta(days=1))
    assert scheduled is not None
    assert jobs.claim(engine, "w1", LEASE) is not None  # it runs

    out = _cli(db_url, "audit", "--object", "lead")
    assert out.exit_code == 3, out.output
    assert f"scheduled audit job {scheduled.id} of every object is running" in out.output
    assert f"crmsync jobs cancel {scheduled.id}" in out.output
    assert "Traceback" not in out.output
    out = _cli(db_url, "audit", "--repair", "--json")
    assert out.exit_code == 3, out.output
    assert '"code": "audit_running"' in out.output

    resp = _api(engine, db_url, "POST", "/api/v1/sync/audit", json={"object": "contact"})
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "audit_running" and f"job {scheduled.id}" in error["message"]
    with engine.connect() as conn:
        assert [j.id for j in jobs.recent(conn)] == [scheduled.id]

    with write_transaction(engine) as conn:  # it stops at its next page: it covers nothing
        assert jobs.cancel(conn, scheduled.id).state is JobState.RUNNING
    resp = _api(engine, db_url, "POST", "/api/v1/sync/audit", json={"object": "lead"})
    assert resp.status_code == 202, resp.text
    lead = resp.json()["id"]
    # Waiting, the lead audit covers lead (and so an audit of every object), not contact.
    with write_transaction(engine) as conn:
        with pytest.raises(Busy) as refused:
            jobs.ask_for_audit(conn, "lead", True)
        assert refused.value.job_id == lead and "audit job" in str(refused.value)
    with write_transaction(engine) as conn, pytest.raises(Busy):
        jobs.ask_for_audit(conn, None, False)
    with write_transaction(engine) as conn:
        contact = jobs.ask_for_audit(conn, "contact", False)
    assert contact.object == "contact" and contact.state is JobState.QUEUED


def _held_by_a_dead_worker(engine: Engine, job: Job) -> Job:
    held = jobs.claim(engine, "dead", LEASE)
    assert held is not None and held.id == job.id
    with write_transaction(engine) as conn:  # its lease ran out: the worker is gone
        conn.execute(
            sa.text("UPDATE sync_job SET claimed_until = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": job.id},
        )
    return held


def test_a_job_held_by_a_dead_worker_is_cancelled_at_once(engine: Engine, db_url: str) -> None:
    """``crmsync jobs cancel`` and the API's cancel of a running job whose worker died
    (its lease ran out) end it cancelled then, not once another worker claims it; the
    dead worker, were it only late, can neither go on nor end it otherwise. A live
    worker's job is only asked to stop."""
    audit_job = _create_audit(engine, "lead")
    dead = _held_by_a_dead_worker(engine, audit_job)
    with write_transaction(engine) as conn:
        store_audit.save_seen(
            conn, audit_job.id, "lead", [{"crm_id": "a", "version": 1, "excluded": False}]
        )
    out = _cli(db_url, "jobs", "cancel", str(audit_job.id))
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"job {audit_job.id}: cancelled"
    ended = _get(engine, audit_job.id)
    assert ended.state is JobState.CANCELLED and ended.finished_at is not None
    assert ended.claimed_by is None and ended.retry_at is None
    with engine.connect() as conn:  # what it read from Dynamics is dropped with it
        assert store_audit.count_seen(conn, audit_job.id, "lead") == 0
    with write_transaction(engine) as conn:
        assert not jobs.advance(conn, dead, "dead", {"after": 1}, done=1, lease=LEASE)
    jobs.finish(engine, dead, "dead", JobState.DONE, result={"objects": {}})
    assert _get(engine, audit_job.id).state is JobState.CANCELLED

    resync = _create(engine, {"since": None, "until": None, "ids": []})
    _held_by_a_dead_worker(engine, resync)
    resp = _api(engine, db_url, "POST", f"/api/v1/sync/jobs/{resync.id}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "cancelled" and resp.json()["finished_at"] is not None

    alive = _create(engine, {"since": None, "until": None, "ids": []})
    assert jobs.claim(engine, "w1", LEASE) is not None
    out = _cli(db_url, "jobs", "cancel", str(alive.id))
    assert out.exit_code == 0 and "running (stopping)" in out.output, out.output
    still = _get(engine, alive.id)
    assert still.state is JobState.RUNNING and still.cancel_requested
    assert still.claimed_by == "w1"


def test_an_ended_audit_drops_only_the_ids_it_read(engine: Engine) -> None:
    """Cancelled or finished, an audit's saved ids go with it, and no other's do (on
    SQLite the last one's go by a DELETE without WHERE)."""

    def seen(job: Job, obj: str, n: int) -> None:
        rows = [{"crm_id": f"{obj}-{i}", "version": i, "excluded": False} for i in range(n)]
        with write_transaction(engine) as conn:
            store_audit.save_seen(conn, job.id, obj, rows)

    def counts() -> list[int]:
        with engine.connect() as conn:
            return [store_audit.count_seen(conn, j.id, o) for j, o in audits]

    audits = [(_create_audit(engine, o), o) for o in ("lead", "contact", "account")]
    for (job, obj), n in zip(audits, (3, 4, 5), strict=True):
        seen(job, obj, n)
    (first, _), (middle, _), (last, _) = audits
    with write_transaction(engine) as conn:
        jobs.cancel(conn, first.id)  # a waiting job: cancelled at once; others after it
    assert counts() == [0, 4, 5]
    held = jobs.claim(engine, "w1", LEASE, job_id=last.id)
    assert held is not None
    jobs.finish(engine, held, "w1", JobState.DONE, result={"objects": {}})  # one before
    assert counts() == [0, 4, 0]
    with write_transaction(engine) as conn:
        jobs.cancel(conn, middle.id)  # the last
    assert counts() == [0, 0, 0]


def _create_audit(engine: Engine, obj: str) -> Job:
    with write_transaction(engine) as conn:
        return jobs.create(conn, JobKind.AUDIT, obj, None, {"repair": False})
