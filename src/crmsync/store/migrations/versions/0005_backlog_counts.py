"""backlog counts kept by triggers on sync_queue

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 17:30:00

- ``sync_backlog_count``: +1/-1 rows per (object, direction, operation), appended by
  row triggers on ``sync_queue`` for entries that are not parked and folded by upkeep
  (``store/backlog_counts.py``), so that the backlog views read a few dozen rows instead
  of counting every pending entry (0.5 s at 1M entries; docs/benchmarks.md). No key and
  no index: an append is one row and nothing else.
- The triggers, created here rather than by ``install_triggers``: they depend on no
  configuration, and the table is seeded from the queue as it stands in this same
  transaction, so an existing store's counts start exact.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store import backlog_counts

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_backlog_count",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("operation", sa.String(length=8), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    backlog_counts.install(op.get_bind())


def downgrade() -> None:
    backlog_counts.uninstall(op.get_bind())
    op.drop_table("sync_backlog_count")
