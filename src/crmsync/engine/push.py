"""Push: send claimed ``to_crm`` entries to Dynamics and record what became of them.

One call of ``push_batch`` claims a batch, reads the local rows and the parents their
lookups point at, plans each entry (``plan.py``), saves the Dynamics ids chosen for
inserts *before* sending (so a retry reuses them), sends the writes in one ``$batch``
with continue-on-error (a bad record never fails its neighbours), and records every
outcome in one transaction: successes set the record's ``crm_id`` without capturing it
back, transient faults reschedule with backoff, rejections park the record as a sync
error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmsync.config import Settings
from crmsync.domain import Direction, ObjectSpec, Operation
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.limiter import SMALL_MS, estimate_ms
from crmsync.dynamics.writes import ItemResult
from crmsync.engine import auto_retry, bulk
from crmsync.engine.changes import MODIFIED_BY
from crmsync.engine.plan import Send, Step, plan_batch
from crmsync.engine.verdict import Parked, Retry, RetryPolicy, Stale, Synced, Unusable, judge
from crmsync.errors import (
    CrmsyncError,
    Fatal,
    ObjectUnusable,
    RecordRejected,
    Refusal,
    StaleRecord,
)
from crmsync.mapping import options
from crmsync.mapping.convert import INVALID_VALUE
from crmsync.store import outbound, parents, queue
from crmsync.store.db import capture_suppressed, write_transaction
from crmsync.store.status import pause_unusable
from crmsync.store.types import utcnow
from crmsync.values import AWAITING_PULL, Defer, Done, Entry, Failed, Outcome, Park, Skip

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Connection, Engine

    from crmsync.engine.choices import Refresher


log = logging.getLogger(__name__)

# A deferred push waits for Dynamics (a parent's push, or the pull of a record Dynamics
# changed, before the push goes again): a round trip away, so it looks again later than
# a deferred apply does.
PUSH_DEFER_SECONDS = 1.0
# While the backlog is thin (a claim comes back short of a full batch), the lanes of one
# process claim at most this often. Without it four lanes sent a request per handful of
# records, spent Dataverse's budget (6,000 requests / 5 min, i.e. 20 a second per user)
# and stalled every change for the seconds of the 429's Retry-After (bench/lag.py: p95
# 3.7 s at 50 changes/s). Waiting lets changes gather into one request; a full batch is
# never held back, so throughput under a deep backlog is unchanged.
THIN_CLAIM_INTERVAL = 1 / 15
# The fresh lane (``push_fresh``): changes due in the last FRESH_SECONDS, newest first,
# at most FRESH_LIMIT a claim.
FRESH_SECONDS = 5.0
FRESH_LIMIT = 50
# How far back the fresh lane catches up after its claims were held up (FreshWindow).
FRESH_CATCHUP_SECONDS = 60.0
# A bulk request costs at most this share of the execution budget per window: a large
# one is charged whole and overshoots (every lane then waits out a 429).
BULK_SHARE = 0.1


@dataclass
class FreshWindow:
    """Where the fresh lane's next claim begins. Changes due in the last FRESH_SECONDS,
    and, when the lane was held up (a 429's Retry-After, a wait for the execution
    budget), everything due since its last claim that took all it found: a change that
    aged past the window while the lane waited would otherwise wait for the whole
    backlog (577 s in a 100,000-record drain). A full claim keeps the start (what it
    left is older than what it took); the catch-up reaches FRESH_CATCHUP_SECONDS back
    at most, and ``reset`` forgets it while the lanes keep up on their own."""

    start: datetime | None = None

    def since(self, now: datetime) -> datetime:
        floor = now - timedelta(seconds=FRESH_SECONDS)
        if self.start is None:
            return floor
        return max(min(self.start, floor), now - timedelta(seconds=FRESH_CATCHUP_SECONDS))

    def claimed(self, since: datetime, now: datetime, *, full: bool) -> None:
        self.start = since if full else now - timedelta(seconds=FRESH_SECONDS)

    def reset(self) -> None:
        self.start = None


@dataclass
class PushStats:
    sent: int = 0
    synced: int = 0
    retried: int = 0
    parked: int = 0
    deferred: int = 0
    stale: int = 0
    held: int = 0  # refused as stale while the pull was paused: waiting for the resume
    bisected: int = 0  # bulk requests refused for a bad record and split in two
    split_by_limit: int = 0  # refused for text over a limit Dynamics named: split by it
    by_code: dict[str, int] = field(default_factory=dict)


def _still_awaiting_pull(conn: Connection, entries: Sequence[Entry]) -> set[int]:
    """The ids of claimed updates held for a pull that is still paused (not to be sent:
    Dynamics would refuse them again, and only the pull can resolve why). A held entry
    that became a delete (the local row is gone) no longer waits for anything.

    The claim returned each entry's mark, so the pauses are read only when one of the
    batch was held (not on every batch)."""
    marked = [
        e for e in entries if e.operation == Operation.UPDATE and e.last_error_code == AWAITING_PULL
    ]
    if not marked:
        return set()
    scopes = queue.paused_scopes(conn)
    return {e.id for e in marked if queue.is_paused(scopes, e.object, Direction.FROM_CRM)}


class Pusher:
    """Pushes batches for one worker; share one per process with one client."""

    def __init__(self, engine: Engine, client: DataverseClient, settings: Settings, worker_id: str):
        self.engine = engine
        self.client = client
        self.settings = settings
        self.worker_id = worker_id
        self.specs = settings.object_specs()
        self.objects = [s.name for s in self._push_order()]
        self.stats = PushStats()
        # Told of records changed in Dynamics since their last sync (see ``_record``).
        self.on_stale: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None
        self._rnd = random.Random()
        self._pace: asyncio.Lock | None = None
        self._thin = True  # until a claim comes back full
        self._claimed = False  # whether any claim came back yet (``keeping_up``)
        self._reached: datetime | None = None  # the newest change the last claim took
        self.fresh = FreshWindow(utcnow())  # edits made while the worker starts are fresh
        self._next_claim = 0.0
        self._own_user: str | None = None  # crmsync's Dynamics user (WhoAmI), for read-backs
        self._limits = bulk.TextLimits()  # text lengths Dynamics refused lately
        # Reads a choice's options again when a label is none of them (the worker's).
        self.options: Refresher | None = None

    def _push_order(self) -> list[ObjectSpec]:
        # Objects without lookups (parents) come first in the claim order; a child whose
        # parent is still on its way is deferred a moment rather than failed (see Defer).
        specs = [s for s in self.specs.values() if s.flow.pushes]
        return sorted(specs, key=lambda s: len(s.lookups))

    def _claim_and_plan(self, limit: int, fresh: bool = False) -> list[Step]:
        now = utcnow()
        since = self.fresh.since(now) if fresh else None
        entries = queue.claim(
            self.engine,
            self.worker_id,
            Direction.TO_CRM,
            self.objects,
            limit,
            timedelta(seconds=self.settings.lease_seconds),
            now,
            fresh_since=since,
        )
        if since is not None:
            self.fresh.claimed(since, now, full=len(entries) >= limit)
        if not entries:
            return []
        if not fresh:
            self._reached = max(e.first_queued_at for e in entries)
        return self._plan(entries)

    def _plan(self, entries: Sequence[Entry]) -> list[Step]:
        """Plan claimed entries and save the Dynamics ids chosen for inserts."""
        with write_transaction(self.engine) as conn:
            held = _still_awaiting_pull(conn, entries)
            if held:
                outbound.hold_for_pull(conn, sorted(held), utcnow())
                self.stats.held += len(held)
                entries = [e for e in entries if e.id not in held]
            rows = outbound.load_rows(conn, self.specs, entries)
            parents = outbound.load_parents(conn, self.specs, rows)
            etags, excluded = outbound.load_sync_state(conn, entries)

            def plan(batch: Sequence[Entry]) -> list[Step]:
                return plan_batch(
                    batch,
                    self.specs,
                    rows,
                    parents,
                    etags,
                    excluded,
                    detect_duplicates=self.settings.duplicate_detection,
                )

            steps: list[Step] = []
            for step in plan(entries):
                if isinstance(step, Send) and step.entry.crm_id is None:
                    # Another worker may hold this entry too (our lease ran out between
                    # the claim and now) and may have chosen an id first: both must
                    # send that one, or Dynamics gets the record twice.
                    stored = queue.assign_crm_id(conn, step.entry, step.crm_id)
                    if stored is None:
                        continue  # finished by that worker meanwhile: nothing left to do
                    if stored != step.crm_id:
                        step = plan([replace(step.entry, crm_id=stored)])[0]
                steps.append(step)
        return steps

    async def _paced_claim(self) -> list[Step]:
        """Claim a batch; while the backlog is thin, one lane at a time and spaced out.

        Under a deep backlog (the last claim was full) lanes claim concurrently, as
        they would without pacing.
        """
        if self._pace is None:  # created lazily: the pusher may be built outside a loop
            self._pace = asyncio.Lock()
        if not self._thin:
            return self._paced(await asyncio.to_thread(self._claim_and_plan, self._batch))
        async with self._pace:
            await asyncio.sleep(max(0.0, self._next_claim - asyncio.get_running_loop().time()))
            return self._paced(await asyncio.to_thread(self._claim_and_plan, self._batch))

    @property
    def _batch(self) -> int:
        return self.settings.batch_size

    def _paced(self, steps: list[Step]) -> list[Step]:
        self._claimed = True
        self._thin = len(steps) < self._batch
        if self._thin:
            self._next_claim = asyncio.get_running_loop().time() + THIN_CLAIM_INTERVAL
        return steps

    async def _options_again(self, steps: list[Step], started: float) -> list[Step]:
        """``steps`` with the entries refused for a choice label that is none of the
        options read planned again, if reading the options again (``choices.Refresher``,
        rate-limited) changed them since the plan began at ``started``."""
        refresher = self.options
        if refresher is None:
            return steps
        refused = [
            s
            for s in steps
            if isinstance(s, Park)
            and s.code == INVALID_VALUE
            and refresher.covers(s.entry.object)
            and s.field in options.read_fields(self.specs[s.entry.object])
        ]
        if not refused:
            return steps
        for obj in dict.fromkeys(s.entry.object for s in refused):
            await refresher.reread(obj)
        again = {
            s.entry.id: s.entry for s in refused if refresher.changed_since(s.entry.object, started)
        }
        if not again:
            return steps
        planned = {s.entry.id: s for s in await asyncio.to_thread(self._plan, list(again.values()))}
        # An entry the new plan leaves out was finished by another worker meanwhile.
        return [
            planned[s.entry.id] if s.entry.id in again else s
            for s in steps
            if s.entry.id not in again or s.entry.id in planned
        ]

    async def push_fresh(self) -> int:
        """Claim the newest changes (due in the last ``FRESH_SECONDS``, at most
        ``FRESH_LIMIT``) and send them at once: an interactive edit does not wait behind
        a bulk backlog, and its small request uses the share of the execution budget
        that bulk requests leave free (``ExecutionBudget.reserve``). Only ``behind`` a
        backlog: while the lanes keep up, they send fresh changes themselves, batched by
        the thin-claim pacing, and this lane would only add requests."""
        started = time.monotonic()
        steps = await asyncio.to_thread(self._claim_and_plan, FRESH_LIMIT, True)
        return await self._push(await self._options_again(steps, started))

    @property
    def keeping_up(self) -> bool:
        """The last claim came back thin: the lanes send fresh changes themselves. Not
        before the first claim (a worker starting on a backlog is not keeping up; edits
        made while it starts must stay in the fresh lane's window)."""
        return self._claimed and self._thin

    @property
    def behind(self) -> bool:
        """Whether the lanes work through a backlog older than the fresh changes: the last
        claim came back full and its newest change was queued more than FRESH_SECONDS
        ago. A backlog that is itself fresh (a bulk load just written) is the lanes'
        own: the fresh lane would only drain it faster for a few seconds, and throw the
        drain's estimate off."""
        if self._thin or self._reached is None:
            return False
        return utcnow() - self._reached > timedelta(seconds=FRESH_SECONDS)

    async def push_batch(self) -> int:
        """Claim, send and record one batch; returns how many entries it handled."""
        started = time.monotonic()
        steps = await self._paced_claim()
        return await self._push(await self._options_again(steps, started))

    async def _push(self, steps: list[Step]) -> int:
        if not steps:
            return 0
        sends = [s for s in steps if isinstance(s, Send)]
        try:
            results = await self._send_all(sends) if sends else []
        except Fatal:
            await asyncio.to_thread(queue.release, self.engine, self.worker_id)
            raise
        except ObjectUnusable as exc:
            objects = {s.entry.object for s in sends}
            if len(objects) != 1:
                # About a request of several objects: which one is not known.
                await asyncio.to_thread(queue.release, self.engine, self.worker_id)
                raise Fatal(str(exc)) from exc
            # Every write of this object fails the same way: it alone pauses (first, so
            # that no other worker claims the entries given back), and only this
            # batch's claims go back: the other lanes' batches are in flight.
            await asyncio.to_thread(self._pause_unusable, {objects.pop(): exc}, utcnow())
            ids = [s.entry.id for s in steps]
            await asyncio.to_thread(queue.release, self.engine, self.worker_id, ids)
            return len(steps)
        stale = await asyncio.to_thread(self._record, steps, sends, results)
        if stale and self.on_stale is not None:
            await self.on_stale(stale)
        return len(steps)

    async def _send_all(self, sends: Sequence[Send]) -> list[ItemResult]:
        """Send as bulk messages where they apply, the rest as one ``$batch``; one
        result per send, in order (``engine/bulk.py``)."""
        groups = bulk.group_sends(
            sends, bulk=self.settings.push_bulk, max_records=self._bulk_records()
        )
        done = await asyncio.gather(*(self._send_group(g) for g in groups))
        by_entry = {
            s.entry.id: r
            for g, results in zip(groups, done, strict=True)
            for s, r in zip(g.sends, results, strict=True)
        }
        return [by_entry[s.entry.id] for s in sends]

    def _bulk_records(self) -> int:
        """Records per bulk request: at most ``BULK_SHARE`` of the window's budget, and
        at most the claim."""
        return bulk.bulk_size(
            self.settings.execution_budget_ms,
            estimate_ms("UpdateMultiple", 0),
            estimate_ms("UpdateMultiple", 1) - estimate_ms("UpdateMultiple", 0),
            share=BULK_SHARE,
            maximum=self.settings.batch_size,
        )

    async def _send_group(self, group: bulk.Group) -> list[ItemResult]:
        if group.message is None and len(group.sends) == 1:
            return [await self._single(group.sends[0])]
        if group.message is None:
            return await self.client.write_batch([s.write for s in group.sends])
        try:
            return await self._send_bulk(group)
        except Fatal:
            raise
        except CrmsyncError as exc:
            # The whole request failed (an outage, a throttle outlasting the retries):
            # each record gets the error, and its retry or park, as a $batch's would.
            # The object of an unusable one is known (one per bulk request): each of
            # its records waits while it alone pauses (``_record``), and the other
            # requests' answers are recorded.
            return [ItemResult(crm_id=s.write.record_id, error=exc) for s in group.sends]

    async def _send_bulk(self, group: bulk.Group) -> list[ItemResult]:
        assert group.message is not None
        spec = self.specs[group.object]
        results: dict[int, ItemResult] = {}
        sends = list(group.sends)
        try:
            if self._own_user is None:
                self._own_user = await self.client.whoami()
            current: dict[str, dict[str, Any]] | None = None
            if group.message == "UpdateMultiple" and any(
                s.write.if_match not in (None, "*") for s in sends
            ):
                # What If-Match would refuse (412): changed in Dynamics since the last sync.
                current = await self._read_back(
                    spec.entity_set, spec.primary_key, sends, group.message
                )
        except Fatal:
            raise
        except CrmsyncError as exc:
            # Failed before the bulk request went: each record gets the error, and its
            # retry, but no 'sent' event (nothing was sent).
            return [ItemResult(crm_id=s.write.record_id, error=exc, sent=False) for s in sends]
        if current is not None:
            for entry_id in bulk.stale_before(sends, current):
                results[entry_id] = ItemResult(
                    crm_id=None,
                    error=StaleRecord(
                        "",
                        "The version of the existing record doesn't match the RowVersion"
                        " property provided (read back before UpdateMultiple).",
                        status=412,
                    ),
                    sent=False,
                )
            sends = [s for s in sends if s.entry.id not in results]
        sent = await self._bulk(bulk.Group(group.message, group.object, tuple(sends)))
        ok = [s for s, r in zip(sends, sent, strict=True) if r.ok]
        try:
            after = (
                await self._read_back(spec.entity_set, spec.primary_key, ok, group.message)
                if ok
                else {}
            )
        except Fatal:
            raise
        except CrmsyncError:
            # Written whatever the read-back: synced, with no version known after it (an
            # update keeps its base, an insert none, as after a lost answer), never
            # failed and sent again (an insert re-created if deleted meanwhile).
            after = {}
        for s, r in zip(sends, sent, strict=True):
            if r.ok:
                r = replace(r, etag=bulk.etag_after(s, after, self._own_user))
            results[s.entry.id] = r
        return [results[s.entry.id] for s in group.sends]

    async def _single(self, send: Send) -> ItemResult:
        """A lone write as one request (~149 ms of execution, a $batch of one ~249)."""
        try:
            return await self.client.write(send.write)
        except Fatal:
            raise
        except CrmsyncError as exc:  # an unusable object included: its one record waits
            return ItemResult(crm_id=send.write.record_id, error=exc)

    async def _read_back(
        self, entity_set: str, primary_key: str, sends: Sequence[Send], message: str
    ) -> dict[str, dict[str, Any]]:
        """The records' current versions; paced as part of a bulk-sized request (the
        reserve left to small requests is not for a backlog's read-backs)."""
        ids = [s.crm_id.lower() for s in sends]
        big = estimate_ms(message, len(sends)) > SMALL_MS
        return await self.client.versions(entity_set, primary_key, ids, [MODIFIED_BY], bulk=big)

    async def _bulk(self, group: bulk.Group) -> list[ItemResult]:
        """One bulk request, in the order of ``group.sends``. Refused (a standard table
        fails it whole for one bad record): when Dynamics named a text limit, every
        record over it gets that refusal and the others go again (``bulk.TextLimits``);
        otherwise it is halved until the bad record stands alone with its own error."""
        if not group.sends:
            return []
        assert group.message is not None
        spec = self.specs[group.object]
        over, rest = self._limits.split(group, spec.logical_name, time.monotonic())
        return await self._without(group, over, rest, sent=False)

    async def _without(
        self,
        group: bulk.Group,
        over: list[tuple[Send, Refusal]],
        rest: bulk.Group,
        *,
        sent: bool,
    ) -> list[ItemResult]:
        """``group``'s results: the refusals of the sends ``over`` a text limit (``sent``:
        in the request Dynamics refused; else taken out before sending), then the rest
        in one request."""
        results = {
            id(s): ItemResult(crm_id=s.write.record_id, error=exc, sent=sent) for s, exc in over
        }
        if rest.sends:
            for s, r in zip(rest.sends, await self._bulk_request(rest), strict=True):
                results[id(s)] = r
        return [results[id(s)] for s in group.sends]

    async def _bulk_request(self, group: bulk.Group) -> list[ItemResult]:
        assert group.message is not None
        spec = self.specs[group.object]
        writes = [s.write for s in group.sends]
        try:
            return await self.client.write_multiple(
                group.message,
                spec.entity_set,
                spec.logical_name,
                spec.primary_key,
                writes,
                fallback=False,
            )
        except ObjectUnusable as exc:  # of this object, whichever half: all of it waits
            return [ItemResult(crm_id=w.record_id, error=exc) for w in writes]
        except (RecordRejected, StaleRecord) as exc:
            if len(group.sends) == 1:
                return [ItemResult(crm_id=writes[0].record_id, error=exc)]
            now = time.monotonic()
            if isinstance(exc, RecordRejected) and self._limits.learn(
                group, spec.logical_name, exc, now
            ):
                self.stats.split_by_limit += 1
                over, rest = self._limits.split(group, spec.logical_name, now)
                return await self._without(group, over, rest, sent=True)
            self.stats.bisected += 1
            left, right = bulk.halves(group)
            first, second = await asyncio.gather(self._bulk(left), self._bulk(right))
            return first + second

    def _record(
        self, steps: Sequence[Step], sends: Sequence[Send], results: Sequence[ItemResult]
    ) -> list[tuple[str, str]]:
        """Record the outcomes; returns the (object, crm id) of updates refused because
        Dynamics' record changed since the last sync (to be pulled before resending)."""
        now = utcnow()
        outcome = Outcome(
            sent=[
                (s.entry, tuple(s.values or ()))
                for s, r in zip(sends, results, strict=True)
                if r.sent
            ],
            batch=uuid.uuid4().hex[:12] if sends else None,
        )
        created: list[tuple[str, int, str]] = []
        refused: list[Send] = []
        unusable: dict[str, Unusable] = {}
        policy = RetryPolicy(
            self.settings.max_attempts,
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
        )
        for send, result in zip(sends, results, strict=True):
            e = send.entry
            verdict = judge(send, result, now, policy, self._rnd)
            # A refusal as stale is sent again once pulled: not counted as sent yet.
            self.stats.sent += result.sent and not isinstance(verdict, Stale)
            match verdict:
                case Synced(etag):
                    outcome.done.append(
                        Done(e, crm_id=send.crm_id, etag=etag, synced_values=send.values)
                    )
                    if e.operation != Operation.DELETE and e.record_id is not None:
                        created.append((e.object, e.record_id, send.crm_id))
                    self.stats.synced += 1
                case Stale():
                    refused.append(send)
                    self.stats.stale += 1
                case Parked(code, message, transient):
                    free = self.settings.max_attempts - 1 if transient else 0
                    outcome.failed.append(self._parked(e, code, message, now, free_tries=free))
                    self._count_park(code)
                case Unusable():
                    # Back to the backlog as it was (no attempt counted); the object
                    # pauses in the same transaction, so nothing claims it meanwhile.
                    outcome.deferred.append((e, now))
                    unusable.setdefault(e.object, verdict)
                case Retry(code, message, at):
                    outcome.failed.append(Failed(e, code, message, retry_at=at))
                    self.stats.retried += 1
        for step in steps:
            if isinstance(step, Skip):
                # An excluded record keeps its sync state (the exclusion); a local
                # delete of one forgets it, as the local row is gone.
                keep = step.excluded and step.entry.operation != Operation.DELETE
                outcome.done.append(Done(step.entry, counted=False, remember=not keep))
            elif isinstance(step, Defer):
                outcome.deferred.append((step.entry, now + timedelta(seconds=PUSH_DEFER_SECONDS)))
                self.stats.deferred += 1
            elif isinstance(step, Park):
                outcome.failed.append(
                    self._parked(step.entry, step.code, step.message, now, field=step.field)
                )
                self._count_park(step.code)
        with write_transaction(self.engine) as conn:
            stale, held = self._refused(conn, refused, now, outcome)
            if created:
                with capture_suppressed(conn):
                    outbound.set_crm_ids(conn, self.specs, created)
            queue.record_in(conn, outcome, now)
            self._wake_children(conn, created, now)
            outbound.hold_for_pull(conn, held, now)
            for obj, why in unusable.items():
                pause_unusable(conn, obj, Direction.TO_CRM, why.code, why.message, now)
        return stale

    def _wake_children(
        self, conn: Connection, synced: Sequence[tuple[str, int, str]], now: datetime
    ) -> None:
        """The records parked because ``synced`` (object, local id, Dynamics id) were not
        in Dynamics go again now, rather than on their automatic retry's schedule."""
        by_object: dict[str, list[int]] = {}
        for obj, record_id, _ in synced:
            by_object.setdefault(obj, []).append(record_id)
        for obj, ids in by_object.items():
            parents.pushed(conn, self.specs, obj, ids, now)

    def _pause_unusable(self, found: Mapping[str, Refusal], now: datetime) -> None:
        with write_transaction(self.engine) as conn:
            for obj, exc in found.items():
                code = exc.code or f"http_{exc.status}"
                pause_unusable(conn, obj, Direction.TO_CRM, code, exc.message, now)

    def _refused(
        self, conn: Connection, refused: Sequence[Send], now: datetime, outcome: Outcome
    ) -> tuple[list[tuple[str, str]], list[int]]:
        """Updates Dynamics refused because its record changed since the last sync:
        ``(records to pull now, entries to hold)``.

        Such a record is pulled, the conflict rules decide, and the push goes again (the
        apply moves the record's ETag on). While the object's pull is paused that cannot
        happen: re-sending would be refused again and again, so the entry is held until
        the pull resumes instead.
        """
        if not refused:
            return [], []
        scopes = queue.paused_scopes(conn)
        stale: list[tuple[str, str]] = []
        held: list[int] = []
        for send in refused:
            if queue.is_paused(scopes, send.entry.object, Direction.FROM_CRM):
                held.append(send.entry.id)
                outcome.stale.append((send.entry, None))
                self.stats.held += 1
            else:
                again = now + timedelta(seconds=PUSH_DEFER_SECONDS)
                outcome.deferred.append((send.entry, again))
                outcome.stale.append((send.entry, again))
                stale.append((send.entry.object, send.crm_id))
        return stale, held

    def _parked(
        self,
        entry: Entry,
        code: str,
        message: str,
        now: datetime,
        *,
        field: str | None = None,
        free_tries: int = 0,
    ) -> Failed:
        policy = auto_retry.policy_of(self.settings)
        return auto_retry.parked(
            entry, code, message, self.specs, now, policy, field=field, free_tries=free_tries
        )

    def _count_park(self, code: str) -> None:
        self.stats.parked += 1
        self.stats.by_code[code] = self.stats.by_code.get(code, 0) + 1
