"""Whether a local row's mapped values are still the ones last synced, asked in SQL.

The drift audit compares every local row with its last synced values
(``mapping/compare.differs_from_base``). Nearly every row is unchanged, and reading each
one into Python to be told so was most of an audit's time. ``same_as_synced`` says so
in the database, for the columns whose equality it can decide as the Python comparison
would; the rows it does not clear are read and compared in Python, which decides. It
may leave a row it could have cleared (a decimal, a date, a choice with options or
labels: their canonical forms are Python's; a value kept in another JSON type), never
clear one Python would not. PostgreSQL decides all columns in one jsonb containment
(``synced_values`` parsed once a row); SQLite first compares two JSON arrays as text
(the row's values, the synced ones extracted in one parse), then column by column.
"""

# What SQL decides as the same:
# - a null local value and a null last synced one (or, on SQLite, a missing one) are the
#   same; a column of a type SQL does not decide is the same only so;
# - text (string, memo) is the same as a JSON string of the same characters (SQLite
#   compares under the binary collation: an attached table's case-insensitive one must
#   not hide a change of case; PostgreSQL compares jsonb strings byte for byte);
# - a whole number (integer, choice kept as option values), a yes/no and a lookup (the
#   parent's local id) as a JSON number or boolean of the same value (SQLite also takes
#   a lookup kept as a string of the same text, as ``differs_from_base`` compares them).

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from crmsync.domain import FieldType, ObjectSpec

# PostgreSQL functions take at most 100 arguments: a jsonb_build_object of 40 pairs.
_PAIRS = 40
# SQLite's take 127 (SQLITE_MAX_FUNCTION_ARG's default before 3.48): a json_extract of
# at most 100 paths.
_PATHS = 100


def same_as_synced(
    dialect: str, spec: ObjectSpec, table: sa.Table, synced: sa.ColumnElement[Any]
) -> sa.ColumnElement[bool]:
    """True where every mapped column of ``table``'s row holds the value ``synced`` (the
    sync state's ``synced_values``) last synced, false elsewhere (never null: a
    comparison with a null inside would be, and ``NOT`` of it would drop the row)."""
    kinds = {c: _kind(spec, c) for c in spec.columns}
    # A column whose equality SQL cannot decide is the same only when null on both sides.
    undecided = [table.c[c].is_(None) for c, kind in kinds.items() if kind is None]
    if dialect == "postgresql":
        same = [_contains(table, synced, list(kinds)), *undecided]
    else:
        each = sa.and_(*(_sqlite_same(table.c[c], synced, c, kind) for c, kind in kinds.items()))
        same = [each if len(kinds) < 2 else _sqlite_at_once(table, synced, kinds, each)]
    return sa.func.coalesce(sa.and_(synced.is_not(None), *same), sa.false())


def _kind(spec: ObjectSpec, column: str) -> str | None:
    """How SQL compares the column: as text, a whole number, a yes/no, a lookup's
    text, or not at all (None)."""
    field = spec.field_specs.get(column)
    if column not in spec.fields or (field is not None and field.type is FieldType.LOOKUP):
        return "lookup"
    if field is None:
        return None
    if field.type in (FieldType.STRING, FieldType.MEMO):
        return "text"
    if field.type is FieldType.INTEGER or (
        field.type is FieldType.CHOICE and not field.choices and not field.labels
    ):  # a choice kept as labels is compared through its options: Python's
        return "integer"
    if field.type is FieldType.BOOLEAN:
        return "boolean"
    return None


def _contains(table: sa.Table, synced: Any, columns: list[str]) -> sa.ColumnElement[bool]:
    """PostgreSQL: the last synced values hold the row's, key for key (jsonb equality
    of scalars: a string to the same characters, a number to the same value, a boolean
    to itself, a null to a null). One parse of the synced values a row."""
    parts = [
        sa.func.jsonb_build_object(
            *(x for c in columns[i : i + _PAIRS] for x in (sa.literal(c, sa.Text), table.c[c]))
        )
        for i in range(0, len(columns), _PAIRS)
    ]
    wanted: sa.ColumnElement[Any] = parts[0]
    for part in parts[1:]:
        wanted = wanted.op("||")(part)
    return sa.cast(synced, JSONB).op("@>")(wanted)


# The local value's SQLite storage classes whose JSON form (``json_array``) is exact and
# whose equality, JSON text for JSON text, ``_sqlite_same`` would decide the same way.
_EXACT = {"text": ("text", "null"), "integer": ("integer", "null"), "lookup": ("integer", "null")}


def _sqlite_at_once(
    table: sa.Table, synced: Any, kinds: dict[str, str | None], each: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    """SQLite: the row's values and the synced ones as two JSON arrays, one parse of the
    synced values, compared as text; where that does not clear the row (or the local
    values are of a storage class whose JSON form would round or not be JSON at all),
    ``each`` column decides. Equal texts are equal JSON values of one type each: a
    text to the same characters, a whole number to the same value, a null to a null
    or a missing key."""
    exact = [
        sa.func.typeof(table.c[c]).in_(_EXACT.get(kind or "", ("null",)))
        for c, kind in kinds.items()
    ]
    # In groups of at least two columns (json_extract of one path is no array).
    columns = list(kinds)
    groups = -(-len(columns) // _PATHS)
    size = -(-len(columns) // groups)
    texts = [
        sa.func.json_extract(synced, *(_path(c) for c in group))
        == sa.func.json_array(*(table.c[c] for c in group))
        for group in (columns[i : i + size] for i in range(0, len(columns), size))
    ]
    # A CASE, so that json_array never sees a value the guards turned away (a blob: an
    # error, "JSON cannot hold BLOB values", were it evaluated in an AND).
    return sa.case((sa.and_(*exact, *texts), sa.true()), else_=each)


def _path(name: str) -> sa.ColumnElement[str]:
    return sa.literal('$."' + name.replace('"', '""') + '"', sa.Text)


def _sqlite_same(
    local: sa.ColumnElement[Any], synced: Any, name: str, kind: str | None
) -> sa.ColumnElement[bool]:
    path = _path(name)
    json_kind, value = sa.func.json_type(synced, path), sa.func.json_extract(synced, path)
    both_null = local.is_(None) & sa.or_(json_kind.is_(None), json_kind == "null")
    if kind == "lookup":  # a blob's text would pass for the characters it holds
        equal = (
            json_kind.in_(("integer", "text"))
            & sa.func.typeof(local).in_(("integer", "text"))
            & (sa.cast(local, sa.Text) == sa.cast(value, sa.Text))
        )
    elif kind == "text":
        equal = (json_kind == "text") & (local.collate("BINARY") == value.collate("BINARY"))
    elif kind == "integer":
        equal = (json_kind == "integer") & (local == value)
    elif kind == "boolean":
        equal = json_kind.in_(("true", "false")) & (local == value)
    else:
        return both_null
    return sa.or_(both_null, equal)
