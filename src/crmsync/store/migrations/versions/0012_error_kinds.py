"""sync errors' field, category and automatic retry; counts of the open errors

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-27 04:40:00

- ``sync_error.field``, ``category`` (existing rows get theirs from code and message,
  ``crmsync.diagnosis``) and ``retry_at`` (indexed: the due automatic retries).
- ``sync_error_count``: +1/-1 rows per (object, direction, error_code, category, field)
  of the open errors, kept by triggers and seeded here (``store/error_counts.py``).
- ``ADD COLUMN`` (no table rebuild on SQLite), so the search triggers of 0004 stay.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync import diagnosis
from crmsync.store import error_counts
from crmsync.store.types import UTCDateTime

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

# Codes whose category depends on the message: decided row by row.
BY_MESSAGE = ("", "0x0", "0x80048d19", "crmsync.local_constraint")


def upgrade() -> None:
    op.add_column("sync_error", sa.Column("field", sa.String(length=64), nullable=True))
    op.add_column(
        "sync_error",
        sa.Column("category", sa.String(length=20), server_default="other", nullable=False),
    )
    op.add_column("sync_error", sa.Column("retry_at", UTCDateTime(), nullable=True))
    op.create_index("ix_sync_error_retry_at", "sync_error", ["retry_at"])
    _categorise(op.get_bind())
    op.create_table(
        "sync_error_count",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    error_counts.install(op.get_bind())


def _categorise(conn: sa.Connection) -> None:
    errors = sa.table(
        "sync_error",
        sa.column("id"),
        sa.column("error_code"),
        sa.column("error_message"),
        sa.column("category"),
    )
    codes = [c for (c,) in conn.execute(sa.select(errors.c.error_code).distinct())]
    for code in codes:
        if code.lower() in BY_MESSAGE:
            rows = conn.execute(
                sa.select(errors.c.id, errors.c.error_message).where(errors.c.error_code == code)
            ).all()
            for error_id, message in rows:
                category = diagnosis.category_of(code, message)
                conn.execute(
                    sa.update(errors).where(errors.c.id == error_id).values(category=category)
                )
            continue
        conn.execute(
            sa.update(errors)
            .where(errors.c.error_code == code)
            .values(category=diagnosis.category_of(code))
        )


def downgrade() -> None:
    error_counts.uninstall(op.get_bind())
    op.drop_table("sync_error_count")
    op.drop_index("ix_sync_error_retry_at", table_name="sync_error")
    # Plain DROP COLUMN (SQLite 3.35+): no rebuild, so 0004's triggers stay.
    for column in ("retry_at", "category", "field"):
        op.drop_column("sync_error", column)
