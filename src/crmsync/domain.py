"""The sync's vocabulary and the shape of a mapping. No I/O here.

An *object* is one kind of record (lead, contact, account, opportunity, or any object
an operator maps) kept in a local table and mapped to a Dataverse entity set. Its
*fields* are typed (``FieldType``); its *direction* says which way changes flow. The
mapping itself is data: ``crmsync.mapping`` reads it (the default one ships with the
package) and builds the ``ObjectSpec``s defined here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

# A Dataverse primary key: a GUID in its 8-4-4-4-12 hex form.
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GUID_RE = re.compile(GUID)


class Direction(enum.StrEnum):
    TO_CRM = "to_crm"
    FROM_CRM = "from_crm"


class Operation(enum.StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Flow(enum.StrEnum):
    """Which way an object (or a field) syncs."""

    BOTH = "both"
    TO_CRM = "to_crm"
    FROM_CRM = "from_crm"

    @property
    def pushes(self) -> bool:
        return self in (Flow.BOTH, Flow.TO_CRM)

    @property
    def pulls(self) -> bool:
        return self in (Flow.BOTH, Flow.FROM_CRM)


class ConflictRule(enum.StrEnum):
    """Who wins when both sides changed the same field since the last sync."""

    LOCAL_WINS = "local_wins"
    CRM_WINS = "crm_wins"
    NEWEST_WINS = "newest_wins"


class ErrorStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


class ErrorCategory(enum.StrEnum):
    """What kind of failure a sync error is (``crmsync.diagnosis`` decides; the contract's
    ERROR ``category``). The passing kinds are retried automatically."""

    DATA_TOO_LONG = "data_too_long"
    INVALID_VALUE = "invalid_value"
    DUPLICATE = "duplicate"
    MISSING_REFERENCE = "missing_reference"
    PERMISSION = "permission"
    MAPPING = "mapping"
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    OTHER = "other"


class EntryState(enum.StrEnum):
    """A queue entry is either waiting (part of the backlog) or parked as an error."""

    PENDING = "pending"
    PARKED = "parked"


class JobKind(enum.StrEnum):
    """What a job in ``sync_job`` does."""

    RESYNC = "resync"  # queue records again in one direction
    AUDIT = "audit"  # compare both sides (and, asked to, queue the repairs)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class DriftKind(enum.StrEnum):
    """How the two sides of a record disagree (an audit's finding)."""

    ONLY_LOCAL = "only_local"
    ONLY_DYNAMICS = "only_dynamics"
    DIFFERENT = "different"


class EventKind(enum.StrEnum):
    """What happened to a record's sync: one ``sync_event`` row (``store/history.py``)."""

    CAPTURED = "captured"
    SENT = "sent"
    SYNCED = "synced"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    PARKED = "parked"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"
    RETRIED = "retried"
    PULLED = "pulled"
    APPLIED = "applied"
    CONFLICT = "conflict"
    EXCLUDED = "excluded"
    RESYNCED = "resynced"


class FieldType(enum.StrEnum):
    """A mapped field's type: how its local value becomes Dataverse JSON and back."""

    STRING = "string"  # single line of text, with max_length
    MEMO = "memo"  # multiple lines of text
    INTEGER = "integer"  # whole number (Edm.Int32)
    DECIMAL = "decimal"  # decimal number (Edm.Decimal), exact
    MONEY = "money"  # currency (Edm.Decimal), exact
    BOOLEAN = "boolean"  # two options (yes/no)
    DATETIME = "datetime"  # a UTC instant
    DATE = "date"  # a calendar date (date only): never shifted across zones
    CHOICE = "choice"  # an option set: a local value and Dynamics' integer
    LOOKUP = "lookup"  # a reference to another mapped object, by local id


@dataclass(frozen=True)
class FieldSpec:
    """One mapped local column and the Dataverse attribute it syncs with.

    ``precision`` is the number of decimal places of a ``decimal`` or ``money``;
    ``choices`` pairs a ``choice``'s local values with Dynamics' option values: declared
    by the mapping, or (``options_read``) the options' labels as a worker read them from
    Dynamics' metadata. ``labels`` False: the local column holds the option value itself
    (no choices); a choice with ``labels`` and no choices yet waits for its options
    (``needs_options``). ``minimum``/``maximum`` bound an ``integer``, ``decimal`` or
    ``money``. ``flow`` and ``conflict_rule`` are None when the field follows its object.
    """

    column: str
    attribute: str
    type: FieldType
    max_length: int | None = None
    precision: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[tuple[str, int], ...] = ()
    labels: bool = True
    options_read: bool = False
    target: str | None = None  # a lookup's object
    navigation: str | None = None  # a lookup's navigation property, if not the attribute
    flow: Flow | None = None
    conflict_rule: ConflictRule | None = None

    @property
    def needs_options(self) -> bool:
        """A choice whose local values are labels that Dynamics' metadata must give."""
        return (
            self.type is FieldType.CHOICE
            and self.labels
            and not self.choices
            and not self.options_read
        )


@dataclass(frozen=True)
class Lookup:
    """A local foreign key that maps to a Dataverse lookup.

    ``column`` is the local column (``account_id``); ``target`` the local object it points
    to; ``navigation`` the single-valued navigation property used with ``@odata.bind``
    when writing; ``value_attribute`` the ``_x_value`` attribute Dataverse returns on read.
    """

    column: str
    target: str
    navigation: str
    value_attribute: str


@dataclass(frozen=True)
class ObjectSpec:
    """How one local table maps to one Dataverse entity set."""

    name: str
    table: str
    entity_set: str
    logical_name: str
    primary_key: str
    label_column: str
    fields: dict[str, str]  # local column -> Dataverse attribute
    lookups: tuple[Lookup, ...] = ()
    flow: Flow = Flow.BOTH
    conflict_rule: ConflictRule = ConflictRule.LOCAL_WINS
    field_rules: dict[str, ConflictRule] = field(default_factory=dict)
    field_flows: dict[str, Flow] = field(default_factory=dict)
    # Every mapped column with its type, lookups included, in the mapping's order.
    field_specs: dict[str, FieldSpec] = field(default_factory=dict)
    # The object's own sync filter attribute: None takes the sync_filter_field setting,
    # "" none (see ``filter_field``).
    sync_filter_field: str | None = None
    # True for the contract's four objects, whose tables the initial migration creates.
    standard: bool = False
    # An application's existing table (``table`` given for an object that is not
    # standard): crmsync adds only ``crm_id_column`` and its triggers, never the
    # timestamps of the tables it creates. The local id is ``id_column``'s value.
    attached: bool = False
    id_column: str = "id"
    crm_id_column: str = "crm_id"

    @property
    def columns(self) -> tuple[str, ...]:
        """Local data columns a client may write (fields, then lookups)."""
        return (*self.fields, *(lk.column for lk in self.lookups))

    @property
    def timestamps(self) -> bool:
        """Whether the table has crmsync's ``created_at``, ``updated_at`` and
        ``crm_deleted_at`` (every table crmsync creates; not an attached one)."""
        return not self.attached

    def rule_for(self, column: str) -> ConflictRule:
        if not self.flow.pushes:
            # One-way objects always take Dynamics' value.
            return ConflictRule.CRM_WINS
        return self.field_rules.get(column, self.conflict_rule)

    def flow_for(self, column: str) -> Flow:
        return self.field_flows.get(column, self.flow)

    def filter_field(self, setting: str | None) -> str | None:
        """The Yes/No attribute that keeps this object's records out of the sync: its
        own, else the ``sync_filter_field`` setting; None when unfiltered."""
        own = self.sync_filter_field
        return (setting or None) if own is None else (own or None)


STANDARD_OBJECTS: tuple[str, ...] = ("lead", "contact", "account", "opportunity")
"""The contract's objects, in its order; a mapping may add others."""
