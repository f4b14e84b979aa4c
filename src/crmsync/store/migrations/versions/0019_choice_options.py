"""the options of choices whose labels Dynamics gives, as the workers read them

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 16:00:00

- ``sync_choice_option``: per object, field and option value, the option's label and
  the Dynamics attribute it was read from, with when a worker read it. Workers replace
  a field's rows each time they read its options; ``crmsync serve`` only reads them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_choice_option",
        sa.Column("object", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("attribute", sa.String(length=100), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("read_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("object", "field", "value", name=op.f("pk_sync_choice_option")),
    )


def downgrade() -> None:
    op.drop_table("sync_choice_option")
