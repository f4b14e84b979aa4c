"""sync events: every record's sync history, both directions

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 04:30:00

- ``sync_event``: one row per state change of a record's sync (captured, sent, synced,
  failed, ..., resynced), written by the store function that makes the change in the
  same transaction (issue 18, "History"). Indexed for a record's timeline, newest first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sync_event",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("record_key", sa.String(length=40), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=True),
        sa.Column("operation", sa.String(length=8), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_event")),
    )
    op.create_index("ix_sync_event_record", "sync_event", ["object", "record_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_sync_event_record", table_name="sync_event")
    op.drop_table("sync_event")
