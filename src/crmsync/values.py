"""The values that pass between crmsync's layers. No I/O, no SQL, no HTTP.

The store reads and writes them, the engine decides with them, the console shows them:
queue entries and what became of them (``Entry``, ``Done``, ``Failed``, ``Outcome``),
Dynamics' changes and what the store knows of a record (``Change``, ``Known``),
conflict resolutions, the plan steps shared by push and apply (``Defer``, ``Park``,
``Skip``; each direction adds its own write), what the other worker processes of one
application user spent of its budget (``Others``), and crmsync's own error codes, which
an operator sees in the sync errors next to Dynamics' codes.

Everything here is immutable except ``Outcome``, which a batch fills as it goes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmsync.domain import ConflictRule, Direction, JobKind, JobState, Operation

# --- crmsync's own error codes (a sync error's ``code`` beside Dynamics' own) ----------

MISSING_REFERENCE = "crmsync.missing_reference"  # a push's parent is nowhere
RECORD_GONE = "crmsync.record_gone"  # a push's local row is gone
INVALID_CRM_ID = "crmsync.invalid_crm_id"  # a crm_id that is not a GUID
MISSING_PARENT = "crmsync.missing_parent"  # an apply's parent is nowhere
UNMAPPABLE = "crmsync.unmappable_value"  # Dynamics' value does not fit the local column
LOCAL_CONSTRAINT = "crmsync.local_constraint"  # the local database refused the write
# A push Dynamics refused with 412 (the record changed there) while its object's pull
# was paused: it waits, pending, until the pull resumes and settles the conflict.
AWAITING_PULL = "crmsync.awaiting_pull"
# The history's code of a send refused as stale (412 against the ETag it carried).
STALE = "http_412"


# --- queue entries and outcomes ----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A claimed queue entry, as the engine sees it (the queue's columns, in order)."""

    id: int
    object: str
    direction: Direction
    record_key: str
    record_id: int | None
    crm_id: str | None
    operation: Operation
    label: str | None
    payload: dict[str, Any] | None
    version: int
    attempts: int
    first_queued_at: datetime
    last_error_code: str | None = None  # why it waits, when it has waited (e.g. held)


@dataclass(frozen=True)
class Done:
    entry: Entry
    crm_id: str | None = None
    etag: str | None = None
    record_id: int | None = None
    synced_values: dict[str, Any] | None = None
    crm_version: int | None = None
    crm_modified_at: datetime | None = None
    counted: bool = True  # False when nothing was sent (not throughput)
    remember: bool = True  # False: leave the record's sync state as it is


@dataclass(frozen=True)
class Failed:
    entry: Entry
    code: str
    message: str
    retry_at: datetime | None = None  # None: park it
    field: str | None = None  # the local column the failure concerns, if known
    # Parked, a passing failure is retried by itself then (``engine.auto_retry``).
    auto_retry_at: datetime | None = None


@dataclass
class Outcome:
    done: list[Done] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    deferred: list[tuple[Entry, datetime]] = field(default_factory=list)
    # What was sent to Dynamics in this batch, with the local columns each send carried
    # (its ``sent`` events, written with the outcomes: a rolled-back outcome leaves none).
    sent: list[tuple[Entry, tuple[str, ...]]] = field(default_factory=list)
    batch: str | None = None  # the batch's id in the history, when something was sent
    # Sends Dynamics refused with 412 (changed there since the last sync), with when each
    # goes again after its pull (None: held until the object's paused pull resumes).
    stale: list[tuple[Entry, datetime | None]] = field(default_factory=list)


# --- plan steps shared by push and apply -------------------------------------------------


@dataclass(frozen=True)
class Defer:
    """Not yet: look again shortly (a parent is on its way, the record is busy)."""

    entry: Entry
    reason: str


@dataclass(frozen=True)
class Park:
    """Never as it is: the entry becomes an open sync error with this code."""

    entry: Entry
    code: str
    message: str
    field: str | None = None  # the local column concerned, when the engine knows it


@dataclass(frozen=True)
class Skip:
    """Nothing to do (the record is already as wanted); completes the entry."""

    entry: Entry
    # A push only: the sync filter excludes the record, so its local change is dropped
    # and its sync state (the exclusion with it) kept, unless the local row is gone.
    excluded: bool = False


# --- Dynamics' changes -------------------------------------------------------------------

# Dataverse's weak ETags carry the row's versionnumber: W/"1234567".
_ETAG = re.compile(r'W/"(\d+)"')


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def version_of(etag: str | None) -> int | None:
    m = _ETAG.fullmatch(etag or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Change:
    """One record as Dynamics reported it (or its deletion)."""

    crm_id: str
    values: dict[str, Any]  # pulled local column -> value (lookups excluded)
    lookups: dict[str, str | None]  # lookup column -> Dynamics id of the parent
    version: int | None = None
    modified_at: str | None = None  # ISO 8601, as Dynamics wrote it
    modified_by: str | None = None
    etag: str | None = None
    excluded: bool = False  # the sync filter field says No
    deleted: bool = False
    # Staged for a record the sync filter had excluded and now includes again: both
    # sides' changes since the last sync are settled by the rules (``apply.plan_apply``).
    rejoin: bool = False
    # Refetched after a 412, last written by crmsync itself: a push it sent whose answer
    # it never recorded (a worker killed, an answer cut). Dynamics' values are then the
    # new base, not a change of Dynamics' to settle against the local one.
    own_write: bool = False
    # Staged again by a resync or an audit's repair (``engine/resync.py``): applied even
    # at the version both sides agreed on, Dynamics' values taken over the local ones.
    resync: bool = False

    def payload(self) -> dict[str, Any]:
        """The queue entry's payload (JSON)."""
        return {
            "values": self.values,
            "lookups": self.lookups,
            "version": self.version,
            "modified_at": self.modified_at,
            "modified_by": self.modified_by,
            "etag": self.etag,
            "deleted": self.deleted,
            "rejoin": self.rejoin,
            "own_write": self.own_write,
            "resync": self.resync,
        }

    @classmethod
    def from_payload(cls, crm_id: str, payload: Mapping[str, Any] | None) -> Change:
        p = payload or {}
        return cls(
            crm_id=crm_id,
            values=dict(p.get("values") or {}),
            lookups=dict(p.get("lookups") or {}),
            version=p.get("version"),
            modified_at=p.get("modified_at"),
            modified_by=p.get("modified_by"),
            etag=p.get("etag"),
            deleted=bool(p.get("deleted")),
            rejoin=bool(p.get("rejoin")),
            own_write=bool(p.get("own_write")),
            resync=bool(p.get("resync")),
        )

    @property
    def modified_datetime(self) -> datetime | None:
        return parse_time(self.modified_at)


@dataclass(frozen=True)
class Known:
    """What the store knows about one Dynamics id."""

    record_id: int
    synced_values: Mapping[str, Any] | None = None
    synced_version: int | None = None
    local_delete_pending: bool = False
    marked_deleted: bool = False
    excluded: bool = False  # the sync filter excluded it (sync_record.excluded)


# --- conflict resolutions ----------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    field: str
    local_value: Any
    crm_value: Any
    winner: str  # "local" | "crm"
    rule: ConflictRule


@dataclass(frozen=True)
class Resolution:
    """What applying Dynamics' values to one local record comes to."""

    values: dict[str, Any]  # pulled columns as the local row must hold them
    synced_values: dict[str, Any]  # the new base: Dynamics' values over the old base
    conflicts: list[Conflict] = field(default_factory=list)
    push_needed: bool = False  # the local row still differs from Dynamics somewhere

    @property
    def changed(self) -> bool:
        return bool(self.values)


def as_text(value: Any) -> str | None:
    """A journaled value: text as it is, anything else in its plain text form."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


# --- what a push and an apply read from the store ----------------------------------------


@dataclass(frozen=True)
class Parent:
    """What the push plan needs to know about a record a lookup points at."""

    crm_id: str | None
    on_its_way: bool  # it has a pending queue entry that may give it a crm_id
    entity_set: str  # where it lives in Dynamics, from the registry


@dataclass(frozen=True)
class PendingPush:
    """A record's own ``to_crm`` entry, as far as applying needs to know it."""

    claimed: bool  # being sent right now
    changed_at: datetime  # its last captured local change
    logged_up_to: int | None = None  # its latest change still in the capture log


@dataclass(frozen=True)
class ApplyContext:
    """What the store holds for one apply batch; everything ``plan_apply`` reads."""

    rows: Mapping[tuple[str, str], Mapping[str, Any]]  # (object, crm id) -> local row
    synced: Mapping[tuple[str, int], Any]  # (object, record id) -> sync_record row
    pushes: Mapping[tuple[str, int], PendingPush]
    parents: Mapping[tuple[str, str], int]  # (object, crm id) -> local id
    parents_on_their_way: frozenset[tuple[str, str]]  # staged from_crm, not applied yet


class WriteKind(enum.StrEnum):
    """What an apply does to a local row; ``MARK`` stamps ``crm_deleted_at`` (the
    ``delete_behaviour = mark`` setting) instead of deleting it."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MARK = "mark"


@dataclass(frozen=True)
class LocalWrite:
    """An apply's write to a local table."""

    entry: Entry
    change: Change
    kind: WriteKind
    record_id: int | None
    values: dict[str, Any]
    resolution: Resolution | None = None
    push: PendingPush | None = None
    rejoin: bool = False  # the sync filter includes the record again


# --- resync and audit jobs ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A resync or an audit (``sync_job``); ``position`` is where it got to.
    ``claimed_until`` with no ``claimed_by``: given back to resume then, not before."""

    id: int
    kind: JobKind
    object: str | None
    direction: Direction | None
    params: dict[str, Any]
    state: JobState
    done: int
    total: int | None
    position: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claimed_by: str | None = None
    claimed_until: datetime | None = None

    def claimable(self, worker: str, now: datetime) -> bool:
        """Whether ``worker`` may claim it at ``now`` (as ``store.jobs.claim`` decides)."""
        return not self.state.finished and (
            self.claimed_by == worker or self.claimed_until is None or self.claimed_until < now
        )

    @property
    def retry_at(self) -> datetime | None:
        """When a job given back (Dynamics unreachable, or a run that failed) resumes."""
        if self.claimed_by is None and not self.state.finished:
            return self.claimed_until
        return None


@dataclass(frozen=True)
class LocalRef:
    """A local record queued again for a push (a resync, or a repair): its id, its
    Dynamics id if it has one, and whether what is due is its deletion."""

    record_id: int
    crm_id: str | None = None
    label: str | None = None
    deleted: bool = False


# --- the execution budget shared by the processes of one application user -------------


@dataclass(frozen=True)
class Others:
    """The other live worker processes of one application user, as the store last told
    them (``store.throttle.poll``): how many, what they spent over Dataverse's window
    (ms), and the lowest of their pacing shares (1.0 with none)."""

    processes: int = 0
    spent_ms: float = 0.0
    share: float = 1.0
