"""SQLite error search index (FTS5 trigram)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 17:30:00

SQLite only (PostgreSQL has the ``pg_trgm`` indexes of 0002): ``sync_error_fts``, an
FTS5 table with the trigram tokenizer over the columns the Sync Errors search reads, so
that a search of three characters or more reads its candidate rows instead of every
error (``store/error_search.py``). Triggers keep the index; why each option, beside it.

A later migration that rebuilds ``sync_error`` on SQLite (``batch_alter_table`` copies
it into a new table and drops the old one) drops these triggers with it and must create
them again; ``tests/integration/test_migrations.py`` checks they exist at head.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Fixed here rather than imported: this migration creates what it created in 0004.
TABLE = "sync_error_fts"
COLUMNS = ("error_message", "error_code", "record_label", "record_key", "crm_id", "record_id")
TRIGGERS = ("sync_error_fts_insert", "sync_error_fts_update", "sync_error_fts_delete")


def _values(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c}" for c in ("id", *COLUMNS))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    names = ", ".join(COLUMNS)
    # External content (``content='sync_error'``): the text is stored once, in sync_error,
    # and ``rebuild`` seeds the index from the existing errors. A contentless table would
    # index the same but could neither be rebuilt nor checked against the table
    # (``integrity-check``), and would need the same delete triggers.
    # ``detail=none``: no token positions, a quarter of the size (docs/benchmarks.md); the
    # search asks for every trigram of its text rather than the phrase, and ``LIKE``
    # decides on the candidates either way. ``columnsize=0``: no per-row token counts,
    # which only serve ranking (the search orders newest first).
    op.execute(
        f"CREATE VIRTUAL TABLE {TABLE} USING fts5({names}, content='sync_error',"
        " content_rowid='id', tokenize='trigram case_sensitive 0',"
        " detail=none, columnsize=0)"
    )
    # Only this module's constants go into the SQL below (no input): hence the noqa.
    insert = f"INSERT INTO {TABLE} (rowid, {names}) VALUES ({_values('new')});"  # noqa: S608
    delete = (
        f"INSERT INTO {TABLE} ({TABLE}, rowid, {names})"  # noqa: S608
        f" VALUES ('delete', {_values('old')});"
    )
    # Insert, delete, and an update of a searched column only: resolving, retrying or
    # dismissing an error touches none of them and costs the index nothing.
    changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in ("id", *COLUMNS))
    op.execute(f"CREATE TRIGGER {TRIGGERS[0]} AFTER INSERT ON sync_error BEGIN {insert} END")
    op.execute(
        f"CREATE TRIGGER {TRIGGERS[1]} AFTER UPDATE OF id, {names} ON sync_error"
        f" WHEN {changed} BEGIN {delete} {insert} END"
    )
    op.execute(f"CREATE TRIGGER {TRIGGERS[2]} AFTER DELETE ON sync_error BEGIN {delete} END")
    op.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('rebuild')")  # noqa: S608


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")
