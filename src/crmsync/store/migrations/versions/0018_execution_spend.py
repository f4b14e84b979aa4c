"""execution time spent per worker process (the budget shared by one application user)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 12:30:00

- ``dynamics_spend``: per Dynamics credential (a hash, never the secret) and worker
  process (a random id for its life), the execution time its requests spent over
  Dataverse's sliding window, as the client estimates it, the share of the budget it
  paces to (an execution-time 429 lowers it), and when it said so. Dataverse
  grants 1,200 s of it per user per 5 minutes (api-limits.md), not per process: each
  process reads what the others spent and leaves it to them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dynamics_spend",
        sa.Column("credential", sa.String(length=64), nullable=False),
        sa.Column("process", sa.String(length=32), nullable=False),
        sa.Column("spent_ms", sa.Float(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("credential", "process", name=op.f("pk_dynamics_spend")),
    )


def downgrade() -> None:
    op.drop_table("dynamics_spend")
