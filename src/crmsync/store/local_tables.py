"""The local tables the mapping declares, and bringing a store's tables to them.

``local_table(spec)`` is the SQLAlchemy table of one object: ``id``, ``crm_id``, its
mapped columns typed from the mapping, and the timestamps crmsync keeps. The four
standard tables keep the column types the initial migration gave them (wider than
Dynamics' attributes). ``bring_to(conn, specs)`` creates the table of a new object and
adds the column of a new field; it never drops or rewrites a column, and refuses a
column whose type in the store is not the mapping's (``LocalSchemaMismatch``, naming
what to do). ``differences`` is the same comparison without writing, for start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Column, Connection, Index, MetaData, Table

from crmsync.domain import FieldSpec, FieldType, ObjectSpec
from crmsync.errors import Fatal
from crmsync.store import schema
from crmsync.store.types import ExactDecimal, UTCDateTime

log = logging.getLogger(__name__)

# Tables crmsync creates for mapped objects live outside Alembic's metadata: the
# mapping, not a migration, declares them.
local_metadata = MetaData(naming_convention=schema.NAMING)
_CACHE: dict[tuple[object, ...], Table] = {}
_STANDARD = {t.name: t for t in schema.STANDARD_TABLES}

# The families a column's type may be in the store, per field type (what reflection
# reports on SQLite and PostgreSQL).
_STRINGS = (sa.String, sa.Text)
_FAMILIES: dict[FieldType, tuple[type[sa.types.TypeEngine[Any]], ...]] = {
    FieldType.STRING: _STRINGS,
    FieldType.MEMO: _STRINGS,
    FieldType.INTEGER: (sa.Integer,),
    FieldType.DECIMAL: (sa.Numeric, *_STRINGS),
    FieldType.MONEY: (sa.Numeric, *_STRINGS),
    FieldType.BOOLEAN: (sa.Boolean, sa.Integer),
    FieldType.DATETIME: (sa.DateTime,),
    FieldType.DATE: (sa.Date,),
    FieldType.LOOKUP: (sa.Integer,),
}


class LocalSchemaMismatch(Fatal):
    """The store's local tables are not what the mapping says; the message says why."""


def column_type(field: FieldSpec) -> sa.types.TypeEngine[Any]:
    """The type crmsync gives a new column for ``field``."""
    kind = field.type
    if kind is FieldType.STRING:
        return sa.String(field.max_length)
    if kind is FieldType.MEMO:
        return sa.Text()
    if kind is FieldType.INTEGER:
        return sa.Integer()
    if kind in (FieldType.DECIMAL, FieldType.MONEY):
        return ExactDecimal(field.precision or 0)
    if kind is FieldType.BOOLEAN:
        return sa.Boolean(create_constraint=False)
    if kind is FieldType.DATETIME:
        return UTCDateTime()
    if kind is FieldType.DATE:
        return sa.Date()
    if kind is FieldType.CHOICE:
        return sa.String(100) if field.choices else sa.Integer()
    return schema.Id  # a lookup holds the target's local id


def _families(field: FieldSpec) -> tuple[type[sa.types.TypeEngine[Any]], ...]:
    if field.type is FieldType.CHOICE:
        return _STRINGS if field.choices else (sa.Integer,)
    return _FAMILIES[field.type]


def local_table(spec: ObjectSpec) -> Table:
    """The table of ``spec``'s object (one ``Table`` per distinct declaration)."""
    fields = tuple(spec.field_specs.values())
    key = (
        spec.table,
        *((f.column, f.type, f.max_length, f.precision, bool(f.choices)) for f in fields),
    )
    table = _CACHE.get(key)
    if table is not None:
        return table
    standard = _STANDARD.get(spec.table)
    if standard is not None and set(spec.field_specs) <= set(standard.c.keys()):
        table = standard
    else:
        table = _build(spec, standard)
    _CACHE[key] = table
    return table


def _build(spec: ObjectSpec, standard: Table | None) -> Table:
    columns: list[Column[object]] = []
    for field in spec.field_specs.values():
        if standard is not None and field.column in standard.c:
            columns.append(standard.c[field.column]._copy())
        else:
            columns.append(Column(field.column, column_type(field), nullable=True))
    # Another declaration of the same table (a changed mapping in a test) gets its own
    # MetaData: tables of one MetaData must have distinct names.
    meta = (
        local_metadata
        if spec.table not in local_metadata.tables
        else MetaData(naming_convention=schema.NAMING)
    )
    return Table(
        spec.table,
        meta,
        Column("id", schema.Id, primary_key=True, autoincrement=True),
        Column("crm_id", sa.String(36), nullable=True),
        *columns,
        *schema.timestamps(),
        Index(f"uq_{spec.table}_crm_id", "crm_id", unique=True),
        sqlite_autoincrement=True,
    )


@dataclass(frozen=True)
class Difference:
    """One way the store's tables differ from the mapping."""

    object: str
    table: str
    column: str | None  # None: the whole table is missing
    problem: str | None = None  # None: missing, which ``bring_to`` adds; else a refusal


def differences(conn: Connection, specs: Iterable[ObjectSpec]) -> list[Difference]:
    """What the store lacks, or holds with another type, compared with the mapping."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    out: list[Difference] = []
    for spec in specs:
        if spec.table not in tables:
            out.append(Difference(spec.name, spec.table, None))
            continue
        present = {c["name"]: c["type"] for c in inspector.get_columns(spec.table)}
        for need in ("id", "crm_id"):
            if need not in present:
                out.append(Difference(spec.name, spec.table, need, f"has no {need} column"))
        for field in spec.field_specs.values():
            found = present.get(field.column)
            if found is None:
                out.append(Difference(spec.name, spec.table, field.column))
            elif not isinstance(found, _families(field)):
                out.append(
                    Difference(
                        spec.name,
                        spec.table,
                        field.column,
                        f"is {found} in the store but the mapping says {field.type}: crmsync "
                        "never rewrites a column holding data; map the field to a new column "
                        "(and copy the values), or set the type back",
                    )
                )
    return out


def refusals(found: Iterable[Difference]) -> list[str]:
    return [f"{d.table}.{d.column} {d.problem}" for d in found if d.problem is not None]


def bring_to(conn: Connection, specs: Iterable[ObjectSpec]) -> list[str]:
    """Create missing tables and columns (nothing else); returns what was added."""
    specs = list(specs)
    found = differences(conn, specs)
    refused = refusals(found)
    if refused:
        raise LocalSchemaMismatch(
            "the store's tables do not match the mapping: " + "; ".join(refused)
        )
    by_name = {s.name: s for s in specs}
    added: list[str] = []
    if conn.dialect.name == "postgresql":
        # ADD COLUMN without a default is a catalogue change; waiting for its lock
        # behind a long transaction would stall every writer queued behind it.
        conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
    for diff in found:
        spec = by_name[diff.object]
        table = local_table(spec)
        if diff.column is None:
            table.create(conn)
            added.append(diff.table)
            continue
        column = table.c[diff.column]
        ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {diff.table} ADD COLUMN {ddl}"))
        added.append(f"{diff.table}.{diff.column}")
    for item in added:
        log.info(f"added {item}", extra={"event": "store.local_schema", "added": item})
    return added
