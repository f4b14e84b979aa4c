"""backlog counts kept by triggers on sync_queue

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 17:30:00

Placeholder, filled in by the work that owns it.
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
