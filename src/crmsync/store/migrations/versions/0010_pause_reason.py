"""pause reason: why crmsync paused an object by itself

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:20:00

- ``sync_pause.reason``: null for a pause an operator asked for; the reason when crmsync
  paused an object itself because Dynamics no longer matches the mapping (issue 15).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_pause") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_pause") as batch:
        batch.drop_column("reason")
