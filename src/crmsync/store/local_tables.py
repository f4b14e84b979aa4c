"""The local tables the mapping declares, and bringing a store's tables to them.

``local_table(spec)`` is the SQLAlchemy table of one object: ``id``, ``crm_id``, its
mapped columns typed from the mapping, and the timestamps crmsync keeps. The four
standard tables keep the column types the initial migration gave them (wider than
Dynamics' attributes). An attached table (an application's own) has no timestamps, and
its id and Dynamics id columns keep their names with the keys ``id`` and ``crm_id``:
code reads ``table.c.id``; raw SQL uses ``.name``; rows are read through ``row_columns``.
``bring_to(conn, specs)`` creates the table of a new object and adds the column of a new
field (and an attached table's Dynamics id); it never drops or rewrites a column, never
creates an attached table, and refuses what does not match (``LocalSchemaMismatch``,
naming what to do) before it writes anything. ``differences`` is the same comparison
without writing, for start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Column, Connection, Index, MetaData, Table

from crmsync.domain import FieldSpec, FieldType, ObjectSpec
from crmsync.errors import Fatal
from crmsync.mapping.model import MAX_STRING
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
        # As wide as Dataverse's longest text column, as the standard tables are wider
        # than their attributes: a value longer than the field's max_length is kept and
        # shows as a sync error, rather than being refused to the application.
        return sa.String(MAX_STRING)
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
        # A local value (declared, or an option's label) or the option value itself.
        return sa.String(100) if field.labels else sa.Integer()
    return schema.Id  # a lookup holds the target's local id


def _families(field: FieldSpec) -> tuple[type[sa.types.TypeEngine[Any]], ...]:
    if field.type is FieldType.CHOICE:
        return _STRINGS if field.labels else (sa.Integer,)
    return _FAMILIES[field.type]


def local_table(spec: ObjectSpec) -> Table:
    """The table of ``spec``'s object (one ``Table`` per distinct declaration)."""
    fields = tuple(spec.field_specs.values())
    key = (
        spec.table,
        spec.attached,
        spec.id_column,
        spec.crm_id_column,
        *((f.column, f.type, f.max_length, f.precision, f.labels) for f in fields),
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


def row_columns(table: Table) -> list[sa.ColumnElement[Any]]:
    """``table``'s columns labelled by their keys: rows read with them hold ``id`` and
    ``crm_id`` whatever an attached table calls them (a result row is keyed by name)."""
    return [c if c.key == c.name else c.label(c.key) for c in table.c]


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
    crm_id: Column[str] = Column(spec.crm_id_column, sa.String(36), key="crm_id", nullable=True)
    ids = (
        Column(spec.id_column, schema.Id, key="id", primary_key=True, autoincrement=True),
        crm_id,
    )
    index = Index(f"uq_{spec.table}_crm_id", crm_id, unique=True)
    if spec.attached:
        return Table(spec.table, meta, *ids, *columns, index)
    return Table(
        spec.table, meta, *ids, *columns, *schema.timestamps(), index, sqlite_autoincrement=True
    )


@dataclass(frozen=True)
class Difference:
    """One way the store's tables differ from the mapping."""

    object: str
    table: str
    column: str | None  # None: the whole table is missing
    problem: str | None = None  # None: missing, which ``bring_to`` adds; else a refusal
    path: str | None = None  # the mapping's key a refusal is about (an attached table's)
    index: bool = False  # the column is there but its unique index is not

    def __str__(self) -> str:
        if self.problem is not None and self.path is not None:
            return f"{self.path}: {self.problem}"
        if self.problem is not None:
            return f"{self.table}.{self.column} {self.problem}"
        if self.column is None:
            return self.table
        return f"{self.table}.{self.column}" + (" (its unique index)" if self.index else "")


def _inexact(field: FieldSpec, found: sa.types.TypeEngine[Any], dialect: str) -> str | None:
    """Why a column of the right family still cannot hold the field's values exactly, or
    None: a decimal in a binary float or in fewer decimal places than the field has (the
    database would round without an error); on PostgreSQL, an instant in a timestamp
    without time zone (it would move by the session's zone)."""
    if field.type is FieldType.DATETIME and isinstance(found, sa.DateTime):
        if found.timezone is False and dialect == "postgresql":
            # Written in the session's zone and read back as if UTC: instants would move.
            return (
                f"is {found} (without time zone) in the store but the mapping says datetime,"
                " a UTC instant: use timestamp with time zone, or map the field as a date"
            )
        return None
    if field.type not in (FieldType.DECIMAL, FieldType.MONEY):
        return None
    if isinstance(found, sa.Float):
        return (
            f"is {found} (a binary float) in the store but the mapping says {field.type}: "
            "it cannot hold decimals exactly; map the field to a NUMERIC column"
        )
    places = field.precision or 0
    scale = getattr(found, "scale", None)
    if isinstance(found, sa.Numeric) and scale is not None and scale < places:
        return (
            f"is {found} in the store, {scale} decimal places, but the mapping says {places}:"
            " values would be rounded; lower precision, or map the field to a wider column"
        )
    return None


def differences(conn: Connection, specs: Iterable[ObjectSpec]) -> list[Difference]:
    """What the store lacks, or holds with another type, compared with the mapping."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    out: list[Difference] = []
    for spec in specs:
        if spec.table not in tables:
            if spec.attached:
                out.append(
                    Difference(
                        spec.name,
                        spec.table,
                        None,
                        f"there is no table {spec.table!r} in the store: crmsync attaches an"
                        " application's existing table and never creates it (create it, or"
                        " leave table out and crmsync creates one named after the object)",
                        f"objects.{spec.name}.table",
                    )
                )
            else:
                out.append(Difference(spec.name, spec.table, None))
            continue
        columns = {c["name"]: c for c in inspector.get_columns(spec.table)}
        present = {name: c["type"] for name, c in columns.items()}
        if spec.attached:
            out += _attached_differences(conn, inspector, spec, columns)
        else:
            for need in ("id", "crm_id"):
                if need not in present:
                    out.append(Difference(spec.name, spec.table, need, f"has no {need} column"))
        for field in spec.field_specs.values():
            found = present.get(field.column)
            if found is None:
                out.append(Difference(spec.name, spec.table, field.column))
            elif not isinstance(found, _families(field)):
                said = (
                    field.type
                    if field.type is not FieldType.CHOICE
                    else (
                        "choice (text: local values or Dynamics' labels)"
                        if field.labels
                        else "choice (the option values)"
                    )
                )
                hint = ""
                if field.type is FieldType.CHOICE and not field.choices:
                    hint = (
                        "; without labels = true the choice keeps option values in an "
                        "integer column"
                        if field.labels
                        else "; labels = true keeps Dynamics' labels in a text column"
                    )
                out.append(
                    Difference(
                        spec.name,
                        spec.table,
                        field.column,
                        f"is {found} in the store but the mapping says {said}: crmsync "
                        "never rewrites a column holding data; map the field to a new column "
                        f"(and copy the values), or set the type back{hint}",
                    )
                )
            elif (inexact := _inexact(field, found, conn.dialect.name)) is not None:
                out.append(Difference(spec.name, spec.table, field.column, inexact))
    return out


def _attached_differences(
    conn: Connection, inspector: Any, spec: ObjectSpec, columns: dict[str, Any]
) -> list[Difference]:
    """An attached table's id column must be its integer primary key (generated by the
    database when Dynamics' records are pulled in); its Dynamics id column is added, with
    a unique index, if missing."""
    out: list[Difference] = []
    name, table, path = spec.name, spec.table, f"objects.{spec.name}"
    id_col = columns.get(spec.id_column)
    primary = inspector.get_pk_constraint(table).get("constrained_columns") or []
    if id_col is None:
        out.append(
            Difference(
                name,
                table,
                spec.id_column,
                f"{table} has no column {spec.id_column!r}",
                f"{path}.id_column",
            )
        )
    elif not isinstance(id_col["type"], sa.Integer) or primary != [spec.id_column]:
        out.append(
            Difference(
                name,
                table,
                spec.id_column,
                f"{table}.{spec.id_column} must be the table's integer primary key (it is"
                f" {id_col['type']}, and the primary key is {', '.join(primary) or 'none'})",
                f"{path}.id_column",
            )
        )
    elif spec.flow.pulls and not _generated(conn, id_col):
        out.append(
            Difference(
                name,
                table,
                spec.id_column,
                f"{table}.{spec.id_column} is not generated by the database: crmsync inserts"
                " the records Dynamics creates and needs the table to give them their ids"
                " (an identity or serial column; on SQLite, INTEGER PRIMARY KEY)",
                f"{path}.id_column",
            )
        )
    crm = columns.get(spec.crm_id_column)
    if crm is None:
        out.append(Difference(name, table, spec.crm_id_column))
    elif not isinstance(crm["type"], _STRINGS):
        out.append(
            Difference(
                name,
                table,
                spec.crm_id_column,
                f"{table}.{spec.crm_id_column} is {crm['type']}: the Dynamics id is text"
                " (36 characters); name another column with crm_id_column",
                f"{path}.crm_id_column",
            )
        )
    elif not _unique(inspector, table, spec.crm_id_column):
        out.append(Difference(name, table, spec.crm_id_column, index=True))
    return out


def _generated(conn: Connection, column: dict[str, Any]) -> bool:
    if conn.dialect.name == "sqlite":
        # Only a column declared exactly INTEGER PRIMARY KEY is the rowid (SQLite's
        # "ROWIDs and the INTEGER PRIMARY KEY"); reflection reports it as INTEGER.
        return type(column["type"]) is sa.INTEGER
    default = str(column.get("default") or "")
    return bool(column.get("identity")) or default.startswith("nextval(")


def _unique(inspector: Any, table: str, column: str) -> bool:
    indexes = [ix for ix in inspector.get_indexes(table) if ix.get("unique")]
    constraints = inspector.get_unique_constraints(table)
    return any(list(ix["column_names"]) == [column] for ix in [*indexes, *constraints])


def refusals(found: Iterable[Difference]) -> list[str]:
    return [str(d) for d in found if d.problem is not None]


def bring_to(
    conn: Connection,
    specs: Iterable[ObjectSpec],
    announce: Callable[[str], None] | None = None,
) -> list[str]:
    """Create missing tables and columns (nothing else); returns what was added.

    Everything is compared before anything is written: a refusal changes nothing. What
    is added to an attached table (an application's) is announced before it is done.
    """
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
        column = next(c for c in table.c if c.name == diff.column)
        is_crm_id = spec.attached and column.key == "crm_id"
        if spec.attached:
            _announce(announce, _adding(diff, is_crm_id), spec, diff)
        if not diff.index:
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {diff.table} ADD COLUMN {ddl}"))
            added.append(f"{diff.table}.{diff.column}")
        if is_crm_id:
            for index in table.indexes:  # the one on crm_id
                index.create(conn)
            added.append(f"{diff.table}.{diff.column} (unique index)")
    for item in added:
        log.info(f"added {item}", extra={"event": "store.local_schema", "added": item})
    return added


def _adding(diff: Difference, is_crm_id: bool) -> str:
    if not is_crm_id:
        return f"adding column {diff.column} to {diff.table}"
    what = (
        f"a unique index on column {diff.column} of" if diff.index else f"column {diff.column} to"
    )
    return f"adding {what} {diff.table} (the Dynamics id of each record)"


def _announce(
    announce: Callable[[str], None] | None, message: str, spec: ObjectSpec, diff: Difference
) -> None:
    log.info(
        message,
        extra={"event": "store.attached_table", "object": spec.name, "table": diff.table},
    )
    if announce is not None:
        announce(message)
