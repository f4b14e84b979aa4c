"""capture log: triggers append to sync_change, the worker folds it into sync_queue

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 21:00:00

- ``sync_change``: one row per captured local write. The capture triggers (reinstalled
  by ``install_triggers`` right after the migrations, in the same transaction) append
  here instead of creating or refreshing the ``sync_queue`` entry themselves, which
  wrote the queue row, its three indexes and a backlog count row in every writer's
  transaction (``store/capture.py``; docs/benchmarks.md "Change capture").
- Entries already in ``sync_queue`` stay as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sync_change",
        sa.Column("seq", Id, autoincrement=True, nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("record_id", Id, nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("label", sa.String(length=300), nullable=True),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_sync_change")),
    )


def downgrade() -> None:
    # Changes still in the log are folded first: dropping them would lose them. The
    # capture triggers still append here until the older release's ``db upgrade`` puts
    # its own back, so writes fail loudly in between instead of going uncaptured.
    from crmsync.store import capture

    bind = op.get_bind()
    while capture.fold(bind):
        pass
    op.drop_table("sync_change")
