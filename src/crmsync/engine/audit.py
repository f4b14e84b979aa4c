"""The drift audit: do both sides agree, record by record? (and, asked to, repair them)

Cheap on Dynamics: it pages only ids and versions (``$select`` of the key,
``versionnumber``, ``modifiedon``; 5,000 a page). Each page is compared with the store
(``store/audit.page_local``, which clears the unmoved rows in SQL; ``PARTS`` side by
side) while the next is read; only records whose version or local values moved since the
last sync are read in full, 50 ids a request gathered over up to 10 pages, and compared
field by field (``engine/compare.py``). Then the pages' ids are saved
(``store/audit.save_seen``) with the position, which carries the figures, so a crash
resumes there. Local records Dynamics did not return are found last
(``store/audit.only_local``). ``repair`` queues fixes through ``requeue.queue_again`` by
flow and rules: a local change is pushed (a Dynamics change beside it meets If-Match and
the rules), a Dynamics change is applied, a record deleted on one side is deleted on the
other (synced before) or created there (never synced).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from crmsync.domain import DriftKind, ObjectSpec, Operation
from crmsync.dynamics.pages import Page
from crmsync.engine import changes as ch
from crmsync.engine.compare import compare_record, differs_from_base
from crmsync.engine.pull import Puller, Requeue, entry_row
from crmsync.store import audit as store_audit
from crmsync.store import capture, jobs, requeue
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.types import utcnow
from crmsync.values import Job, Known, LocalRef, parse_time

if TYPE_CHECKING:  # the engine passes the store's handle on; it runs no SQL
    from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

PAGE = 5_000
SAMPLES = 10
FULL_READ = 50  # ids a request when records are read in full
# Pages whose moved records wait to be read in full together (FULL_READ a request
# rather than a request a page): the position is saved when they are, so a crash
# reads at most these pages' ids again.
UNSAVED_PAGES = 10
# A page is matched with the store in this many parts side by side, each in its own
# snapshot, and the only-local pass reads the rest of the table in as many id ranges.
PARTS = 2


# A part of a page matched with the store: the local rows to read in full, the local ids
# of those whose values moved, the ids only Dynamics holds (with the local id last synced).
Matched = tuple[list[dict[str, Any]], set[int], dict[str, int | None]]


class Cancelled(Exception):
    """The job was cancelled between two pages."""


class Lost(Exception):
    """Another process holds the job now (this one's lease ran out): stop, undo the page."""


@dataclass
class Findings:
    """One object's audit figures as they add up."""

    object: str
    checked: int = 0
    only_local: int = 0
    only_dynamics: int = 0
    different: int = 0
    repaired: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, kind: DriftKind, **what: Any) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append({"kind": str(kind), **what})

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "only_local": self.only_local,
            "only_dynamics": self.only_dynamics,
            "different": self.different,
            "repaired": self.repaired,
            "samples": list(self.samples),
        }

    @classmethod
    def resumed(cls, obj: str, saved: dict[str, Any] | None) -> Findings:
        """The figures saved with a job's position (a resumed audit goes on from them)."""
        return cls(obj, **(saved or {}))


def version_moved(row: dict[str, Any]) -> bool:
    """Whether Dynamics' version of a record differs from the one last synced."""
    synced = row.get("_synced_version") or ch.version_of(row.get("_etag"))
    return synced is None or row.get("_seen") is None or int(row["_seen"]) != int(synced)


def ids_and_versions(
    key: str, filter_field: str | None, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A page of the first pass as ``save_seen`` keeps it: ``crm_id`` (lower case),
    ``version``, ``excluded`` (by the sync filter)."""
    out = []
    for row in rows:
        version = row.get(ch.VERSION)
        out.append(
            {
                "crm_id": str(row[key]).lower(),
                # Dataverse sends versionnumber as a number: the parse only for the rest.
                "version": version if type(version) is int else ch.row_version(row),
                "excluded": filter_field is not None and row.get(filter_field) is False,
            }
        )
    return out


def moved(
    spec: ObjectSpec, rows: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], set[int]]:
    """Of a page's local rows (as ``page_local`` returns them, with the version
    Dynamics returned as ``_seen``), those whose local values or Dynamics version moved
    since the last sync, and the local ids of those whose local values moved."""
    moved_locally: set[int] = set()
    candidates = []
    for row in rows:
        local_moved = bool(differs_from_base(spec, row, row["_synced"]))
        if local_moved:
            moved_locally.add(row["id"])
        if local_moved or version_moved(row):
            candidates.append(row)
    return candidates, moved_locally


@dataclass
class Unread:
    """The pages scanned since the position was last saved: their ids and versions (to
    be saved with the position: a page's random ids dirty most of the index they go
    into, and ten pages at a time rewrite it less often), their records to read in
    full, and the position saved (renewed with the lease meanwhile)."""

    saved: dict[str, Any]
    seen: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    moved_locally: set[int] = field(default_factory=set)
    pages: int = 0
    done: int = 0
    # The last save, still being written while the next page is matched (a read); every
    # write of the scan waits for it first, so saves and the lease's renewals keep order.
    writing: asyncio.Task[None] | None = None

    async def written(self) -> None:
        """Wait for the last save (its error, if any, is raised here)."""
        task, self.writing = self.writing, None
        if task is not None:
            await task

    def add(
        self, seen: list[dict[str, Any]], rows: list[dict[str, Any]], moved_locally: set[int]
    ) -> None:
        self.seen += seen
        self.rows += rows
        self.moved_locally |= moved_locally
        self.pages += 1
        self.done += len(seen)

    def due(self, last: bool) -> bool:
        return last or len(self.rows) >= FULL_READ or self.pages >= UNSAVED_PAGES

    def saving(self, position: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """Start over from ``position`` (being saved); returns the ids and versions to
        save with it, and how many."""
        seen, done = self.seen, self.done
        self.saved, self.pages, self.done = position, 0, 0
        self.seen, self.rows, self.moved_locally = [], [], set()
        return seen, done


class Auditor:
    """Runs audit jobs with one worker's client and puller."""

    def __init__(
        self,
        engine: Engine,
        puller: Puller,
        worker: str,
        lease: timedelta,
        progress: Callable[[Job], None] | None = None,
    ) -> None:
        self.engine = engine
        self.puller = puller
        self.client = puller.client
        self.specs = puller.specs
        self.worker = worker
        self.lease = lease
        self.progress = progress

    def _advance(self, conn: Connection, job: Job, position: dict[str, Any], done: int) -> None:
        if not jobs.advance(conn, job, self.worker, position, done=done, lease=self.lease):
            raise Lost("the job is no longer this process's")

    def _check_cancel(self, job: Job) -> None:
        if jobs.cancel_requested(self.engine, job.id):
            raise Cancelled("cancelled")

    async def run(self, job: Job) -> dict[str, Any]:
        """Audit ``job.object`` (or every mapped object); returns the findings by object."""
        repair = bool(job.params.get("repair"))
        names = [job.object] if job.object else list(self.specs)
        position = dict(job.position or {})
        finished: list[str] = list(position.get("finished", []))
        out: dict[str, Any] = dict(position.get("results", {}))
        for name in names:
            if name in finished:
                continue
            spec = self.specs[name]
            if position.get("object") != name:
                position = {
                    "object": name,
                    "phase": "scan",
                    "next_link": None,
                    "started_at": utcnow().isoformat(),
                    "finished": finished,
                    "results": out,
                }
            findings = Findings.resumed(name, position.get("findings"))
            if position["phase"] == "scan":
                await self._scan(job, spec, position, repair, findings)
            started = parse_time(position["started_at"]) or utcnow()
            await self._compare(job, spec, repair, findings, started)
            result = {
                "object": name,
                "job_id": job.id,
                "checked": findings.checked,
                "only_local": findings.only_local,
                "only_dynamics": findings.only_dynamics,
                "different": findings.different,
                "repaired": findings.repaired,
                "samples": findings.samples,
                "started_at": started,
                "finished_at": utcnow(),
            }
            finished.append(name)
            out[name] = {
                k: (v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v)
                for k, v in result.items()
            }
            position = {"object": None, "finished": finished, "results": out}

            def save(result: dict[str, Any] = result, position: dict[str, Any] = position) -> None:
                with write_transaction(self.engine) as conn:
                    store_audit.save_result(conn, result)
                    self._advance(conn, job, position, 0)

            await asyncio.to_thread(save)
            log.info(
                "audit finished",
                extra={
                    "event": "audit.object",
                    "object": name,
                    "checked": findings.checked,
                    "only_local": findings.only_local,
                    "only_dynamics": findings.only_dynamics,
                    "different": findings.different,
                    "repaired": findings.repaired,
                },
            )
        return out  # what the pass saved is dropped as the job ends (``jobs.finish``)

    # --- the first pass: ids and versions -------------------------------------------------

    async def _scan(
        self, job: Job, spec: ObjectSpec, position: dict[str, Any], repair: bool, found: Findings
    ) -> None:
        """Page Dynamics' ids and versions; each page is compared with the store (and its
        repairs queued) while the next one is read, and its end saved as the position."""
        filter_field = self.puller._filter_for(spec)
        select = [spec.primary_key, ch.VERSION, ch.MODIFIED_ON]
        if filter_field:
            select.append(filter_field)
        pages = cast(
            AsyncGenerator[Page],
            self.client.query(
                spec.entity_set, select=select, page_size=PAGE, next_link=position["next_link"]
            ),
        )
        task: asyncio.Task[None] | None = None
        unread = Unread(dict(position))
        try:
            async for page in pages:
                await self.puller.job_pace()  # before the next page is asked for
                if task is not None:
                    await task
                    self._report(job)
                seen = ids_and_versions(spec.primary_key, filter_field, page.rows)
                position["next_link"] = page.next_link
                if page.next_link is None:
                    position["phase"] = "compare"
                step = dict(position)
                task = asyncio.create_task(self._page(job, spec, seen, step, repair, found, unread))
        finally:
            await pages.aclose()
            # Neither the last page nor its save is left running (the page first: it
            # may start a save); an error the loop raised comes before theirs.
            errors = [await _settled(task), await _settled(unread.writing)]
            unread.writing = None
        for error in errors:
            if error is not None:
                raise error
        position["phase"] = "compare"

    def _before_match(self, job: Job) -> None:
        self._check_cancel(job)
        # What capture logged meanwhile is the sync's to send, not drift: folded into the
        # queue entries the comparison leaves out (and what a fold still misses, the store
        # leaves out too), so that the log the comparison probes stays short.
        capture.fold_pending(self.engine, wait=False)

    def _match(self, spec: ObjectSpec, versions: dict[str, int | None]) -> Matched:
        """Match ids and versions with the store: the local rows to read in full (and
        which of them moved locally), the ids only Dynamics holds."""
        # One snapshot: a row, its sync state and its queue entries as of one moment.
        with read_transaction(self.engine) as conn:
            rows, missing = store_audit.page_local(conn, spec, versions)
            candidates, moved_locally = moved(spec, rows)
            known = store_audit.on_their_way(conn, spec, candidates)
        return [r for r in candidates if r["crm_id"] not in known], moved_locally, missing

    async def _match_page(self, job: Job, spec: ObjectSpec, seen: list[dict[str, Any]]) -> Matched:
        """``_match`` for a page, its parts side by side, put back together in order."""
        await asyncio.to_thread(self._before_match, job)
        versions = list({r["crm_id"]: r["version"] for r in seen if not r["excluded"]}.items())
        size = max(1, -(-len(versions) // PARTS))
        parts = await asyncio.gather(
            *(
                asyncio.to_thread(self._match, spec, dict(versions[i : i + size]))
                for i in range(0, max(1, len(versions)), size)
            )
        )
        candidates = [row for part in parts for row in part[0]]
        moved_locally = {record_id for part in parts for record_id in part[1]}
        missing = {crm_id: record_id for part in parts for crm_id, record_id in part[2].items()}
        return candidates, moved_locally, missing

    async def _page(
        self,
        job: Job,
        spec: ObjectSpec,
        seen: list[dict[str, Any]],
        position: dict[str, Any],
        repair: bool,
        found: Findings,
        unread: Unread,
    ) -> None:
        candidates, moved_locally, missing = await self._match_page(job, spec, seen)
        await unread.written()
        found.only_dynamics += len(missing)
        for crm_id, record_id in missing.items():
            found.sample(DriftKind.ONLY_DYNAMICS, crm_id=crm_id, record_id=record_id)
        if repair and missing:
            deletes = [
                LocalRef(record_id, crm_id, deleted=True)
                for crm_id, record_id in missing.items()
                if record_id is not None and spec.flow.pushes
            ]
            inserts = [
                c for c, record_id in missing.items() if record_id is None and spec.flow.pulls
            ]
            found.repaired += await asyncio.to_thread(self._queue, spec, deletes)
            found.repaired += await self._stage(spec, inserts)
        unread.add(seen, candidates, moved_locally)
        if not unread.due(last=position["phase"] == "compare"):
            saved = unread.saved

            def renew() -> None:  # the lease; the position stays where it was saved
                with write_transaction(self.engine) as conn:
                    self._advance(conn, job, saved, 0)

            await asyncio.to_thread(renew)
            return
        if unread.rows:
            await self._compare_in_full(
                spec, unread.rows, self._full_select(spec), unread.moved_locally, repair, found
            )
        position["findings"] = found.as_json()
        ids, done = unread.saving(position)

        def save() -> None:
            with write_transaction(self.engine) as conn:
                store_audit.save_seen(conn, job.id, spec.name, ids)
                self._advance(conn, job, position, done)

        unread.writing = asyncio.create_task(asyncio.to_thread(save))

    def _full_select(self, spec: ObjectSpec) -> list[str]:
        select = ch.select_for(spec, None)
        select += [a for a in spec.fields.values() if a not in select]
        return select + [
            lk.value_attribute for lk in spec.lookups if lk.value_attribute not in select
        ]

    def _report(self, job: Job) -> None:
        if self.progress is not None:
            self.progress(job)

    # --- the comparison -----------------------------------------------------------------

    async def _compare(
        self, job: Job, spec: ObjectSpec, repair: bool, found: Findings, started: datetime
    ) -> None:
        """After the first pass: the local records Dynamics did not return (but for those
        synced since the pass started)."""
        await asyncio.to_thread(store_audit.analyse_seen, self.engine)
        await self._only_local(job, spec, repair, found, started)
        seen = await asyncio.to_thread(self._read, store_audit.count_seen, job.id, spec.name)
        found.checked = int(seen) + found.only_local

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.engine.connect() as conn:
            return fn(conn, *args)

    def _queue(self, spec: ObjectSpec, refs: Sequence[LocalRef]) -> int:
        if not refs:
            return 0
        with write_transaction(self.engine) as conn:
            return requeue.queue_again(conn, spec.name, to_crm=refs, now=utcnow(), actor="audit")

    async def _stage(self, spec: ObjectSpec, crm_ids: Sequence[str], resync: bool = False) -> int:
        if not crm_ids:
            return 0
        return await self.puller.restage(
            spec, crm_ids, Requeue(also=lambda conn, n, staged: None, resync=resync, actor="audit")
        )

    async def _only_local(
        self, job: Job, spec: ObjectSpec, repair: bool, found: Findings, started: datetime
    ) -> None:
        after, parts = 0, PARTS
        while True:
            self._check_cancel(job)
            await asyncio.to_thread(capture.fold_pending, self.engine, wait=False)
            page, full = await self._only_local_page(job, spec, after, started, parts)
            if full:  # dense: the next range's read would be thrown away page after page
                parts = 1
            if not page:
                return
            after = page[-1]["id"]
            found.only_local += len(page)
            for row in page:
                found.sample(DriftKind.ONLY_LOCAL, crm_id=row["crm_id"], record_id=row["id"])
            if repair:
                gone = [r for r in page if r["synced"] and r["crm_id"] and spec.flow.pulls]
                pushes = [
                    LocalRef(r["id"], r["crm_id"])
                    for r in page
                    if spec.flow.pushes and r not in gone
                ]
                found.repaired += await asyncio.to_thread(self._queue, spec, pushes)
                found.repaired += await asyncio.to_thread(self._stage_deletes, spec, gone)
            if len(page) < PAGE:
                return

    async def _only_local_page(
        self, job: Job, spec: ObjectSpec, after: int, started: datetime, ranges: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """``store_audit.only_local`` after ``after``, a page: the first ``PAGE`` rows of
        ``ranges`` ranges' pages, read side by side, in id order (the last range is open,
        for the rows written since the highest id was read); and whether the first range
        alone filled the page."""
        last = await asyncio.to_thread(self._read, store_audit.last_id, spec)
        step = (last - after) // ranges
        bounds = [after + step * k for k in range(ranges)] if step >= PAGE else [after]
        uptos: list[int | None] = [*bounds[1:], None]
        parts = await asyncio.gather(
            *(
                asyncio.to_thread(
                    self._read, store_audit.only_local, job.id, spec, low, PAGE, started, upto
                )
                for low, upto in zip(bounds, uptos, strict=True)
            )
        )
        return [row for part in parts for row in part][:PAGE], len(parts[0]) == PAGE

    def _stage_deletes(self, spec: ObjectSpec, rows: Sequence[dict[str, Any]]) -> int:
        """Deletions Dynamics made that the sync never saw, staged to be applied."""
        if not rows:
            return 0
        now = utcnow()
        entries = [
            entry_row(spec, ch.deleted(r["crm_id"]), Operation.DELETE, Known(r["id"]), now)
            for r in rows
        ]
        with write_transaction(self.engine) as conn:
            return requeue.queue_again(conn, spec.name, from_crm=entries, now=now, actor="audit")

    async def _compare_in_full(
        self,
        spec: ObjectSpec,
        rows: list[dict[str, Any]],
        select: list[str],
        moved_locally: set[int],
        repair: bool,
        found: Findings,
    ) -> None:
        parents = await asyncio.to_thread(self._read, requeue.parent_ids, self.specs, spec, rows)
        pushes: list[LocalRef] = []
        pulls: list[str] = []
        overwrite: list[str] = []  # a local change of a record only Dynamics writes
        for i in range(0, len(rows), FULL_READ):
            chunk = rows[i : i + FULL_READ]
            full = await self.puller.read_by_ids(
                spec, [str(r["crm_id"]).lower() for r in chunk], select
            )
            for row in chunk:
                theirs = full.get(str(row["crm_id"]).lower())
                if theirs is None:
                    continue  # deleted since the first pass: the next audit sees it
                diffs = compare_record(spec, row, theirs, parents)
                if not diffs:
                    continue
                found.different += 1
                found.sample(
                    DriftKind.DIFFERENT,
                    crm_id=str(row["crm_id"]).lower(),
                    record_id=row["id"],
                    fields=[d.as_json() for d in diffs],
                )
                local = row["id"] in moved_locally
                if (local and spec.flow.pushes) or not spec.flow.pulls:
                    pushes.append(LocalRef(row["id"], row["crm_id"]))
                elif local:
                    overwrite.append(str(row["crm_id"]).lower())
                else:
                    pulls.append(str(row["crm_id"]).lower())
        if repair:
            found.repaired += await asyncio.to_thread(self._queue, spec, pushes)
            found.repaired += await self._stage(spec, pulls)
            found.repaired += await self._stage(spec, overwrite, resync=True)


async def _settled(task: asyncio.Task[None] | None) -> Exception | None:
    """Wait for ``task``; its error, taken (not raised)."""
    if task is None:
        return None
    try:
        await task
    except Exception as e:  # handed to the caller, raised there
        return e
    return None
