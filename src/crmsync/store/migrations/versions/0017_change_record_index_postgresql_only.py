"""capture log by record: ix_sync_change_record on PostgreSQL only

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 08:00:00

- SQLite drops ``ix_sync_change_record`` (migration 0016). Every captured write pays
  for it: the log's row lands at the end of the table, but its index entry lands at
  the record's place, one more page a transaction. With it, a captured update ran at
  0.77 of a plain one's rate at synchronous=FULL (0.92 without) and 0.40 at NORMAL
  (0.61; ``bench/capture.py``). SQLite's backlog read of a long tail reads the log in order
  (``store.backlog``), and its lookups by record scan the log once per statement.
- PostgreSQL keeps it: its heap takes the row wherever there is room, its read of a
  long tail merges the log in record order off the index, and capture's ratio was the
  same with it as without (0.90 to 0.93 against 0.89 to 0.99).
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_sync_change_record", table_name="sync_change")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index("ix_sync_change_record", "sync_change", ["object", "record_id", "deleted"])
