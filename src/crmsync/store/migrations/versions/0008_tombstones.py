"""tombstones: the Dynamics ids of records crmsync deleted

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:10:00

- ``sync_tombstone``: one row per (object, Dynamics id) crmsync deleted, locally or in
  Dynamics. A pull that read a record before the delete and stages it after finds no
  local row, no queue entry and no sync state; the tombstone keeps it from being
  inserted again (engine/changes.py ``stage_operation``). Issue 16, item 1.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_tombstone",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("crm_id", sa.String(length=36), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("object", "crm_id", name=op.f("pk_sync_tombstone")),
    )


def downgrade() -> None:
    op.drop_table("sync_tombstone")
