"""console sessions revoked by a logout

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:20:00

- ``console_session_revoked``: the ids of console sessions logged out before their
  signed cookie expires, so that a copy of the cookie taken earlier is refused by every
  console process; pruned once the cookie would have expired anyway.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_session_revoked",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_console_session_revoked")),
    )


def downgrade() -> None:
    op.drop_table("console_session_revoked")
