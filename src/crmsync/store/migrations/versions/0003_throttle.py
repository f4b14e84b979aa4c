"""shared throttle (Retry-After for every worker sharing the credential)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 17:30:00

- ``dynamics_throttle``: per Dynamics credential (a hash, never the secret), the UTC
  instant until which Dynamics told it to wait; every worker process polls it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dynamics_throttle",
        sa.Column("credential", sa.String(length=64), nullable=False),
        sa.Column("throttled_until", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("credential", name=op.f("pk_dynamics_throttle")),
    )


def downgrade() -> None:
    op.drop_table("dynamics_throttle")
