"""resync and audit: jobs, the audit's first pass and its findings

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 04:45:00

- ``sync_job``: resyncs and audits as jobs with progress, a lease and a resume position.
- ``sync_audit_seen``: the ids and versions an audit read from Dynamics.
- ``sync_audit``: the last audit's findings per object.
- ``ix_sync_record_object_crm_id``: the local record of a Dynamics id. Issue 20.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_job",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("object", sa.String(length=32), nullable=True),
        sa.Column("direction", sa.String(length=8), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("position", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_job")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sync_job_state", "sync_job", ["state", "id"])
    op.create_table(
        "sync_audit_seen",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("crm_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("excluded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "object", "crm_id", name=op.f("pk_sync_audit_seen")),
    )
    op.create_table(
        "sync_audit",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("checked", sa.BigInteger(), nullable=False),
        sa.Column("only_local", sa.BigInteger(), nullable=False),
        sa.Column("only_dynamics", sa.BigInteger(), nullable=False),
        sa.Column("different", sa.BigInteger(), nullable=False),
        sa.Column("repaired", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("object", name=op.f("pk_sync_audit")),
    )
    op.create_index("ix_sync_record_object_crm_id", "sync_record", ["object", "crm_id"])


def downgrade() -> None:
    op.drop_index("ix_sync_record_object_crm_id", table_name="sync_record")
    op.drop_table("sync_audit")
    op.drop_table("sync_audit_seen")
    op.drop_index("ix_sync_job_state", table_name="sync_job")
    op.drop_table("sync_job")
