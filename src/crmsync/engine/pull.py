"""Pull: read Dynamics' changes per object and stage them as ``from_crm`` queue entries.

Each object keeps a change-tracking delta link. With none, the pull is a full read (every
row, ``Prefer: odata.track-changes``, ``@odata.nextLink`` paging, ending with a delta
link); a link Dynamics no longer honours (``DeltaTokenExpired``) starts a reconciliation:
the same full read, staging only what differs, then deletions for the local records it did
not return.

Every page is staged in ONE transaction, and the delta link is saved in the transaction of
the last page: a change is either staged or still ahead of the saved link. Staging never
replaces a newer change by an older one, so concurrent or repeated pulls duplicate nothing.
A synced record the sync filter excludes is remembered as excluded and its waiting changes
dropped; included again, its change is staged with ``rejoin`` for the apply to settle.
Nothing is read while the object's ``from_crm`` direction is paused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from crmsync.config import Settings
from crmsync.domain import Direction, EntryState, ObjectSpec, Operation
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.faults import DeltaTokenExpired, MissingAttribute
from crmsync.dynamics.pages import ChangePage
from crmsync.engine import changes as ch
from crmsync.engine import load
from crmsync.engine.throttle import Pacer
from crmsync.errors import CrmsyncError, RecordRejected
from crmsync.store import inbound, jobs, queue
from crmsync.store import requeue as requeued
from crmsync.store.capture import LABEL_MAX
from crmsync.store.db import write_transaction
from crmsync.store.types import utcnow

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]
# After a reconciliation, an audit with repair of the object, at most this often.
RECONCILE_AUDIT_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class Requeue:
    """A page staged again by a resync or a repair: ``also(conn, records, staged)`` runs
    in its transaction (the job's ``advance``: the records read, the entries staged);
    ``resync`` marks the changes to be applied over the local values."""

    also: Callable[[Connection, int, int], None]
    resync: bool = False
    actor: str | None = None  # who asked, for the records' history
    job: int | None = None


@dataclass
class PullStats:
    read: int = 0
    staged: int = 0
    full_reads: int = 0
    reconciliations: int = 0
    deletions_detected: int = 0
    by_object: dict[str, int] = field(default_factory=dict)


def load_parents(
    conn: Connection,
    specs: Mapping[str, ObjectSpec],
    spec: ObjectSpec,
    changes: Iterable[ch.Change],
) -> dict[tuple[str, str], int]:
    """(target object, Dynamics id) -> local id, for the lookups these changes carry."""
    wanted: dict[str, set[str]] = {}
    targets = {lk.column: lk.target for lk in spec.lookups}
    for c in changes:
        for column, crm_id in c.lookups.items():
            if crm_id is not None:
                wanted.setdefault(targets[column], set()).add(crm_id)
    return inbound.local_parents(conn, specs, wanted)


def entry_row(
    spec: ObjectSpec, change: ch.Change, operation: Operation, known: ch.Known | None, now: datetime
) -> dict[str, Any]:
    if known is not None and known.excluded and operation == Operation.UPDATE:
        change = replace(change, rejoin=True)
    label = change.values.get(spec.label_column)
    return {
        "object": spec.name,
        "direction": Direction.FROM_CRM,
        "record_key": change.crm_id,
        "record_id": known.record_id if known else None,
        "crm_id": change.crm_id,
        "operation": operation,
        "label": str(label)[:LABEL_MAX] if label is not None else None,
        "payload": change.payload(),
        "state": EntryState.PENDING,
        "first_queued_at": now,
        "last_changed_at": now,
        "version": 1,
        "attempts": 0,
        "next_attempt_at": now,
    }


class Puller:
    """Pulls every object that pulls; one per worker process, sharing its client."""

    def __init__(
        self,
        engine: Engine,
        client: DataverseClient,
        settings: Settings,
        *,
        page_size: int = 5000,
        progress: Progress | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.specs = settings.object_specs()
        self.order = ch.pull_order(self.specs)
        self.objects = [s.name for s in self.order]
        self.page_size = page_size
        self.progress = progress
        self.stats = PullStats()
        self.own_user: str | None = None
        # Spaces the requests of resyncs and audits (``read_by_ids`` and their pages).
        self.job_pace = Pacer(settings.job_request_share)
        # Objects whose Dynamics table has no sync filter column (the filter is one
        # setting; Dataverse refuses to select a column a table lacks).
        self._unfiltered: set[str] = set()

    async def pull_all(self) -> int:
        staged = 0
        for spec in self.order:
            staged += await self.pull(spec.name)
        return staged

    async def pull(self, obj: str) -> int:
        """Read and stage one object's changes; returns how many entries were staged.

        Nothing is read while the object's ``from_crm`` direction is paused: Dynamics
        keeps the changes, and the saved delta link picks them up after the resume."""
        spec = self.specs[obj]
        if await asyncio.to_thread(self._paused, obj):
            return 0
        if self.own_user is None:
            self.own_user = await self.client.whoami()
        link = await asyncio.to_thread(self._cursor, obj)
        try:
            return await self._read(spec, link)
        except DeltaTokenExpired:
            log.warning(
                "delta token expired; reconciling",
                extra={"event": "pull.reconcile", "object": obj},
            )
            self.stats.reconciliations += 1
            staged = await self._read(spec, None)
            # What the full read cannot see (local changes made meanwhile with capture
            # off) the audit finds: it shows on Sync Status as an audit with repair.
            await asyncio.to_thread(
                jobs.audit_after_reconciling, self.engine, obj, RECONCILE_AUDIT_EVERY
            )
            return staged

    def _paused(self, obj: str) -> bool:
        return inbound.paused(self.engine, obj)

    def _cursor(self, obj: str) -> str | None:
        return inbound.cursor(self.engine, obj)

    def _filter_for(self, spec: ObjectSpec) -> str | None:
        if spec.name in self._unfiltered:
            return None
        return spec.filter_field(self.settings.sync_filter_field)

    async def _read(self, spec: ObjectSpec, link: str | None) -> int:
        full = link is None
        if full:
            self.stats.full_reads += 1
        started_at = utcnow()
        seen: set[str] = set()
        staged = 0
        filter_field = self._filter_for(spec)
        pages = cast(
            AsyncGenerator[ChangePage],
            self.client.changes(
                spec.entity_set,
                select=ch.select_for(spec, filter_field),
                delta_link=link,
                page_size=self.page_size,
            ),
        )
        task: asyncio.Task[int] | None = None
        try:
            async for page in pages:
                if task is not None:
                    staged += await task
                task = asyncio.create_task(
                    asyncio.to_thread(
                        self._stage_page,
                        spec,
                        page,
                        filter_field,
                        seen if full else None,
                        started_at,
                    )
                )
        except (RecordRejected, MissingAttribute) as exc:
            if task is not None:
                await task
            if (
                filter_field
                and filter_field in exc.message
                and spec.sync_filter_field is None
                and spec.name not in self._unfiltered
            ):
                # This table lacks the setting's sync filter column: pull it unfiltered
                # (an object's own filter missing is a mismatch with its mapping).
                self._unfiltered.add(spec.name)
                return staged + await self._read(spec, link)
            raise
        finally:
            await pages.aclose()
        if task is not None:
            staged += await task
        self.stats.staged += staged
        return staged

    async def restage(
        self, spec: ObjectSpec, crm_ids: Sequence[str], requeue: Requeue, chunk: int = 50
    ) -> int:
        """Read these records of ``spec`` in full (``chunk`` ids a request) and stage them
        again through ``requeue``: the ones Dynamics no longer holds as deletions. Returns
        how many entries were staged."""
        filter_field = self._filter_for(spec)
        select = ch.select_for(spec, filter_field)
        staged = 0
        for i in range(0, len(crm_ids), chunk):
            wanted = [c.lower() for c in crm_ids[i : i + chunk]]
            found = await self.read_by_ids(spec, wanted, select)
            gone = [c for c in wanted if c not in found]
            page = ChangePage(rows=list(found.values()), deleted_ids=gone)
            staged += await asyncio.to_thread(
                self._stage_page,
                spec,
                page,
                filter_field,
                None,
                utcnow(),
                force=True,
                requeue=requeue,
            )
        return staged

    async def read_by_ids(
        self, spec: ObjectSpec, crm_ids: Sequence[str], select: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The records of these ids Dynamics holds, by lower-case id (one request: the
        ``In`` query function, filter-rows.md)."""
        if not crm_ids:
            return {}
        values = ",".join(f"'{c}'" for c in crm_ids if ch.is_guid(c))
        where = (
            f"Microsoft.Dynamics.CRM.In(PropertyName='{spec.primary_key}',"
            f"PropertyValues=[{values}])"
        )
        out: dict[str, dict[str, Any]] = {}
        await self.job_pace()
        async for page in self.client.query(
            spec.entity_set, select=select, filter=where, page_size=self.page_size
        ):
            for row in page.rows:
                out[str(row[spec.primary_key]).lower()] = row
        return out

    async def refetch(self, stale: Sequence[tuple[str, str]]) -> None:
        """Read and stage records that Dynamics refused to update because they changed
        there since their last sync (a 412 on If-Match): applying them resolves the
        conflicts and moves the record's ETag on, so that the push can go again."""
        by_object: dict[str, list[str]] = {}
        for obj, crm_id in stale:
            by_object.setdefault(obj, []).append(crm_id)
        for obj, crm_ids in by_object.items():
            spec = self.specs[obj]
            if not spec.flow.pulls or await asyncio.to_thread(self._paused, obj):
                # Paused: the push stays deferred until the pull may read again.
                continue
            filter_field = self._filter_for(spec)
            select = ch.select_for(spec, filter_field)
            found: list[dict[str, Any]] = []
            gone: list[str] = []
            try:
                for crm_id in crm_ids:
                    row = await self.client.get(spec.entity_set, crm_id, select=select)
                    if row is None:
                        gone.append(crm_id)
                    else:
                        found.append(row)
            except CrmsyncError as exc:
                # The push is deferred, not failed: it asks again on its next try.
                log.warning(
                    "refetch failed", extra={"event": "pull.refetch_failed", "error": str(exc)}
                )
                continue
            page = ChangePage(rows=found, deleted_ids=gone)
            await asyncio.to_thread(
                self._stage_page, spec, page, filter_field, None, utcnow(), force=True
            )

    def _stage_page(
        self,
        spec: ObjectSpec,
        page: ChangePage,
        filter_field: str | None,
        seen: set[str] | None,
        started_at: datetime,
        *,
        force: bool = False,
        requeue: Requeue | None = None,
    ) -> int:
        """Stage one page in one transaction. ``requeue``: a resync's or a repair's page,
        staged through ``requeue.queue_again`` (``resync``: to be applied over the local
        values) with its job's ``advance`` in the same transaction."""
        now = utcnow()
        rows: list[dict[str, Any]] = []
        with write_transaction(self.engine) as conn:
            loaded = load.Loaded([], page.rows)
            if seen is not None:
                # A full read: what the store has never seen is inserted as it is, and
                # what it holds at the version read needs nothing (a reconciliation).
                loaded = load.insert_new(conn, self.specs, spec, page.rows, filter_field, now)
                seen.update(loaded.inserted)
                seen.update(loaded.settled)
            found = ch.read_rows(spec, loaded.rest, filter_field)
            found += [ch.deleted(i) for i in page.deleted_ids]
            # A deletion of a record whose insert is staged but not applied yet is staged
            # too, taking the insert's place. Read before ``load_known``: an apply that
            # commits in between has then made the record a local row it sees.
            staged = inbound.load_staged(conn, spec, [c.crm_id for c in found if c.deleted])
            known = inbound.load_known(conn, spec, [c.crm_id for c in found])
            unknown = [c.crm_id for c in found if c.crm_id not in known]
            buried = inbound.load_buried(conn, spec, unknown)
            parents = load_parents(conn, self.specs, spec, found)
            excluded: dict[str, ch.Known] = {}
            changed: dict[str, dict[str, list[str]]] = {}
            for change in found:
                k = known.get(change.crm_id)
                if change.excluded and k is not None:
                    excluded[change.crm_id] = k
                op = ch.stage_operation(
                    spec,
                    change,
                    k,
                    parents,
                    None if force else self.own_user,
                    buried=change.crm_id in buried,
                )
                if op is None and change.deleted and k is None and change.crm_id in staged:
                    op = Operation.DELETE
                if (
                    op is None
                    and force
                    and k is not None
                    and not (change.deleted or change.excluded)
                ):
                    # Newer in Dynamics than our last sync, whatever its values: applying
                    # it is what moves the record's ETag on for the waiting push.
                    op = Operation.UPDATE
                own = self.own_user is not None and change.modified_by == self.own_user
                if force and op is Operation.UPDATE and own:
                    change = replace(change, own_write=True)
                if requeue is not None and requeue.resync and not change.deleted:
                    change = replace(change, resync=True)
                if op is not None:
                    rows.append(entry_row(spec, change, op, k, now))
                    changed[change.crm_id] = ch.changed_fields(spec, change, k, parents)
            if seen is not None:
                seen.update(c.crm_id for c in found)
            if page.delta_link is not None and seen is not None:
                # The full read is complete: what it did not return is gone.
                gone = inbound.vanished(conn, spec, seen, started_at)
                rows += [
                    entry_row(spec, ch.deleted(crm_id), Operation.DELETE, ch.Known(record_id), now)
                    for record_id, crm_id in gone
                ]
                self.stats.deletions_detected += len(gone)
            inbound.exclude(conn, spec, excluded, now)
            if requeue is None:
                inbound.stage(conn, rows, changed, now)
            else:
                requeued.queue_again(
                    conn,
                    spec.name,
                    from_crm=rows,
                    now=now,
                    actor=requeue.actor,
                    job=requeue.job,
                )
                requeue.also(conn, len(page.rows) + len(page.deleted_ids), len(rows))
            if page.delta_link is not None:
                inbound.save_cursor(conn, spec.name, page.delta_link, now)
                # Read to the end: a failure of the whole object's pull is over.
                queue.resolve_object(conn, spec.name, Direction.FROM_CRM, now)
        read = len(found) + len(loaded.inserted) + len(loaded.settled)
        self.stats.read += read
        self.stats.by_object[spec.name] = self.stats.by_object.get(spec.name, 0) + read
        if self.progress is not None and seen is not None:
            self.progress(spec.name, read)
        return len(rows)
