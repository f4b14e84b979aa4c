"""The audit's SQL clearing of unmoved rows (``store/unmoved.py``) against the Python
comparison it stands in for (``differs_from_base``), on both stores.

One local row per case, each of every field type, with a last synced value beside it:
a row SQL clears as the same must be one Python finds unchanged (else a local change
would go unseen by the audit), and the common cases (text, whole numbers, yes/no,
lookups, nulls, all as the sync keeps them) must be cleared in SQL (else every row is
read into Python, the slowness this replaced). What SQL leaves, Python decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.domain import ObjectSpec
from crmsync.mapping import activate, build, default_objects
from crmsync.mapping.compare import differs_from_base
from crmsync.store import local_tables
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_record
from crmsync.store.unmoved import same_as_synced

GADGET = {
    "gadget": {
        "entity_set": "new_gadgets",
        "logical_name": "new_gadget",
        "primary_key": "new_gadgetid",
        "label": "name",
        "fields": {
            "name": {"attribute": "new_name", "type": "string", "max_length": 100},
            "notes": {"attribute": "new_notes", "type": "memo"},
            "size": {"attribute": "new_size", "type": "integer"},
            "fee": {"attribute": "new_fee", "type": "decimal", "precision": 2},
            "vip": {"attribute": "new_vip", "type": "boolean"},
            "seen_at": {"attribute": "new_seenat", "type": "datetime"},
            "met_on": {"attribute": "new_meton", "type": "date"},
            "rating": {"attribute": "new_rating", "type": "choice", "choices": {"hot": 1}},
            "tier": {"attribute": "new_tier", "type": "choice", "labels": False},
            "grade": {"attribute": "new_grade", "type": "choice", "labels": True},
            "account_id": {"type": "lookup", "target": "account", "attribute": "new_accountid"},
        },
    }
}
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# (column, local value, last synced JSON value or MISSING, cleared in SQL?) where the
# third may differ by store: {"sqlite": ..., "postgresql": ...}.
MISSING = object()
CASES: list[tuple[str, Any, Any, Any]] = [
    ("name", "Ab", "Ab", True),
    ("name", "Ab", "ab", False),  # a change of case
    ("name", "a ", "a", False),
    ("name", "5", 5, False),  # kept as a number: Python decides
    ("name", None, None, True),
    ("name", None, MISSING, {"sqlite": True, "postgresql": False}),
    ("name", "x", MISSING, False),  # mapped after the last sync: Python skips it
    ("name", "é ünïcode", "é ünïcode", True),
    ("notes", "line\nline", "line\nline", True),
    ("size", 5, 5, True),
    ("size", 5, 6, False),
    ("size", 5, "5", False),
    ("size", 5, 5.0, {"sqlite": False, "postgresql": True}),
    ("size", None, 0, False),
    ("fee", Decimal("1.50"), 1.5, False),  # a decimal: Python's canonical form
    ("fee", None, None, True),
    ("vip", True, True, True),
    ("vip", False, False, True),
    ("vip", True, False, False),
    ("vip", False, None, False),
    ("seen_at", NOON, "2026-12-01T12:00:00Z", False),
    ("met_on", date(2026, 12, 1), "2026-12-01", False),
    ("rating", "hot", 1, False),
    ("tier", 3, 3, True),
    ("grade", "Gold", "Gold", False),  # a label is compared through its options: Python
    ("account_id", 7, 7, True),
    ("account_id", 7, "7", {"sqlite": True, "postgresql": False}),
    ("account_id", 7, 8, False),
    ("account_id", None, 7, False),
]


@pytest.fixture
def gadget(engine: sa.Engine) -> Iterator[ObjectSpec]:
    specs = build(GADGET)
    activate(specs)
    with write_transaction(engine) as conn:
        local_tables.bring_to(conn, specs.values())
    yield specs["gadget"]
    activate(default_objects())


def _synced(spec: ObjectSpec, column: str, value: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c: None for c in spec.columns}
    if value is MISSING:
        del base[column]
    else:
        base[column] = value
    return base


def _sync_state(conn: sa.Connection, obj: str, record_id: int, synced: dict[str, Any]) -> None:
    conn.execute(
        sa.insert(sync_record).values(
            object=obj, record_id=record_id, last_synced_at=NOON, synced_values=synced
        )
    )


def _cleared(engine: sa.Engine, spec: ObjectSpec, table: sa.Table) -> list[tuple[int, bool]]:
    """Each local row's id and whether SQL clears it as unmoved, in id order."""
    r = sync_record.c
    same = same_as_synced(engine.dialect.name, spec, table, r.synced_values)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.id, same)
            .join(sync_record, (r.object == spec.name) & (r.record_id == table.c.id))
            .order_by(table.c.id)
        ).all()
    return [(int(i), bool(s)) for i, s in rows]


def test_sql_clears_only_rows_python_finds_unchanged(engine: sa.Engine, gadget: ObjectSpec) -> None:
    table = local_tables.local_table(gadget)
    with write_transaction(engine) as conn:
        for i, (column, local, kept, _) in enumerate(CASES, start=1):
            conn.execute(sa.insert(table).values(id=i, **{column: local}))
            _sync_state(conn, "gadget", i, _synced(gadget, column, kept))
    dialect = engine.dialect.name
    r = sync_record.c
    same = same_as_synced(dialect, gadget, table, r.synced_values)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table, r.synced_values, same.label("same"))
            .join(sync_record, (r.object == "gadget") & (r.record_id == table.c.id))
            .order_by(table.c.id)
        ).mappings()
        found = {row["id"]: row for row in rows}
    assert len(found) == len(CASES)
    for i, (column, local, kept, cleared) in enumerate(CASES, start=1):
        row = found[i]
        expected = cleared[dialect] if isinstance(cleared, dict) else cleared
        changed = differs_from_base(gadget, row, row["synced_values"])
        case = f"{column}: local {local!r}, synced {'missing' if kept is MISSING else repr(kept)}"
        if row["same"]:
            assert not changed, f"SQL cleared a row Python finds changed ({case}): {changed}"
        assert bool(row["same"]) is expected, case


# Values SQLite's JSON cannot render exactly (a real rounds to 15 digits) or at all (a
# blob): the row's JSON array would be wrong or an error, so each column decides.
ODD: list[tuple[str, Any, Any]] = [
    ("size", 0.30000000000000004, 0.3),  # a real in an integer column, rounded by json_array
    ("size", 2.5, 2.5),
    ("name", b"Ab", "Ab"),  # a blob: json_array refuses it
    ("account_id", 7.5, 7.5),  # a real where a parent id belongs
    ("account_id", b"7", "7"),  # a blob: its text is the same, Python's is not
]


def test_sqlite_values_json_cannot_hold_exactly_are_decided_column_by_column(
    engine: sa.Engine, gadget: ObjectSpec
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("storage classes are SQLite's")
    table = local_tables.local_table(gadget)
    with write_transaction(engine) as conn:
        for i, (column, local, kept) in enumerate(ODD, start=1):
            # Bound straight through the driver: SQLAlchemy's types would convert them.
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} (id, {column}) VALUES (?, ?)", (i, local)
            )
            _sync_state(conn, "gadget", i, _synced(gadget, column, kept))
        classes = conn.exec_driver_sql(f"SELECT typeof(size) FROM {table.name} WHERE id = 1")
        assert classes.scalar() == "real"
    assert [s for _, s in _cleared(engine, gadget, table)] == [False] * len(ODD)


def test_a_mapping_wider_than_a_function_takes_arguments_is_still_cleared(
    engine: sa.Engine,
) -> None:
    """130 columns: more than one SQL function call may take (SQLite 127, PostgreSQL
    100); the comparison goes in groups and still tells the same row from a changed one."""
    fields = {f"f{i}": {"attribute": f"new_f{i}", "type": "string"} for i in range(130)}
    specs = build(
        {
            "wide": {
                "entity_set": "new_wides",
                "logical_name": "new_wide",
                "primary_key": "new_wideid",
                "label": "f0",
                "fields": fields,
            }
        }
    )
    activate(specs)
    try:
        spec = specs["wide"]
        table = local_tables.local_table(spec)
        values = {c: f"v{c}" for c in spec.columns}
        with write_transaction(engine) as conn:
            local_tables.bring_to(conn, specs.values())
            for i, synced in ((1, values), (2, {**values, "f129": "other"})):
                conn.execute(sa.insert(table).values(id=i, **values))
                _sync_state(conn, "wide", i, synced)
        assert _cleared(engine, spec, table) == [(1, True), (2, False)]
    finally:
        activate(default_objects())
