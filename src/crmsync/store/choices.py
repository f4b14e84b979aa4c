"""The options of a choice whose labels Dynamics gives, as the store keeps them.

``save_options``: a worker, each time it reads a table's options from Dynamics,
replaces its fields' rows of ``sync_choice_option``; ``stored_options``: what
``crmsync serve`` checks a written label against (it reads, never writes).
``unknown_values``: the local values that are none of the options (an option renamed or
removed in Dynamics, a value the application wrote that Dynamics never had).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from crmsync.domain import FieldSpec, ObjectSpec
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_choice_option

# A field's options: (option value, label) pairs, in Dynamics' order.
Options = tuple[tuple[int, str], ...]

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


def save_options(conn: Connection, spec: ObjectSpec, now: datetime) -> None:
    """Replace the stored options of ``spec``'s choices read from Dynamics with the ones
    its declaration now carries (``options_read``)."""
    c = sync_choice_option.c
    for field in spec.field_specs.values():
        if not field.options_read:
            continue
        conn.execute(
            sa.delete(sync_choice_option).where(c.object == spec.name, c.field == field.column)
        )
        rows = {option: label for label, option in field.choices}
        if rows:
            conn.execute(
                sa.insert(sync_choice_option),
                [
                    {
                        "object": spec.name,
                        "field": field.column,
                        "value": option,
                        "attribute": field.attribute,
                        "label": label,
                        "read_at": now,
                    }
                    for option, label in rows.items()
                ],
            )


def stored_options(conn: Connection, spec: ObjectSpec) -> Mapping[str, Options]:
    """The options the workers stored for ``spec``'s choices whose labels Dynamics gives,
    by attribute (as ``dynamics.metadata.read_choice_options`` gives them); a field
    with none stored is left out."""
    fields = {f.column: f.attribute for f in spec.field_specs.values() if f.needs_options}
    if not fields:
        return {}
    c = sync_choice_option.c
    rows = conn.execute(
        sa.select(c.field, c.attribute, c.value, c.label)
        .where(c.object == spec.name, c.field.in_(list(fields)))
        .order_by(c.field, c.value)
    ).all()
    out: dict[str, list[tuple[int, str]]] = {}
    for column, attribute, value, label in rows:
        if fields[column] == attribute:  # rows of an attribute no longer mapped: unused
            out.setdefault(attribute, []).append((int(value), str(label)))
    return {attribute: tuple(options) for attribute, options in out.items()}
