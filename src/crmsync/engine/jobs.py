"""Running resync and audit jobs: claim one, run it under a renewed lease, end it.

A worker runs the jobs its upkeep finds (``JobRunner.run_pending``); the CLI runs the
one it asked for (``run_one(job_id)``). The holder renews its lease every third of it; a
process that dies leaves the job to the next, which resumes it at its saved position.

A run that fails gives the job back with the reason (``error``) and a time before which
no process claims it (``retry_at``), after the retry settings' capped backoff: Dynamics
unreachable (``Retriable``) never fails the job and waits at least its ``Retry-After``;
a failure crmsync did not expect (a bug, a driver error) fails it after
``MAX_FAILED_RUNS`` runs in a row, so that no job is claimed for ever. Progress ends a
run of either. Any other ``CrmsyncError`` fails the job at once; a store that cannot be
reached is the worker's to wait for (``StoreOutage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from crmsync.config import Settings
from crmsync.domain import JobKind, JobState
from crmsync.dynamics.client import DataverseClient
from crmsync.engine import choices, retry
from crmsync.engine.audit import Auditor, Cancelled, Lost
from crmsync.engine.pull import Puller
from crmsync.engine.resync import Resyncer, ResyncRequest
from crmsync.engine.throttle import SharedThrottle
from crmsync.errors import CrmsyncError, Retriable
from crmsync.store import jobs
from crmsync.store.db import store_unavailable
from crmsync.store.types import utcnow
from crmsync.values import Job

if TYPE_CHECKING:  # the engine passes the store's handle on; it runs no SQL
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

# A job's lease: long enough for a page of work (a full read of 5,000 ids and its save).
JOB_LEASE_SECONDS = 60.0
# Runs in a row (at one position) that may fail unexpectedly before the job ends as
# failed: more than one, as a driver's passing fault is not the job's, but few, as a bug
# fails the same way each time.
MAX_FAILED_RUNS = 3


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        puller: Puller,
        worker: str,
        *,
        lease_seconds: float = JOB_LEASE_SECONDS,
        progress: Callable[[Job], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = puller.settings
        self.worker = worker
        self.lease = timedelta(seconds=lease_seconds)
        self.auditor = Auditor(engine, puller, worker, self.lease, progress)
        self.resyncer = Resyncer(engine, puller, worker, self.lease)

    async def _keep_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            if not await asyncio.to_thread(
                jobs.renew, self.engine, job.id, self.worker, self.lease
            ):
                return

    async def run_one(self, job_id: int | None = None) -> Job | None:
        """Claim and run one job (``job_id``, or the oldest waiting); None if none was
        free. Returns the job as it ended (or as it stands, if left to resume)."""
        job = await asyncio.to_thread(
            jobs.claim, self.engine, self.worker, self.lease, job_id=job_id
        )
        if job is None:
            return None
        log.info(
            "job started",
            extra={"event": "job.start", "job": job.id, "kind": job.kind, "object": job.object},
        )
        keeper = asyncio.create_task(self._keep_lease(job))
        state, result, error = JobState.DONE, None, None
        try:
            result = await self._run(job)
        except Cancelled:
            state = JobState.CANCELLED
        except Lost:
            return await asyncio.to_thread(self._get, job.id)
        except Retriable as exc:
            return await asyncio.to_thread(self._give_back, job, exc, jobs.OUTAGES)
        except CrmsyncError as exc:
            state, error = JobState.FAILED, str(exc)
        except Exception as exc:
            if store_unavailable(exc):
                raise
            return await asyncio.to_thread(self._give_back, job, exc, jobs.FAILED_RUNS)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await asyncio.to_thread(
            jobs.finish, self.engine, job, self.worker, state, result=result, error=error
        )
        log.info("job ended", extra={"event": "job.end", "job": job.id, "state": state})
        return await asyncio.to_thread(self._get, job.id)

    def _give_back(self, job: Job, exc: Exception, counter: str) -> Job:
        """Give the job back to resume after a backoff (``counter`` counts the runs in a
        row that ended so), or, after ``MAX_FAILED_RUNS`` unexpected failures, fail it."""
        now = self._get(job.id)
        position = dict(now.position or {})
        runs = int(position.get(counter) or 0) + 1
        position[counter] = runs
        reason = str(exc) if isinstance(exc, Retriable) else f"{type(exc).__name__}: {exc}"
        extra = {"job": job.id, "runs": runs, "error": reason[:300]}
        if counter == jobs.FAILED_RUNS and runs >= MAX_FAILED_RUNS:
            log.error(
                "job failed",
                extra={"event": "job.failed", **extra},
                exc_info=exc,
            )
            error = f"failed {runs} runs in a row; the last: {reason}"
            jobs.finish(self.engine, job, self.worker, JobState.FAILED, error=error)
            return self._get(job.id)
        at = retry.next_attempt(
            utcnow(),
            runs,
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
            exc.retry_after if isinstance(exc, Retriable) else None,
        )
        if counter == jobs.OUTAGES:
            log.warning(
                "job interrupted: Dynamics unreachable; it resumes later",
                extra={"event": "job.interrupted", "retry_at": at.isoformat(), **extra},
            )
            error = f"Dynamics unreachable ({runs} runs in a row): {reason}"
        else:
            log.error(
                "job run failed; it runs again later",
                extra={"event": "job.run_failed", "retry_at": at.isoformat(), **extra},
                exc_info=exc,
            )
            error = f"run {runs} of {MAX_FAILED_RUNS} failed: {reason}"
        jobs.retry_later(self.engine, job.id, self.worker, position=position, error=error, at=at)
        return self._get(job.id)

    async def _run(self, job: Job) -> dict[str, Any]:
        if job.kind is JobKind.AUDIT:
            return {"objects": await self.auditor.run(job)}
        return await self.resyncer.run(job)

    def _get(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            return jobs.get(conn, job_id)

    async def run_pending(self) -> int:
        """Run the waiting jobs one after the other; returns how many ran."""
        ran = 0
        while (job := await self.run_one()) is not None:
            ran += 1
            if not job.state.finished:
                break  # given back (or held elsewhere): the next round looks again
        return ran


@contextlib.asynccontextmanager
async def _connected(settings: Settings, engine: Engine) -> AsyncIterator[Puller]:
    """A client honouring the shared throttle (as a worker's does), and a puller on it."""
    async with DataverseClient.from_settings(settings) as client:
        throttle = SharedThrottle.for_settings(engine, client.limiter, settings)
        await throttle.refresh()
        poll = asyncio.create_task(throttle.run())
        try:
            # A choice whose labels Dynamics gives converts with the options it has now.
            yield Puller(engine, client, await choices.with_options(settings, client))
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            await throttle.aclose()


async def run_here(
    settings: Settings,
    engine: Engine,
    job_id: int,
    worker: str,
    progress: Callable[[Job], None] | None = None,
) -> Job | None:
    """Run the job ``job_id`` in this process (the CLI that asked for it); None if
    another process holds it."""
    async with _connected(settings, engine) as puller:
        return await JobRunner(engine, puller, worker, progress=progress).run_one(job_id)


async def dry_run_here(
    settings: Settings, engine: Engine, req: ResyncRequest, *, at_most: int | None = None
) -> dict[str, Any]:
    """A resync's dry run in this process: reads both sides, changes nothing (stopping
    after ``at_most`` records matched, if given: ``Resyncer.dry_run``)."""
    async with _connected(settings, engine) as puller:
        resyncer = Resyncer(engine, puller, "dry-run", timedelta(seconds=60))
        return await resyncer.dry_run(req, at_most=at_most)
