"""Targeted resync: queue an object's records again in one direction, or say what would.

A request names an object, a direction, and which records: changed in a window (local
``updated_at`` for ``to_crm``, Dynamics' ``modifiedon`` for ``from_crm``), listed by id
(``from_crm`` also takes Dynamics ids), or all. ``check_request`` validates it (pure).

``dry_run`` reads both sides a page at a time and changes nothing: how many records match
and would change (per ``engine/compare.py``, or missing on one side), with samples; told
``at_most`` (the API's request), it stops there (``complete`` false) and the API makes a
dry-run job of it (``params["dry_run"]``), whose result is the report. ``Resyncer.run``
carries out a job page by page, each queued (``requeue.queue_again``) in the transaction
that saves its position: a crash resumes after the last page queued, and a page queued
twice is still one queue entry per record, so nothing is sent twice in effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from crmsync.domain import Direction, ObjectSpec
from crmsync.dynamics.pages import ChangePage, Page
from crmsync.engine import changes as ch
from crmsync.engine.audit import Cancelled, Lost
from crmsync.engine.compare import compare_record
from crmsync.engine.pull import Puller, Requeue
from crmsync.errors import ValidationFailed
from crmsync.store import jobs, requeue
from crmsync.store.db import write_transaction
from crmsync.store.params import MAX_ID
from crmsync.store.types import utcnow
from crmsync.values import Job, LocalRef

if TYPE_CHECKING:  # the engine passes the store's handle on; it runs no SQL
    from sqlalchemy import Connection, Engine

LOCAL_PAGE = 1_000
DYNAMICS_PAGE = 5_000
BY_ID = 50
SAMPLES = 10
# Records a dry run compares within one API request (a page of local rows and 20 reads
# of Dynamics, or one page of Dynamics': seconds); a larger one is a dry-run job.
AT_ONCE = 1_000


class _Enough(Exception):
    """A dry run asked to stop has compared enough; more may match."""


@dataclass(frozen=True)
class ResyncRequest:
    """What to queue again: ``ids`` are local ids (ints) or, from Dynamics, its ids."""

    object: str
    direction: Direction
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[int | str, ...] = ()
    dry_run: bool = False

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "ids": list(self.ids),
            **({"dry_run": True} if self.dry_run else {}),
        }

    @classmethod
    def from_job(cls, job: Job) -> ResyncRequest:
        p = job.params
        return cls(
            object=str(job.object),
            direction=job.direction or Direction.TO_CRM,
            since=datetime.fromisoformat(p["since"]) if p.get("since") else None,
            until=datetime.fromisoformat(p["until"]) if p.get("until") else None,
            ids=tuple(p.get("ids") or ()),
            dry_run=bool(p.get("dry_run")),
        )


def check_request(
    specs: Mapping[str, ObjectSpec],
    obj: str,
    direction: str | None,
    since: datetime | None,
    until: datetime | None,
    ids: Sequence[Any],
) -> ResyncRequest:
    """A valid request, or ``ValidationFailed`` naming the field that is wrong."""
    if obj not in specs:
        raise ValidationFailed("object", f"unknown object {obj!r}; one of {', '.join(specs)}")
    spec = specs[obj]
    try:
        way = Direction(direction or Direction.TO_CRM)
    except ValueError:
        raise ValidationFailed("direction", "must be to_crm or from_crm") from None
    if way is Direction.TO_CRM and not spec.flow.pushes:
        raise ValidationFailed("direction", f"{obj} does not sync to Dynamics (flow {spec.flow})")
    if way is Direction.FROM_CRM and not spec.flow.pulls:
        raise ValidationFailed("direction", f"{obj} does not sync from Dynamics (flow {spec.flow})")
    if since is not None and until is not None and since >= until:
        raise ValidationFailed("until", "must be later than since")
    if ids and (since is not None or until is not None):
        raise ValidationFailed("ids", "give ids or a window (since/until), not both")
    if way is Direction.TO_CRM and (since or until) and not spec.timestamps:
        raise ValidationFailed(
            "since", f"{obj}'s table has no updated_at to window by; give ids instead"
        )
    if len(ids) > requeue.MAX_IDS:
        raise ValidationFailed("ids", f"at most {requeue.MAX_IDS} ids at once")
    clean: list[int | str] = []
    for value in ids:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
            clean.append(value)
        elif isinstance(value, str) and value.strip().isdecimal() and 0 < int(value) <= MAX_ID:
            clean.append(int(value))
        elif way is Direction.FROM_CRM and ch.is_guid(value):
            clean.append(str(value).lower())
        else:
            wanted = "a local id" + (" or a Dynamics id" if way is Direction.FROM_CRM else "")
            raise ValidationFailed("ids", f"{value!r} is not {wanted}")
    return ResyncRequest(obj, way, since, until, tuple(dict.fromkeys(clean)))


def modified_filter(since: datetime | None, until: datetime | None) -> str | None:
    """Dynamics' ``$filter`` on ``modifiedon`` for a window (None: no window)."""

    def odata(at: datetime) -> str:
        return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    parts = []
    if since is not None:
        parts.append(f"{ch.MODIFIED_ON} ge {odata(since)}")
    if until is not None:
        parts.append(f"{ch.MODIFIED_ON} lt {odata(until)}")
    return " and ".join(parts) or None


class Resyncer:
    """Dry runs and resync jobs with one process's client and puller."""

    def __init__(self, engine: Engine, puller: Puller, worker: str, lease: timedelta) -> None:
        self.engine = engine
        self.puller = puller
        self.client = puller.client
        self.specs = puller.specs
        self.worker = worker
        self.lease = lease

    def _read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.engine.connect() as conn:
            return fn(conn, *args, **kwargs)

    def _full_select(self, spec: ObjectSpec) -> list[str]:
        select = ch.select_for(spec, self.puller._filter_for(spec))
        select += [a for a in spec.fields.values() if a not in select]
        return select + [
            lk.value_attribute for lk in spec.lookups if lk.value_attribute not in select
        ]

    def _split(self, req: ResyncRequest) -> tuple[list[int], list[str]]:
        local = [i for i in req.ids if isinstance(i, int)]
        return local, [i for i in req.ids if isinstance(i, str)]

    # --- dry run ------------------------------------------------------------------------

    async def dry_run(
        self, req: ResyncRequest, *, at_most: int | None = None, job: Job | None = None
    ) -> dict[str, Any]:
        """``{"matched", "would_change", "samples", "complete"}``; reads only, on both
        sides. ``at_most``: stop after the page that reaches that many records matched
        (``complete`` false if more may match). ``job``: a dry-run job's progress."""
        report: dict[str, Any] = {
            "matched": 0,
            "would_change": 0,
            "samples": [],
            "complete": True,
        }

        def enough() -> bool:
            return at_most is not None and report["matched"] >= at_most

        try:
            await self._compare_pages(req, report, enough, job)
        except _Enough:
            report["complete"] = False
        return report

    async def _compare_pages(
        self,
        req: ResyncRequest,
        report: dict[str, Any],
        enough: Callable[[], bool],
        job: Job | None,
    ) -> None:
        spec = self.specs[req.object]
        async for local_rows, theirs in self._pairs(req, enough):
            if job is not None:
                self._check_cancel(job)
            before = report["matched"]
            parents = await asyncio.to_thread(
                self._read, requeue.parent_ids, self.specs, spec, local_rows
            )
            by_crm = {str(r["crm_id"]).lower(): r for r in local_rows if r.get("crm_id")}
            pairs: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
            if req.direction is Direction.TO_CRM:
                pairs = [
                    (r, theirs.get(str(r["crm_id"]).lower()) if r.get("crm_id") else None)
                    for r in local_rows
                ]
            else:
                pairs = [(by_crm.get(k), v) for k, v in theirs.items()]
            for mine, dyn in pairs:
                report["matched"] += 1
                if mine is None or dyn is None:
                    report["would_change"] += 1
                    self._sample(report, mine, dyn, [])
                    continue
                diffs = compare_record(spec, mine, dyn, parents)
                if diffs:
                    report["would_change"] += 1
                    self._sample(report, mine, dyn, [d.as_json() for d in diffs])
            if job is not None:
                await asyncio.to_thread(self._dry_progress, job, report["matched"] - before)

    def _dry_progress(self, job: Job, records: int) -> None:
        with write_transaction(self.engine) as conn:
            self._advance(conn, job, {}, records)

    async def _dry_run_job(self, job: Job, req: ResyncRequest) -> dict[str, Any]:
        """A dry run as a job. It changes nothing, so it keeps no position: resumed after
        a crash, it starts again (and counts its progress again)."""
        spec = self.specs[req.object]
        local_ids, _ = self._split(req)

        def start() -> None:
            total: int | None = None
            if req.direction is Direction.TO_CRM:
                total = self._read(
                    requeue.count_local, spec, since=req.since, until=req.until, ids=local_ids
                )
            elif req.ids:
                total = len(req.ids)
            with write_transaction(self.engine) as conn:
                done = jobs.advance(
                    conn, job, self.worker, {}, done=-job.done, total=total, lease=self.lease
                )
            if not done:
                raise Lost("the job is no longer this process's")

        await asyncio.to_thread(start)
        report = await self.dry_run(req, job=job)
        report.pop("complete")
        return report

    def _sample(
        self,
        report: dict[str, Any],
        mine: Mapping[str, Any] | None,
        dyn: Mapping[str, Any] | None,
        fields: list[dict[str, Any]],
    ) -> None:
        if len(report["samples"]) >= SAMPLES:
            return
        report["samples"].append(
            {
                "record_id": mine["id"] if mine else None,
                "crm_id": (str(mine["crm_id"]).lower() if mine and mine.get("crm_id") else None)
                or (self._crm_id_of(dyn) if dyn else None),
                "missing": "dynamics" if dyn is None else ("local" if mine is None else None),
                "fields": fields,
            }
        )

    def _crm_id_of(self, row: Mapping[str, Any]) -> str | None:
        for spec in self.specs.values():
            if spec.primary_key in row:
                return str(row[spec.primary_key]).lower()
        return None

    async def _pairs(
        self, req: ResyncRequest, enough: Callable[[], bool]
    ) -> AsyncGenerator[tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]]:
        """Pages of (local rows, Dynamics' rows by id) for a dry run; ``_Enough`` instead
        of reading a next page once ``enough()``."""
        spec = self.specs[req.object]
        select = self._full_select(spec)
        local_ids, crm_ids = self._split(req)
        if req.direction is Direction.TO_CRM:
            after = 0
            while True:
                if after and enough():
                    raise _Enough
                rows = await asyncio.to_thread(
                    self._read,
                    requeue.local_page,
                    spec,
                    after=after,
                    limit=LOCAL_PAGE,
                    since=req.since,
                    until=req.until,
                    ids=local_ids,
                )
                if not rows:
                    return
                after = rows[-1]["id"]
                wanted = [str(r["crm_id"]).lower() for r in rows if r.get("crm_id")]
                theirs: dict[str, dict[str, Any]] = {}
                for i in range(0, len(wanted), BY_ID):
                    theirs.update(
                        await self.puller.read_by_ids(spec, wanted[i : i + BY_ID], select)
                    )
                yield rows, theirs
                if len(rows) < LOCAL_PAGE:
                    return
        if req.ids:
            wanted = crm_ids + await asyncio.to_thread(self._crm_ids_of, spec, local_ids)
            for i in range(0, len(wanted), BY_ID):
                if i and enough():
                    raise _Enough
                found = await self.puller.read_by_ids(spec, wanted[i : i + BY_ID], select)
                mine = await asyncio.to_thread(
                    self._read, requeue.rows_by_crm_id, spec, list(found)
                )
                yield list(mine.values()), found
            return
        pages = cast(
            AsyncGenerator[Page],
            self.client.query(
                spec.entity_set,
                select=select,
                filter=modified_filter(req.since, req.until),
                page_size=DYNAMICS_PAGE,
            ),
        )
        try:
            async for page in pages:
                await self.puller.job_pace()  # before the next page is asked for
                found = {str(r[spec.primary_key]).lower(): r for r in page.rows}
                mine = await asyncio.to_thread(
                    self._read, requeue.rows_by_crm_id, spec, list(found)
                )
                yield list(mine.values()), found
                if page.next_link is not None and enough():
                    raise _Enough
        finally:
            await pages.aclose()

    def _crm_ids_of(self, spec: ObjectSpec, ids: Sequence[int]) -> list[str]:
        out: list[str] = []
        after = 0
        while ids:
            rows = self._read(requeue.local_page, spec, after=after, limit=LOCAL_PAGE, ids=ids)
            out += [str(r["crm_id"]).lower() for r in rows if r.get("crm_id")]
            if len(rows) < LOCAL_PAGE:
                break
            after = rows[-1]["id"]
        return out

    # --- the job --------------------------------------------------------------------------

    def _advance(self, conn: Connection, job: Job, position: dict[str, Any], done: int) -> None:
        if not jobs.advance(conn, job, self.worker, position, done=done, lease=self.lease):
            raise Lost("the job is no longer this process's")

    def _check_cancel(self, job: Job) -> None:
        if jobs.cancel_requested(self.engine, job.id):
            raise Cancelled("cancelled")

    async def run(self, job: Job) -> dict[str, Any]:
        """Carry out a resync job from its saved position; returns ``{"queued"}`` (a
        dry-run job: the dry run's report)."""
        req = ResyncRequest.from_job(job)
        spec = self.specs[req.object]
        if req.dry_run:
            return await self._dry_run_job(job, req)
        if req.direction is Direction.TO_CRM:
            queued = await asyncio.to_thread(self._push_again, job, spec, req)
        else:
            queued = await self._pull_again(job, spec, req)
        return {"queued": queued}

    def _set_total(self, job: Job, position: dict[str, Any], total: int) -> None:
        with write_transaction(self.engine) as conn:
            jobs.advance(conn, job, self.worker, position, total=total, lease=self.lease)

    def _push_again(self, job: Job, spec: ObjectSpec, req: ResyncRequest) -> int:
        position = dict(job.position or {"after": 0, "queued": 0})
        local_ids, _ = self._split(req)
        if job.total is None:
            total = self._read(
                requeue.count_local, spec, since=req.since, until=req.until, ids=local_ids
            )
            self._set_total(job, position, total)
        while True:
            self._check_cancel(job)
            with write_transaction(self.engine) as conn:
                rows = requeue.local_page(
                    conn,
                    spec,
                    after=position["after"],
                    limit=LOCAL_PAGE,
                    since=req.since,
                    until=req.until,
                    ids=local_ids,
                )
                if not rows:
                    return int(position["queued"])
                refs = [LocalRef(r["id"], r.get("crm_id")) for r in rows]
                n = requeue.queue_again(conn, spec.name, to_crm=refs, now=utcnow(), job=job.id)
                position = {"after": rows[-1]["id"], "queued": position["queued"] + n}
                self._advance(conn, job, position, len(rows))
            if len(rows) < LOCAL_PAGE:
                return int(position["queued"])

    async def _pull_again(self, job: Job, spec: ObjectSpec, req: ResyncRequest) -> int:
        position = dict(job.position or {"next_link": None, "index": 0, "queued": 0})
        filter_field = self.puller._filter_for(spec)

        def advance_with(step: dict[str, Any]) -> Callable[[Connection, int, int], None]:
            # The position saved with a chunk counts the chunk's entries: a job resumed
            # after it reports every record it queued.
            def also(conn: Connection, records: int, staged: int) -> None:
                self._advance(conn, job, {**step, "queued": step["queued"] + staged}, records)

            return also

        if position.get("complete"):
            return int(position["queued"])
        if req.ids:
            local_ids, crm_ids = self._split(req)
            wanted = crm_ids + await asyncio.to_thread(self._crm_ids_of, spec, local_ids)
            if job.total is None:
                await asyncio.to_thread(self._set_total, job, position, len(wanted))
            for i in range(int(position["index"]), len(wanted), BY_ID):
                self._check_cancel(job)
                chunk = wanted[i : i + BY_ID]
                step = {**position, "index": i + len(chunk)}
                n = await self.puller.restage(
                    spec, chunk, Requeue(advance_with(step), resync=True, job=job.id)
                )
                position = {**step, "queued": position["queued"] + n}
            return int(position["queued"])
        pages = cast(
            AsyncGenerator[Page],
            self.client.query(
                spec.entity_set,
                select=ch.select_for(spec, filter_field),
                filter=modified_filter(req.since, req.until),
                page_size=DYNAMICS_PAGE,
                next_link=position.get("next_link"),
            ),
        )
        try:
            async for page in pages:
                await self.puller.job_pace()  # before the next page is asked for
                self._check_cancel(job)
                step = {**position, "next_link": page.next_link, "complete": page.next_link is None}
                n = await asyncio.to_thread(
                    self.puller._stage_page,
                    spec,
                    ChangePage(rows=page.rows),
                    filter_field,
                    None,
                    utcnow(),
                    force=True,
                    requeue=Requeue(advance_with(step), resync=True, job=job.id),
                )
                position = {**step, "queued": position["queued"] + n}
        finally:
            await pages.aclose()
        return int(position["queued"])
