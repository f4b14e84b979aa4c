"""sync rate: synced records per (object, direction, minute), for the time to drain

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:50:00

- ``sync_rate``: per (object, direction, UTC minute) the records synced, when the first
  and the last batch of the minute finished and how many records the first held. The
  time to drain (``store/drain.py``) reads the rate of the last minutes from it instead
  of the 15-minute ``sync_throughput`` buckets. Issue 19, item 2.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_rate",
        sa.Column("minute_start", UTCDateTime(), nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("synced", sa.BigInteger(), nullable=False),
        sa.Column("first_synced_at", UTCDateTime(), nullable=False),
        sa.Column("last_synced_at", UTCDateTime(), nullable=False),
        sa.Column("first_batch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute_start", "object", "direction", name=op.f("pk_sync_rate")),
    )


def downgrade() -> None:
    op.drop_table("sync_rate")
