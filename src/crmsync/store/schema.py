"""The store's tables, declared once. Alembic migrations must produce exactly this.

Local tables (``lead``, ``contact``, ``account``, ``opportunity``) belong to the
applications; every other table is crmsync's own bookkeeping, each described beside its
declaration. The capture triggers append to ``sync_change``, which is folded into
``sync_queue`` (``store/capture.py``); the backlog is the queue's ``pending`` rows, parked
errors its ``parked`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from crmsync.store.types import UTCDateTime

# Deterministic constraint names, so migrations and metadata compare equal on both backends.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
NOW = text("CURRENT_TIMESTAMP")


def timestamps() -> list[Column[object]]:
    return [
        Column("created_at", UTCDateTime(), nullable=False, server_default=NOW),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=NOW),
        # Set instead of deleting the row when delete_behaviour = "mark".
        Column("crm_deleted_at", UTCDateTime(), nullable=True),
    ]


def _local(name: str, *columns: Column[object]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("crm_id", String(36), nullable=True),
        *columns,
        *timestamps(),
        Index(f"uq_{name}_crm_id", "crm_id", unique=True),
        # AUTOINCREMENT on SQLite: ids are never reused, so a queue entry never
        # outlives its record and gets attached to a new one.
        sqlite_autoincrement=True,
    )


# Local text columns are wider than Dataverse's attributes (emailaddress1 is 100,
# lastname 50): a value Dynamics would refuse is still kept locally and shows up as a
# sync error with Dataverse's own message, rather than being refused to the application.
lead = _local(
    "lead",
    Column("email", String(255)),
    Column("first_name", String(255)),
    Column("last_name", String(255)),
    Column("company", String(255)),
)
account = _local("account", Column("name", String(400)))
contact = _local(
    "contact",
    Column("email", String(255)),
    Column("first_name", String(255)),
    Column("last_name", String(255)),
    # No foreign key: Dynamics may delete an account before its contacts, and plain SQL
    # writers must not be refused for a reference that sync will resolve later.
    Column("account_id", Id, nullable=True),
)
opportunity = _local(
    "opportunity",
    Column("name", String(400)),
    Column("account_id", Id, nullable=True),
)

# The contract's four tables, as the initial migration created them; the mapping's own
# tables (and new columns of these) are built by ``store/local_tables.py``.
STANDARD_TABLES: tuple[Table, ...] = (lead, contact, account, opportunity)

# One row per (object, direction, record) with changes not yet synced: the backlog is
# its ``pending`` rows, parked errors are its ``parked`` rows.
sync_queue = Table(
    "sync_queue",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("object", String(32), nullable=False),
    Column("direction", String(8), nullable=False),
    # to_crm: the local id as text; from_crm: the Dynamics id (the local one may not exist).
    Column("record_key", String(40), nullable=False),
    Column("record_id", Id, nullable=True),
    Column("crm_id", String(36), nullable=True),
    Column("operation", String(8), nullable=False),
    Column("label", String(300), nullable=True),
    # from_crm: the Dynamics row as received; to_crm: unused (the local row is read at send).
    Column("payload", JSON, nullable=True),
    Column("state", String(8), nullable=False, server_default="pending"),
    Column("first_queued_at", UTCDateTime(), nullable=False),
    Column("last_changed_at", UTCDateTime(), nullable=False),
    # Bumped by every captured change: a worker whose send raced a newer change sees
    # the version moved and keeps the entry instead of deleting it.
    Column("version", Integer, nullable=False, server_default="1"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("last_error_code", String(32), nullable=True),
    Column("last_error_message", Text, nullable=True),
    UniqueConstraint("object", "direction", "record_key"),
    # Backlog counts per object/direction/operation and the oldest entry of each come
    # from this index alone (an index-only range per group, ordered by queue time).
    Index("ix_sync_queue_backlog", "state", "object", "direction", "operation", "first_queued_at"),
    # Workers claim due entries per direction in next-attempt order.
    Index("ix_sync_queue_due", "state", "direction", "next_attempt_at"),
    # No AUTOINCREMENT: entry ids are never referenced once an entry is gone, and
    # SQLite's sequence table would cost every captured write one more row update.
)

# The capture log: one row per captured local write, appended by the capture triggers
# and folded into ``sync_queue`` in batches (store/capture.py).
sync_change = Table(
    "sync_change",
    metadata,
    # Capture order: rows of one record are folded in this order.
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("object", String(32), nullable=False),
    Column("record_id", Id, nullable=False),
    Column("deleted", Boolean, nullable=False),
    # A delete's record is gone by the time it is folded: what it was is kept here.
    Column("crm_id", String(36), nullable=True),
    Column("label", String(300), nullable=True),
    Column("changed_at", UTCDateTime(), nullable=False),
    # PostgreSQL: a record's rows, the log's records in id order and its deletes, off
    # the index alone (the backlog read of a long unfolded tail: store/backlog.py).
    # Not on SQLite, where it cost every captured write a page (migration 0017).
    Index("ix_sync_change_record", "object", "record_id", "deleted").ddl_if(dialect="postgresql"),
    # No AUTOINCREMENT on SQLite, for the same reason as sync_queue.
)

# On SQLite, a row here while crmsync applies Dynamics' changes tells the capture
# triggers to stay quiet (PostgreSQL uses a transaction-local setting).
sync_suppress = Table(
    "sync_suppress",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
)

# What was last synced per record (CRM id, ETag, values): the base for conflict
# detection and the record's sync state.
sync_record = Table(
    "sync_record",
    metadata,
    Column("object", String(32), primary_key=True),
    Column("record_id", Id, primary_key=True, autoincrement=False),
    Column("crm_id", String(36), nullable=True),
    Column("etag", String(64), nullable=True),
    Column("crm_version", BigInteger, nullable=True),
    Column("crm_modified_at", UTCDateTime(), nullable=True),
    Column("last_synced_at", UTCDateTime(), nullable=False),
    # Field values (local column names) both sides agreed on at the last sync.
    Column("synced_values", JSON, nullable=False),
    # The sync filter field said No: the record syncs in neither direction until
    # Dynamics includes it again (engine/changes.py, plan.py, apply.py).
    Column("excluded", Boolean, nullable=False, server_default=false()),
    # The audit finds the local record of a Dynamics id missing locally (a delete the
    # sync never saw) by this (engine/audit.py).
    Index("ix_sync_record_object_crm_id", "object", "crm_id"),
)

# Records crmsync deleted (either side), by Dynamics id: a change read from Dynamics
# before the delete but staged after it must not insert the record again (the delete
# removed its local row, queue entry and sync state). Pruned after ``KEEP_DAYS``.
sync_tombstone = Table(
    "sync_tombstone",
    metadata,
    Column("object", String(32), primary_key=True),
    Column("crm_id", String(36), primary_key=True),
    Column("deleted_at", UTCDateTime(), nullable=False),
)

# Failed records as operators see them in Sync Errors.
sync_error = Table(
    "sync_error",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("object", String(32), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("record_key", String(40), nullable=False),
    Column("record_id", Id, nullable=True),
    Column("crm_id", String(36), nullable=True),
    Column("record_label", String(300), nullable=True),
    Column("operation", String(8), nullable=False),
    Column("error_code", String(64), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("first_failed_at", UTCDateTime(), nullable=False),
    Column("last_failed_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("status", String(10), nullable=False, server_default="open"),
    Column("resolved_at", UTCDateTime(), nullable=True),
    # The local column the failure concerns (or none), its kind (``crmsync.diagnosis``)
    # and, for a passing kind, when it is retried by itself (``engine.auto_retry``).
    Column("field", String(64), nullable=True),
    Column("category", String(20), nullable=False, server_default="other"),
    Column("retry_at", UTCDateTime(), nullable=True),
    Index("ix_sync_error_status_last_failed", "status", "last_failed_at", "id"),
    Index("ix_sync_error_retry_at", "retry_at"),
    Index("ix_sync_error_record", "object", "direction", "record_key", "status"),
    # Listing or exporting every status, newest first, without sorting the table.
    Index("ix_sync_error_last_failed", "last_failed_at", "id"),
    sqlite_autoincrement=True,
)

# Every state change of a record's sync, both directions, written by the store function
# that makes the change in the same transaction (``store/history.py``). ``record_key`` is
# the local id as text, or the Dynamics id while no local row holds the record. Pruned by
# upkeep after ``history_retention_days``, a record's newest events kept.
sync_event = Table(
    "sync_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("object", String(32), nullable=False),
    Column("record_key", String(40), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("event", String(16), nullable=False),
    Column("direction", String(8), nullable=True),
    Column("operation", String(8), nullable=True),
    Column("fields", JSON(none_as_null=True), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("detail", JSON(none_as_null=True), nullable=True),
    # A record's timeline, newest first, paged by id. No index on ``at``: every write
    # pays for each index, and pruning walks the key (the oldest events come first).
    Index("ix_sync_event_record", "object", "record_key", "id"),
)

# PostgreSQL only, created by migration 0002 and not declared above (they are not
# portable): trigram GIN indexes (pg_trgm) so that the case-insensitive substring search
# of the Sync Errors list (``q``) is an index scan on every searched column.
PG_SEARCH_INDEXES = {
    "ix_sync_error_message_trgm": "error_message",
    "ix_sync_error_code_trgm": "error_code",
    "ix_sync_error_label_trgm": "record_label",
    "ix_sync_error_key_trgm": "record_key",
    "ix_sync_error_crm_id_trgm": "crm_id",
    "ix_sync_error_record_id_trgm": "(CAST(record_id AS VARCHAR))",
}


# SQLite only, created by migration 0004 and not declared above (virtual tables are not
# portable): an FTS5 trigram index over the same searched columns of ``sync_error``, kept
# by triggers, narrowing the search to candidate rows (``store/error_search.py``).
# External content: the text stays in ``sync_error`` alone; FTS5 keeps these shadow tables.
ERROR_FTS = "sync_error_fts"
ERROR_FTS_TABLES = frozenset(
    {
        ERROR_FTS,
        *(f"{ERROR_FTS}_{shadow}" for shadow in ("data", "idx", "content", "docsize", "config")),
    }
)


# Declared above for PostgreSQL alone (``Index.ddl_if``), which Alembic's comparison
# does not read: ``declared_on`` leaves them out of another database's.
POSTGRESQL_ONLY_INDEXES = frozenset({"ix_sync_change_record"})
IncludeObject = Callable[[object, "str | None", str, bool, object], bool]


def declared_on(dialect: str) -> IncludeObject:
    """Alembic ``include_object`` for a database of ``dialect``: compare only what the
    metadata declares for it, leaving out the search structures that migrations 0002
    (PostgreSQL) and 0004 (SQLite) create by hand."""

    def include(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        if type_ == "index" and reflected and name in PG_SEARCH_INDEXES:
            return False
        if type_ == "index" and dialect != "postgresql" and name in POSTGRESQL_ONLY_INDEXES:
            return False
        return not (type_ == "table" and reflected and name in ERROR_FTS_TABLES)

    return include


BUCKET_MINUTES = 15


def bucket_start(at: datetime) -> datetime:
    """The start of the 15-minute throughput bucket holding ``at``: the key of
    ``sync_throughput``.

    Fifteen minutes divide every clock hour of every zone in use (offsets are whole
    quarter hours: +05:30, +05:45, +12:45), so zone hours sum whole buckets exactly.
    """
    return at.replace(minute=at.minute - at.minute % BUCKET_MINUTES, second=0, microsecond=0)


def minute_start(at: datetime) -> datetime:
    """The start of the UTC minute holding ``at``: the key of ``sync_rate``."""
    return at.replace(second=0, microsecond=0)


# Synced-record counters in 15-minute buckets, so that clock hours of zones with 30- and
# 45-minute offsets can be summed exactly.
sync_throughput = Table(
    "sync_throughput",
    metadata,
    Column("bucket_start", UTCDateTime(), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("direction", String(8), primary_key=True),
    Column("operation", String(8), primary_key=True),
    Column("synced", BigInteger, nullable=False, server_default="0"),
)

# Records synced per (object, direction) and UTC minute, when the minute's first and last
# batch finished and how many records its first batch held: the time to drain reads the
# rate of the last minutes from here, measured from the first sync (idle time before a
# drain started is not in it). One upsert per finished batch; pruned by upkeep.
sync_rate = Table(
    "sync_rate",
    metadata,
    Column("minute_start", UTCDateTime(), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("direction", String(8), primary_key=True),
    Column("synced", BigInteger, nullable=False),
    Column("first_synced_at", UTCDateTime(), nullable=False),
    Column("last_synced_at", UTCDateTime(), nullable=False),
    Column("first_batch", BigInteger, nullable=False),
)

# The backlog per (object, direction) once per 15-minute bucket: the queue cannot tell
# what the backlog was hours ago (synced entries are gone), and the trend needs it.
sync_backlog_sample = Table(
    "sync_backlog_sample",
    metadata,
    Column("sampled_at", UTCDateTime(), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("direction", String(8), primary_key=True),
    Column("backlog", BigInteger, nullable=False),
)

# Backlog counts per (object, direction, operation) as +1/-1 rows appended by triggers on
# sync_queue and folded into one row per group by upkeep: see store/backlog_counts.py.
# No key and no index: every counted write appends one row and nothing else (a bigserial
# key cost PostgreSQL ~5 µs more per append: a sequence step and a B-tree insertion);
# rows are only ever read, deleted and folded all together.
sync_backlog_count = Table(
    "sync_backlog_count",
    metadata,
    Column("object", String(32), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("operation", String(8), nullable=False),
    Column("n", BigInteger, nullable=False),
)

# +1/-1 rows per (object, direction, error_code, category, field) of the open errors,
# appended by triggers on sync_error and folded by upkeep: see store/error_counts.py.
sync_error_count = Table(
    "sync_error_count",
    metadata,
    Column("object", String(32), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("error_code", String(64), nullable=False),
    Column("category", String(20), nullable=False),
    Column("field", String(64), nullable=True),
    Column("n", BigInteger, nullable=False),
)

# The change-tracking delta link per object.
sync_cursor = Table(
    "sync_cursor",
    metadata,
    Column("object", String(32), primary_key=True),
    Column("delta_link", Text, nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# The conflict journal.
sync_conflict = Table(
    "sync_conflict",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("object", String(32), nullable=False),
    Column("record_id", Id, nullable=True),
    Column("crm_id", String(36), nullable=True),
    Column("field", String(64), nullable=False),
    Column("local_value", Text, nullable=True),
    Column("crm_value", Text, nullable=True),
    Column("winner", String(8), nullable=False),
    Column("rule", String(16), nullable=False),
    Column("detected_at", UTCDateTime(), nullable=False),
    Index("ix_sync_conflict_object_detected", "object", "detected_at"),
    sqlite_autoincrement=True,
)

# What is paused, by object and direction.
sync_pause = Table(
    "sync_pause",
    metadata,
    # '*' stands for every object or both directions.
    Column("object", String(32), primary_key=True),
    Column("direction", String(8), primary_key=True),
    Column("paused_at", UTCDateTime(), nullable=False),
    # Null for an operator's pause; why, when crmsync paused an object by itself (a
    # mapping Dynamics no longer matches).
    Column("reason", Text(), nullable=True),
)

# One row per Dynamics credential (application user): service protection limits are per
# user, so a 429 seen by one worker process must pause all of them. ``credential`` is a
# hash of the environment URL, tenant and client id (store/throttle.py), never a secret;
# ``throttled_until`` is UTC wall time and only ever moves later.
dynamics_throttle = Table(
    "dynamics_throttle",
    metadata,
    Column("credential", String(64), primary_key=True),
    Column("throttled_until", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Per Dynamics credential and worker process, the execution time (ms, the client's
# estimate) its requests spent over Dataverse's sliding window and the share of the
# budget it paces to: the budget is the user's, so each process leaves what the others
# spent (``store.throttle``). A row not
# updated for ``throttle.SPEND_STALE`` is a process that is gone; pruned later.
dynamics_spend = Table(
    "dynamics_spend",
    metadata,
    Column("credential", String(64), primary_key=True),
    Column("process", String(32), primary_key=True),
    Column("spent_ms", Float(), nullable=False),
    Column("share", Float(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Console sessions ended by a logout before their cookie expires: a signed cookie stays
# valid until then, so a copy taken earlier is refused by its id. Pruned once expired.
console_session_revoked = Table(
    "console_session_revoked",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Resyncs and audits as jobs (store/jobs.py): one row per job, run by whichever process
# holds its lease (a worker's upkeep, or the CLI that asked for it); ``position`` is where
# it got to, saved in the transaction of the work it did, so a restart resumes there.
sync_job = Table(
    "sync_job",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("object", String(32), nullable=True),
    Column("direction", String(8), nullable=True),
    Column("params", JSON, nullable=False),
    Column("state", String(10), nullable=False),
    Column("done", BigInteger, nullable=False, server_default="0"),
    Column("total", BigInteger, nullable=True),
    Column("position", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Index("ix_sync_job_state", "state", "id"),
    sqlite_autoincrement=True,
)

# An audit's first pass: the ids and versions Dynamics holds, page by page, so that the
# comparison with the store runs in SQL and neither side is held in memory. Deleted with
# its job's comparison.
sync_audit_seen = Table(
    "sync_audit_seen",
    metadata,
    Column("job_id", Id, primary_key=True, autoincrement=False),
    Column("object", String(32), primary_key=True),
    Column("crm_id", String(36), primary_key=True),
    Column("version", BigInteger, nullable=True),
    # The sync filter field says No: not expected locally.
    Column("excluded", Boolean, nullable=False, server_default=false()),
)

# The last audit's findings per object (GET /api/v1/sync/audit, /metrics, Sync Status).
sync_audit = Table(
    "sync_audit",
    metadata,
    Column("object", String(32), primary_key=True),
    Column("job_id", Id, nullable=False),
    Column("checked", BigInteger, nullable=False),
    Column("only_local", BigInteger, nullable=False),
    Column("only_dynamics", BigInteger, nullable=False),
    Column("different", BigInteger, nullable=False),
    Column("repaired", BigInteger, nullable=False, server_default="0"),
    Column("samples", JSON, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
)

__all__ = [
    "ERROR_FTS",
    "ERROR_FTS_TABLES",
    "PG_SEARCH_INDEXES",
    "POSTGRESQL_ONLY_INDEXES",
    "STANDARD_TABLES",
    "console_session_revoked",
    "declared_on",
    "dynamics_throttle",
    "metadata",
    "sync_audit",
    "sync_audit_seen",
    "sync_backlog_count",
    "sync_backlog_sample",
    "sync_change",
    "sync_conflict",
    "sync_cursor",
    "sync_error",
    "sync_error_count",
    "sync_event",
    "sync_job",
    "sync_pause",
    "sync_queue",
    "sync_rate",
    "sync_record",
    "sync_suppress",
    "sync_throughput",
]

# The options of each choice whose labels Dynamics gives (``labels = true``), as a worker
# last read them from Dynamics' metadata (``store/choices.py``): ``crmsync serve``, which
# reads no metadata, checks a written label against them. ``attribute`` is the Dynamics
# column read: rows of an attribute the field no longer maps are not used.
sync_choice_option = Table(
    "sync_choice_option",
    metadata,
    Column("object", String(64), primary_key=True),
    Column("field", String(64), primary_key=True),
    Column("value", Integer(), primary_key=True, autoincrement=False),
    Column("attribute", String(100), nullable=False),
    Column("label", Text(), nullable=False),
    Column("read_at", UTCDateTime(), nullable=False),
)
