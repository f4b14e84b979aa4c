"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 14:12:15.193499
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync.store.types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "account",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=400), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("crm_deleted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.create_index("uq_account_crm_id", ["crm_id"], unique=True)

    op.create_table(
        "contact",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("first_name", sa.String(length=255), nullable=True),
        sa.Column("last_name", sa.String(length=255), nullable=True),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "created_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("crm_deleted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.create_index("uq_contact_crm_id", ["crm_id"], unique=True)

    op.create_table(
        "lead",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("first_name", sa.String(length=255), nullable=True),
        sa.Column("last_name", sa.String(length=255), nullable=True),
        sa.Column("company", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("crm_deleted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("lead", schema=None) as batch_op:
        batch_op.create_index("uq_lead_crm_id", ["crm_id"], unique=True)

    op.create_table(
        "opportunity",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=400), nullable=True),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "created_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("crm_deleted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opportunity")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("opportunity", schema=None) as batch_op:
        batch_op.create_index("uq_opportunity_crm_id", ["crm_id"], unique=True)

    op.create_table(
        "sync_conflict",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("local_value", sa.Text(), nullable=True),
        sa.Column("crm_value", sa.Text(), nullable=True),
        sa.Column("winner", sa.String(length=8), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_conflict")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("sync_conflict", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sync_conflict_object_detected", ["object", "detected_at"], unique=False
        )

    op.create_table(
        "sync_cursor",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("delta_link", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("object", name=op.f("pk_sync_cursor")),
    )
    op.create_table(
        "sync_error",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("record_key", sa.String(length=40), nullable=False),
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("record_label", sa.String(length=300), nullable=True),
        sa.Column("operation", sa.String(length=8), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("first_failed_at", UTCDateTime(), nullable=False),
        sa.Column("last_failed_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(length=10), server_default="open", nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_error")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("sync_error", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sync_error_record", ["object", "direction", "record_key", "status"], unique=False
        )
        batch_op.create_index(
            "ix_sync_error_status_last_failed", ["status", "last_failed_at", "id"], unique=False
        )

    op.create_table(
        "sync_pause",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("paused_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("object", "direction", name=op.f("pk_sync_pause")),
    )
    op.create_table(
        "sync_queue",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("record_key", sa.String(length=40), nullable=False),
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("operation", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=300), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=8), server_default="pending", nullable=False),
        sa.Column("first_queued_at", UTCDateTime(), nullable=False),
        sa.Column("last_changed_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("last_error_code", sa.String(length=32), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_queue")),
        sa.UniqueConstraint(
            "object",
            "direction",
            "record_key",
            name=op.f("uq_sync_queue_object_direction_record_key"),
        ),
    )
    with op.batch_alter_table("sync_queue", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sync_queue_backlog",
            ["state", "object", "direction", "operation", "first_queued_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_sync_queue_due", ["state", "direction", "next_attempt_at"], unique=False
        )

    op.create_table(
        "sync_record",
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column(
            "record_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("crm_id", sa.String(length=36), nullable=True),
        sa.Column("etag", sa.String(length=64), nullable=True),
        sa.Column("crm_version", sa.BigInteger(), nullable=True),
        sa.Column("crm_modified_at", UTCDateTime(), nullable=True),
        sa.Column("last_synced_at", UTCDateTime(), nullable=False),
        sa.Column("synced_values", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("object", "record_id", name=op.f("pk_sync_record")),
    )
    op.create_table(
        "sync_suppress",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_suppress")),
    )
    op.create_table(
        "sync_throughput",
        sa.Column("bucket_start", UTCDateTime(), nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("operation", sa.String(length=8), nullable=False),
        sa.Column("synced", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "bucket_start", "object", "direction", "operation", name=op.f("pk_sync_throughput")
        ),
    )


def downgrade() -> None:

    op.drop_table("sync_throughput")
    op.drop_table("sync_suppress")
    op.drop_table("sync_record")
    with op.batch_alter_table("sync_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_queue_due")
        batch_op.drop_index("ix_sync_queue_backlog")

    op.drop_table("sync_queue")
    op.drop_table("sync_pause")
    with op.batch_alter_table("sync_error", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_error_status_last_failed")
        batch_op.drop_index("ix_sync_error_record")

    op.drop_table("sync_error")
    op.drop_table("sync_cursor")
    with op.batch_alter_table("sync_conflict", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_conflict_object_detected")

    op.drop_table("sync_conflict")
    with op.batch_alter_table("opportunity", schema=None) as batch_op:
        batch_op.drop_index("uq_opportunity_crm_id")

    op.drop_table("opportunity")
    with op.batch_alter_table("lead", schema=None) as batch_op:
        batch_op.drop_index("uq_lead_crm_id")

    op.drop_table("lead")
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.drop_index("uq_contact_crm_id")

    op.drop_table("contact")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_index("uq_account_crm_id")

    op.drop_table("account")
