"""Apply: claimed ``from_crm`` entries in, local inserts, updates and deletes out.

``plan_apply`` decides, per entry and without I/O, what to do: write the local row
(with conflicts resolved by ``conflicts.resolve``), delete or mark it, defer (a parent
record is staged but not applied yet, or a local change of the record is being sent
right now), park it (its parent is nowhere to be found, or a value does not fit the
local column), or finish it with nothing to do (an older change than the one already
synced).

``Applier.apply_batch`` claims a batch, loads what the plan needs, and carries the plan
out in ONE transaction with capture suppressed (so nothing is sent back to Dynamics):
local writes, the conflict journal, pending pushes made moot, the sync state, and the
queue outcomes. If the database refuses a write (a local constraint), the batch is
replayed record by record in savepoints, and only the refused records are parked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmsync.config import Settings
from crmsync.domain import Direction, ObjectSpec, Operation
from crmsync.engine import auto_retry
from crmsync.engine import changes as ch
from crmsync.engine.conflicts import resolve
from crmsync.mapping import options
from crmsync.mapping.convert import DoesNotFit, from_dataverse, json_row, local_values, to_dataverse
from crmsync.store import apply as store_apply
from crmsync.store import capture, inbound, queue
from crmsync.store.db import write_transaction
from crmsync.store.types import utcnow
from crmsync.values import (
    LOCAL_CONSTRAINT,
    MISSING_PARENT,
    UNMAPPABLE,
    ApplyContext,
    Defer,
    Done,
    Entry,
    LocalWrite,
    Outcome,
    Park,
    PendingPush,
    Skip,
    WriteKind,
)

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Connection, Engine

    from crmsync.engine.choices import Refresher

log = logging.getLogger(__name__)

# A deferred apply waits for work in this database (its parent's apply, or a push of
# the record in flight): it looks again soon.
APPLY_DEFER_SECONDS = 0.5

Step = LocalWrite | Defer | Park | Skip


def plan_apply(
    entry: Entry,
    spec: ObjectSpec,
    ctx: ApplyContext,
    *,
    delete_behaviour: str,
) -> Step:
    """Decide what to do with one claimed ``from_crm`` entry."""
    change = ch.Change.from_payload(entry.record_key, entry.payload)
    row = ctx.rows.get((spec.name, change.crm_id))
    record_id = row["id"] if row is not None else entry.record_id
    push = ctx.pushes.get((spec.name, record_id)) if record_id is not None else None
    state = ctx.synced.get((spec.name, record_id)) if record_id is not None else None
    excluded = state is not None and bool(state.excluded)
    if excluded and not change.rejoin:
        # Staged before the sync filter excluded the record: it no longer follows Dynamics.
        return Skip(entry)
    if change.deleted or entry.operation == Operation.DELETE:
        if row is None:
            return Skip(entry)
        if delete_behaviour == "mark":
            if row.get("crm_deleted_at") is not None:
                return Skip(entry)
            return LocalWrite(entry, change, WriteKind.MARK, row["id"], {}, push=push)
        return LocalWrite(entry, change, WriteKind.DELETE, row["id"], {}, push=push)
    if push is not None and push.claimed:
        return Defer(entry, "a local change of this record is being sent")
    if state is not None and change.version is not None and not excluded:
        synced_version = state.crm_version or ch.version_of(state.etag)
        # A resync re-applies the version already synced (over local drift), never an
        # older one: a newer change applied since it was read would be undone.
        if synced_version is not None and (
            change.version < synced_version
            or (change.version == synced_version and not change.resync)
        ):
            return Skip(entry)  # older than what both sides already agreed on
    remote: dict[str, Any] = {}
    types = spec.field_specs
    for column, value in change.values.items():
        field = types.get(column)
        local = value
        if field is not None:
            try:
                local = from_dataverse(field, value)
                value = to_dataverse(field, local)  # one JSON form to compare and keep
            except DoesNotFit as exc:
                return Park(entry, UNMAPPABLE, str(exc), field=exc.field.column)
        problem = inbound.why_unfit(spec, column, local)
        if problem is not None:
            return Park(entry, UNMAPPABLE, problem, field=column)
        remote[column] = value
    targets = {lk.column: lk.target for lk in spec.lookups}
    for column, parent_crm_id in change.lookups.items():
        if parent_crm_id is None:
            remote[column] = None
            continue
        target = targets[column]
        if not ch.is_guid(parent_crm_id):
            return Park(
                entry,
                UNMAPPABLE,
                f"{column}: {parent_crm_id!r} is not a Dynamics id",
                field=column,
            )
        parent = ctx.parents.get((target, parent_crm_id))
        if parent is None:
            if (target, parent_crm_id) in ctx.parents_on_their_way:
                return Defer(entry, f"waiting for {target} {parent_crm_id}")
            return Park(
                entry,
                MISSING_PARENT,
                f"{column} refers to {target} {parent_crm_id}, which is not in the local"
                f" {target} table and is not queued to arrive",
                field=column,
            )
        remote[column] = parent
    if row is None and record_id is None:
        res = resolve(spec, None, None, remote, local_pending=False)
        values = local_values(spec, res.values)
        return LocalWrite(entry, change, WriteKind.INSERT, None, values, res)
    if row is None:
        # Known only as a push in flight whose local row is gone: nothing to update.
        return Skip(entry)
    if excluded:
        # Included again: both sides may have moved while it was out (its local changes
        # were held back, not sent), so the rule table settles it against the values
        # both sides last agreed on; what changed only locally is pushed afterwards.
        res = resolve(
            spec,
            state.synced_values if state is not None else None,
            json_row(spec, row),
            remote,
            local_pending=True,
            local_modified_at=_local_change_time(row, state, push),
            crm_modified_at=change.modified_datetime,
        )
        return LocalWrite(
            entry,
            change,
            WriteKind.UPDATE,
            row["id"],
            local_values(spec, res.values),
            res,
            push,
            rejoin=True,
        )
    base = state.synced_values if state is not None else None
    local = json_row(spec, row)
    if change.resync:
        # Queued again from Dynamics (a resync, a repair): its values are taken over the
        # local ones, as if nothing had been agreed on; a local change still waiting to
        # be sent is settled by the rules as usual.
        base = None if push is None else base
    if change.own_write and base is not None:
        # Last written by crmsync itself, an answer it never recorded: a field changed
        # locally since the last sync is one that push may have carried, so Dynamics'
        # value of it is taken as the base (the local value is pushed, not overwritten).
        # A field unchanged locally was not in that push: Dynamics' value of it is a
        # change of its own (a flow or plug-in writing as crmsync's user) and applies.
        base = {
            **base,
            **{c: v for c, v in remote.items() if c in base and local.get(c) != base[c]},
        }
    res = resolve(
        spec,
        base,
        local,
        remote,
        local_pending=push is not None,
        local_modified_at=push.changed_at if push is not None else None,
        crm_modified_at=change.modified_datetime,
    )
    values = local_values(spec, res.values)
    return LocalWrite(entry, change, WriteKind.UPDATE, row["id"], values, res, push)


def _local_change_time(
    row: Mapping[str, Any], state: Any, push: PendingPush | None
) -> datetime | None:
    """When the record last changed locally, for ``newest_wins`` on a rejoin: its waiting
    push's last change, else the row's ``updated_at`` if it is later than the last sync
    (writers that do not maintain it leave it older: unknown, which counts as oldest)."""
    if push is not None:
        return push.changed_at
    updated = row.get("updated_at")
    synced = getattr(state, "last_synced_at", None)
    if isinstance(updated, datetime) and synced is not None and updated > synced:
        return updated
    return None


# --- carrying the plan out -------------------------------------------------------------


@dataclass
class ApplyStats:
    applied: int = 0
    skipped: int = 0
    deferred: int = 0
    parked: int = 0
    conflicts: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


class Applier:
    """Applies batches of ``from_crm`` entries for one worker."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id
        self.specs = settings.object_specs()
        self.objects = [s.name for s in ch.pull_order(self.specs)]
        self.stats = ApplyStats()
        # Reads a choice's options again when Dynamics sends one it lacks (the worker's).
        self.options: Refresher | None = None

    async def apply_batch(self) -> int:
        """``apply_batch_sync``; a choice's options are read again first (rate-limited)
        when the batch holds an option value none of them has."""
        if self.options is None:
            return await asyncio.to_thread(self.apply_batch_sync)
        entries = await asyncio.to_thread(self._claim)
        if not entries:
            return 0
        refresher = self.options
        stale = {
            e.object
            for e in entries
            if refresher.covers(e.object)
            and options.unknown_options(
                self.specs[e.object], ch.Change.from_payload(e.record_key, e.payload).values
            )
        }
        for obj in stale:
            await refresher.reread(obj)
        await asyncio.to_thread(self.apply_claimed, entries)
        return len(entries)

    def apply_batch_sync(self) -> int:
        """Claim, apply and record one batch; returns how many entries it handled."""
        entries = self._claim()
        if not entries:
            return 0
        self.apply_claimed(entries)
        return len(entries)

    def _claim(self) -> list[Entry]:
        return queue.claim(
            self.engine,
            self.worker_id,
            Direction.FROM_CRM,
            self.objects,
            self.settings.batch_size,
            timedelta(seconds=self.settings.lease_seconds),
        )

    def apply_claimed(self, entries: Sequence[Entry]) -> None:
        """Apply and record entries this worker claimed, in one transaction."""
        # Local changes are queued first, so that conflict checks see them as pushes
        # (those logged after this are read from the log by ``load_context``).
        capture.fold_pending(self.engine, max_seconds=capture.BATCH_FOLD_SECONDS)
        now = utcnow()
        with write_transaction(self.engine) as conn:
            # Only entries still ours, locked until the end: if our lease ran out and
            # another worker claimed them, it applies them; applying them twice would
            # insert a record twice (refused, and parked as a bogus error).
            entries = queue.hold(conn, self.worker_id, entries)
            if not entries:
                return
            ctx = store_apply.load_context(conn, self.specs, entries, now)
            steps = [
                plan_apply(
                    e,
                    self.specs[e.object],
                    ctx,
                    delete_behaviour=self.settings.delete_behaviour,
                )
                for e in entries
            ]
            outcome = self._run(conn, steps, now)
            queue.record_in(conn, outcome, now)

    def _run(self, conn: Connection, steps: Sequence[Step], now: datetime) -> Outcome:
        outcome = Outcome()
        writes = [s for s in steps if isinstance(s, LocalWrite)]
        for step in steps:
            if isinstance(step, Skip):
                outcome.done.append(Done(step.entry, counted=False, remember=False))
                self.stats.skipped += 1
            elif isinstance(step, Defer):
                outcome.deferred.append((step.entry, now + timedelta(seconds=APPLY_DEFER_SECONDS)))
                self.stats.deferred += 1
            elif isinstance(step, Park):
                self._park(outcome, step.entry, step.code, step.message, now, step.field)
        done, refused = store_apply.write_all(conn, self.specs, writes, now)
        for w, message in refused:
            self._park(outcome, w.entry, LOCAL_CONSTRAINT, message, now)
        outcome.done.extend(done)
        self.stats.applied += len(done)
        self.stats.conflicts += sum(
            len(w.resolution.conflicts) for w in writes if w.resolution is not None
        )
        return outcome

    def _park(
        self,
        outcome: Outcome,
        entry: Entry,
        code: str,
        message: str,
        now: datetime,
        field: str | None = None,
    ) -> None:
        policy = auto_retry.policy_of(self.settings)
        outcome.failed.append(
            auto_retry.parked(entry, code, message, self.specs, now, policy, field=field)
        )
        self.stats.parked += 1
        self.stats.by_code[code] = self.stats.by_code.get(code, 0) + 1
