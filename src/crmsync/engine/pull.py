"""Pull: read Dynamics' changes per object and stage them as ``from_crm`` queue entries.

Each object keeps a change-tracking delta link in ``sync_cursor``. With none (the first
run) the pull is a full initial load: every row, read with ``Prefer:
odata.track-changes`` and ``@odata.nextLink`` paging, ending with a delta link. A delta
link Dynamics no longer honours (``DeltaTokenExpired``) triggers a full reconciliation:
the same full read, staging only what differs, then staging deletions for local records
that Dynamics no longer has.

Every page is staged in one transaction, and the delta link is saved in the transaction
that stages the last page, so a change is either staged or still ahead of the saved
link: nothing is lost between. Staging coalesces with a pending entry of the same record
and never replaces a newer change by an older one (``versionnumber`` decides), so two
workers pulling at once, or a pull that re-reads what it already staged, duplicate
nothing. The next page is fetched while the previous one is being staged.

A synced record the sync filter field excludes is remembered as excluded
(``sync_record.excluded``, see ``exclude``) and its waiting Dynamics changes dropped; when
the filter includes it again its change is staged with the ``rejoin`` mark: the apply
settles what both sides changed meanwhile with the conflict rules (against the last
synced values), queues a push of what changed only locally, and clears the exclusion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.config import Settings
from crmsync.domain import ObjectSpec
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.faults import DeltaTokenExpired
from crmsync.dynamics.pages import ChangePage
from crmsync.engine import changes as ch
from crmsync.engine import load
from crmsync.errors import CrmsyncError, RecordRejected
from crmsync.store import queue
from crmsync.store.capture import LABEL_MAX
from crmsync.store.db import write_transaction
from crmsync.store.local_tables import local_table
from crmsync.store.schema import (
    sync_change,
    sync_cursor,
    sync_queue,
    sync_record,
    sync_tombstone,
)
from crmsync.store.types import utcnow

log = logging.getLogger(__name__)

# A delete sorts after every version: nothing staged later may replace it.
_AFTER_ALL = 1e18

Progress = Callable[[str, int], None]


@dataclass
class PullStats:
    read: int = 0
    staged: int = 0
    full_reads: int = 0
    reconciliations: int = 0
    deletions_detected: int = 0
    by_object: dict[str, int] = field(default_factory=dict)


def read_cursor(conn: Connection, obj: str) -> str | None:
    link = conn.execute(
        sa.select(sync_cursor.c.delta_link).where(sync_cursor.c.object == obj)
    ).scalar()
    return str(link) if link else None


def save_cursor(conn: Connection, obj: str, link: str | None, now: datetime) -> None:
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_cursor)
    conn.execute(
        insert.values(object=obj, delta_link=link, updated_at=now).on_conflict_do_update(
            index_elements=["object"],
            set_={"delta_link": insert.excluded.delta_link, "updated_at": now},
        )
    )


def _marked(spec: ObjectSpec, table: sa.Table) -> sa.ColumnElement[bool]:
    # An attached table has no crm_deleted_at: its records are never marked.
    if not spec.timestamps:
        return sa.false()
    return table.c.crm_deleted_at.is_not(None)


def load_known(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> dict[str, ch.Known]:
    """What the store knows about these Dynamics ids: the local row holding the id, or a
    push in flight that chose it (its local row has no ``crm_id`` yet), and the sync
    state both sides last agreed on.

    One statement, so one snapshot: a push finishing meanwhile moves the id from its
    queue entry to its local row in one commit, and two reads (rows, then queue) on
    PostgreSQL could fall between and see it in neither place, taking crmsync's own
    record for a new one. The same holds the other way for a local delete (the row
    goes, a delete entry comes).
    """
    if not crm_ids:
        return {}
    table, q, r = local_table(spec), sync_queue.c, sync_record.c
    local = sa.select(
        table.c.crm_id.label("crm_id"),
        table.c.id.label("record_id"),
        sa.literal(None, sa.String).label("operation"),
        _marked(spec, table).label("marked"),
    ).where(load.id_in(conn, table.c.crm_id, crm_ids))
    pushes = sa.select(
        q.crm_id.label("crm_id"),
        q.record_id.label("record_id"),
        q.operation.label("operation"),
        sa.false().label("marked"),
    ).where(q.object == spec.name, q.direction == "to_crm", load.id_in(conn, q.crm_id, crm_ids))
    both = sa.union_all(local, pushes, _logged_deletes(conn, spec, crm_ids)).subquery()
    found = conn.execute(
        sa.select(both, r.synced_values, r.crm_version, r.etag, r.excluded).join_from(
            both,
            sync_record,
            (r.object == spec.name) & (r.record_id == both.c.record_id),
            isouter=True,
        )
    ).all()
    rows = {f.crm_id.lower(): f for f in found if f.operation is None}
    pushes_by_id: dict[str, Any] = {}
    for f in found:
        # A delete logged after an entry was queued is the later change.
        if f.operation is not None and (
            f.crm_id.lower() not in pushes_by_id or f.operation == "delete"
        ):
            pushes_by_id[f.crm_id.lower()] = f
    known: dict[str, ch.Known] = {}
    for crm_id in crm_ids:
        push = pushes_by_id.get(crm_id)
        row = rows.get(crm_id)
        state = row if row is not None else push
        if state is None or state.record_id is None:
            continue
        known[crm_id] = ch.Known(
            record_id=state.record_id,
            synced_values=state.synced_values,  # None without sync state (outer join)
            synced_version=state.crm_version or ch.version_of(state.etag),
            local_delete_pending=push is not None and push.operation == "delete",
            marked_deleted=bool(row is not None and row.marked),
            excluded=bool(state.excluded),  # None without sync state (outer join)
        )
    return known


def load_buried(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> set[str]:
    """The Dynamics ids among ``crm_ids`` of records crmsync deleted (``sync_tombstone``).

    Read after ``load_known`` in the same transaction: a delete committed between the
    two reads left a tombstone, so a record is known, buried, or truly new."""
    if not crm_ids:
        return set()
    t = sync_tombstone.c
    found = conn.execute(
        sa.select(t.crm_id).where(t.object == spec.name, load.id_in(conn, t.crm_id, crm_ids))
    ).scalars()
    return {str(c).lower() for c in found}


def _logged_deletes(conn: Connection, spec: ObjectSpec, crm_ids: Sequence[str]) -> sa.Select[Any]:
    """Local deletes of these Dynamics ids still in the capture log: pushes on their
    way, like the queue's delete entries (the log is folded into the queue later)."""
    c = sync_change.c
    return sa.select(
        c.crm_id.label("crm_id"),
        c.record_id.label("record_id"),
        sa.literal("delete", sa.String).label("operation"),
        sa.false().label("marked"),
    ).where(c.object == spec.name, c.deleted.is_(True), load.id_in(conn, c.crm_id, crm_ids))


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
    return load.local_parents(conn, specs, wanted)


def _crm_version(payload: Any) -> Any:
    return sa.func.coalesce(payload["version"].as_float(), _AFTER_ALL)


def stage(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``from_crm`` entries, coalescing with pending ones of the same records.

    An entry already holding a newer change (higher ``versionnumber``) is left as it
    is. A parked entry that receives a newer change is queued again, like a local edit
    of a parked record.
    """
    if not rows:
        return
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(sync_queue)
    q, new = sync_queue.c, insert.excluded
    parked = q.state == "parked"
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["object", "direction", "record_key"],
            set_={
                "payload": new.payload,
                "operation": sa.case(
                    ((q.operation == "insert") & (new.operation == "update"), "insert"),
                    else_=new.operation,
                ),
                "record_id": sa.func.coalesce(new.record_id, q.record_id),
                "label": new.label,
                "last_changed_at": new.last_changed_at,
                "version": q.version + 1,
                "state": "pending",
                "attempts": sa.case((parked, 0), else_=q.attempts),
                "next_attempt_at": sa.case((parked, new.next_attempt_at), else_=q.next_attempt_at),
            },
            where=_crm_version(q.payload) < _crm_version(new.payload),
        ),
        rows,
    )


def exclude(
    conn: Connection, spec: ObjectSpec, known: Mapping[str, ch.Known], now: datetime
) -> None:
    """Remember that the sync filter excludes these synced records, and drop the
    Dynamics changes of theirs still waiting to be applied (older than the exclusion),
    resolving the errors of any that had failed: nothing is left to retry.

    Their local rows stay; their local changes are skipped by the push plan until
    Dynamics includes them again."""
    synced = {c: k for c, k in known.items() if k.synced_values is not None and not k.excluded}
    if not synced:
        return
    ids = [k.record_id for k in synced.values()]
    r, q = sync_record.c, sync_queue.c
    conn.execute(
        sa.update(sync_record)
        .where(r.object == spec.name, r.record_id.in_(ids))
        .values(excluded=True)
    )
    dropped = conn.execute(
        sa.delete(sync_queue)
        .where(
            q.object == spec.name,
            q.direction == "from_crm",
            q.state == "pending",
            q.record_key.in_(list(synced)),
            sa.or_(q.claimed_until.is_(None), q.claimed_until < now),
        )
        .returning(q.record_key)
    ).scalars()
    queue.resolve(conn, {(spec.name, "from_crm", key) for key in dropped}, now)


def entry_row(
    spec: ObjectSpec, change: ch.Change, operation: str, known: ch.Known | None, now: datetime
) -> dict[str, Any]:
    if known is not None and known.excluded and operation == "update":
        change = replace(change, rejoin=True)
    label = change.values.get(spec.label_column)
    return {
        "object": spec.name,
        "direction": "from_crm",
        "record_key": change.crm_id,
        "record_id": known.record_id if known else None,
        "crm_id": change.crm_id,
        "operation": operation,
        "label": str(label)[:LABEL_MAX] if label is not None else None,
        "payload": change.payload(),
        "state": "pending",
        "first_queued_at": now,
        "last_changed_at": now,
        "version": 1,
        "attempts": 0,
        "next_attempt_at": now,
    }


def vanished(
    conn: Connection, spec: ObjectSpec, seen: set[str], started_at: datetime
) -> list[tuple[int, str]]:
    """Local records synced before a full read began that the read did not return.

    Only records with sync state count (records crmsync never synced are not its to
    delete), and not those with local changes on their way (their push decides).
    """
    table, r, q = local_table(spec), sync_record.c, sync_queue.c
    c = sync_change.c
    pending_push = (
        sa.select(sa.literal(1))
        .where(
            q.object == spec.name,
            q.direction == "to_crm",
            q.record_key == sa.cast(table.c.id, sa.String),
        )
        .exists()
    ) | (sa.select(sa.literal(1)).where(c.object == spec.name, c.record_id == table.c.id).exists())
    rows = conn.execute(
        sa.select(table.c.id, table.c.crm_id)
        .join(sync_record, (r.object == spec.name) & (r.record_id == table.c.id))
        .where(
            table.c.crm_id.is_not(None),
            ~_marked(spec, table),
            r.last_synced_at < started_at,
            # Excluded records no longer follow Dynamics, deletions included.
            r.excluded.is_(False),
            ~pending_push,
        )
    ).all()
    return [(i, c.lower()) for i, c in rows if c.lower() not in seen]


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
            return await self._read(spec, None)

    def _paused(self, obj: str) -> bool:
        with self.engine.connect() as conn:
            return queue.is_paused(queue.paused_scopes(conn), obj, "from_crm")

    def _cursor(self, obj: str) -> str | None:
        with self.engine.connect() as conn:
            return read_cursor(conn, obj)

    def _filter_for(self, spec: ObjectSpec) -> str | None:
        field_name = self.settings.sync_filter_field
        return None if spec.name in self._unfiltered else field_name

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
        except RecordRejected as exc:
            if task is not None:
                await task
            if filter_field and filter_field in exc.message and spec.name not in self._unfiltered:
                # This table has no sync filter column: pull it unfiltered.
                self._unfiltered.add(spec.name)
                return staged + await self._read(spec, link)
            raise
        finally:
            await pages.aclose()
        if task is not None:
            staged += await task
        self.stats.staged += staged
        return staged

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
    ) -> int:
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
            known = load_known(conn, spec, [c.crm_id for c in found])
            buried = load_buried(conn, spec, [c.crm_id for c in found if c.crm_id not in known])
            parents = load_parents(conn, self.specs, spec, found)
            excluded: dict[str, ch.Known] = {}
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
                if (
                    op is None
                    and force
                    and k is not None
                    and not (change.deleted or change.excluded)
                ):
                    # Newer in Dynamics than our last sync, whatever its values: applying
                    # it is what moves the record's ETag on for the waiting push.
                    op = "update"
                if op is not None:
                    rows.append(entry_row(spec, change, op, k, now))
            if seen is not None:
                seen.update(c.crm_id for c in found)
            if page.delta_link is not None and seen is not None:
                # The full read is complete: what it did not return is gone.
                gone = vanished(conn, spec, seen, started_at)
                rows += [
                    entry_row(spec, ch.deleted(crm_id), "delete", ch.Known(record_id), now)
                    for record_id, crm_id in gone
                ]
                self.stats.deletions_detected += len(gone)
            exclude(conn, spec, excluded, now)
            stage(conn, rows)
            if page.delta_link is not None:
                save_cursor(conn, spec.name, page.delta_link, now)
                # Read to the end: a failure of the whole object's pull is over.
                queue.resolve_object(conn, spec.name, "from_crm", now)
        read = len(found) + len(loaded.inserted) + len(loaded.settled)
        self.stats.read += read
        self.stats.by_object[spec.name] = self.stats.by_object.get(spec.name, 0) + read
        if self.progress is not None and seen is not None:
            self.progress(spec.name, read)
        return len(rows)
