"""shared throttle (Retry-After for every worker sharing the credential)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 17:30:00

Placeholder, filled in by the work that owns it.
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
