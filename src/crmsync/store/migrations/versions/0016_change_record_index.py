"""capture log by record: an index on sync_change (object, record_id, deleted)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 18:30:00

- ``ix_sync_change_record``: the log's rows of one record, and its records in id order,
  without reading the table. The backlog read of a long unfolded tail counts the
  tail's distinct records, its deletes and its records changed more than once off it
  (``store.backlog``); the lookups of a record's logged changes (``capture
  .logged_changes``, ``forget_changes``) seek it instead of scanning the log.
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sync_change_record", "sync_change", ["object", "record_id", "deleted"])


def downgrade() -> None:
    op.drop_index("ix_sync_change_record", table_name="sync_change")
