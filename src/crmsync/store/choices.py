"""The local values of a choice that are none of its options: what a worker reports at
start for a choice whose labels Dynamics gives (an option renamed or removed there, a
value the application wrote that Dynamics never had). Reads only.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import FieldSpec, ObjectSpec
from crmsync.store.local_tables import local_table

SHOWN = 10


def unknown_values(
    conn: Connection, spec: ObjectSpec, field: FieldSpec, labels: Collection[str]
) -> tuple[list[tuple[str, int]], int]:
    """The most common local values of ``field`` that are not among ``labels`` (at most
    ``SHOWN``, with their row counts, most rows first), and how many rows hold any."""
    column = local_table(spec).c[field.column]
    stray = sa.and_(column.is_not(None), column.not_in(list(labels)))
    counted = sa.func.count().label("n")
    rows = conn.execute(
        sa.select(column, counted)
        .where(stray)
        .group_by(column)
        .order_by(counted.desc(), column)
        .limit(SHOWN)
    ).all()
    if not rows:
        return [], 0
    total = conn.execute(
        sa.select(sa.func.count()).select_from(column.table).where(stray)
    ).scalar_one()
    return [(str(value), int(n)) for value, n in rows], int(total)
