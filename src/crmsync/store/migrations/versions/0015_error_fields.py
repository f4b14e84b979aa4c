"""sync errors' field, for the errors journaled before it was parsed

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 12:00:00

- ``sync_error.field`` of the rows without one, derived from their object, code and
  message by the parser that gives new errors theirs (``diagnosis.field_of``), through
  the mapping in force (``mapping.active()``: the one ``crmsync db upgrade`` runs
  with). Migration 0012 added the column and categorised the existing rows, but left
  their field null, so the summary's "by field" and the ``field=`` filter missed them.
- A row the parser names nothing for stays null; a field already set is never changed.
  Read in batches by id, updated by id: the open errors' counts (0012's triggers)
  follow each update.
- Data only: the downgrade leaves the derived fields, as a new error would have had them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crmsync import diagnosis
from crmsync.mapping import active

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BATCH = 5_000

_errors = sa.table(
    "sync_error",
    sa.column("id", sa.BigInteger()),
    sa.column("object", sa.String()),
    sa.column("error_code", sa.String()),
    sa.column("error_message", sa.Text()),
    sa.column("field", sa.String()),
)


def upgrade() -> None:
    backfill(op.get_bind())


def backfill(conn: sa.Connection) -> int:
    """Give the errors without a field the one their message names; returns how many."""
    specs = active()
    e = _errors.c
    done, after = 0, 0
    while True:
        rows = conn.execute(
            sa.select(e.id, e.object, e.error_code, e.error_message)
            .where(e.field.is_(None), e.id > after)
            .order_by(e.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return done
        after = rows[-1].id
        found = [
            {"b_id": r.id, "b_field": field}
            for r in rows
            if (field := diagnosis.field_of(r.object, r.error_code, r.error_message, specs))
        ]
        if found:
            conn.execute(
                sa.update(_errors)
                .where(e.id == sa.bindparam("b_id"), e.field.is_(None))
                .values(field=sa.bindparam("b_field")),
                found,
            )
            done += len(found)


def downgrade() -> None:
    pass
