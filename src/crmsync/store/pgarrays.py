"""Array parameters: a batch's rows, or a page's ids, in one parameter per column.

A statement with one parameter per value is compiled again for every batch size, and
SQLAlchemy's expansion of thousands of values costs more than the lookup in the
database; one array (PostgreSQL) or JSON text (SQLite's ``json_each``) parameter keeps
the statement the same whatever the count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import ARRAY


def unnest(name: str, **arrays: Any) -> Any:
    """A PostgreSQL ``unnest`` of array parameters ``<name>_<column>``: a batch's rows
    in one parameter per column, however many rows (the statement stays the same, so
    it is compiled once and its plan reused)."""
    return (
        sa.func.unnest(*(sa.bindparam(f"{name}_{k}", type_=ARRAY(t)) for k, t in arrays.items()))
        .table_valued(*(sa.column(k, t) for k, t in arrays.items()))
        .render_derived(name=name)
    )


def id_in(conn: Connection, column: sa.ColumnElement[Any], ids: Iterable[str | int]) -> Any:
    """``column IN ids`` with the ids as ONE parameter: ``in_()`` with thousands of
    values costs more in SQLAlchemy's parameter expansion than the lookup in the
    database."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(ids), type_=ARRAY(column.type)))
    each = sa.func.json_each(sa.bindparam(None, json.dumps(list(ids)), type_=sa.String))
    return column.in_(sa.select(each.table_valued("value").c.value))
