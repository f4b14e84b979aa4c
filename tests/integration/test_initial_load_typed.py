"""The initial load's bulk path with typed fields, on real SQLite and PostgreSQL: every
type is converted as applying it converts (``convert.decoded``), the local row holds the
local value and the synced values its JSON form; a value that does not fit is left to
the ordinary path, which parks it naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.engine import load
from crmsync.mapping import activate, default_objects
from crmsync.mapping.convert import decoded
from crmsync.store import migrate
from crmsync.store.db import write_transaction
from crmsync.store.local_tables import local_table
from crmsync.store.schema import sync_record

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIELDS: dict[str, Any] = {
    "name": {"attribute": "new_name", "type": "string", "max_length": 50},
    "seats": {"attribute": "new_seats", "type": "integer", "minimum": 0, "maximum": 500},
    "fee": {"attribute": "new_fee", "type": "decimal", "precision": 2},
    "budget": {"attribute": "new_budget", "type": "money", "precision": 4},
    "paid": {"attribute": "new_paid", "type": "boolean"},
    "starts": {"attribute": "new_starts", "type": "datetime"},
    "day": {"attribute": "new_day", "type": "date"},
    "level": {"attribute": "new_level", "type": "choice", "choices": {"low": 1, "high": 3}},
    "code": {"attribute": "new_code", "type": "choice", "labels": False},
}
MAPPING = {
    "course": {
        "entity_set": "new_courses",
        "logical_name": "new_course",
        "primary_key": "new_courseid",
        "label": "name",
        "flow": "from_crm",
        "fields": FIELDS,
    }
}


def guid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def course(n: int, **values: Any) -> dict[str, Any]:
    return {
        "@odata.etag": f'W/"{1000 + n}"',
        "new_courseid": guid(n),
        "modifiedon": "2026-11-25T10:00:00Z",
        "versionnumber": 1000 + n,
        **{f["attribute"]: None for f in FIELDS.values()},
        **values,
    }


@pytest.fixture
def typed(engine: sa.Engine, db_url: str) -> Iterator[Settings]:
    settings = load_settings(database_url=db_url, objects=MAPPING)
    migrate.upgrade(engine, settings.object_specs().values())
    activate(settings.object_specs())
    yield settings
    activate(default_objects())


GOOD = [
    course(
        1,
        new_name="Intro",
        new_seats=12,
        new_fee=12.5,
        new_budget=1234.5678,
        new_paid=True,
        new_starts="2026-03-04T08:30:15Z",
        new_day="2026-03-04",
        new_level=3,
        new_code=100000001,
    ),
    course(2, new_name="Nulls"),  # every typed value null
    course(
        3,
        new_name="Edges",
        new_seats=0,
        new_fee=99999999999.99,
        new_budget=-0.0001,
        new_paid=False,
        new_starts="2026-03-04T08:30:15.000Z",  # another spelling: the slow path's
        new_day="1753-01-01",
        new_level=1,
        new_code=-1,
    ),
    course(4, new_name="Whole", new_fee=7, new_budget=0.0),
]
UNFIT = [
    course(10, new_name="Too many places", new_fee=1.005),
    course(11, new_name="Too many seats", new_seats=501),
    course(12, new_name="Unknown level", new_level=2),
    course(13, new_name="Not a day", new_day="2026-02-30"),
    course(14, new_name="Not a number", new_budget="a lot"),
]


def test_typed_fields_load_in_bulk_as_applying_converts_them(
    engine: sa.Engine, typed: Settings
) -> None:
    specs = typed.object_specs()
    spec = specs["course"]
    with write_transaction(engine) as conn:
        done = load.insert_new(conn, specs, spec, GOOD + UNFIT, None, NOW)
    assert done.inserted == [guid(n) for n in (1, 2, 3, 4)]
    assert [r["new_courseid"] for r in done.rest] == [guid(n) for n in range(10, 15)]
    table = local_table(spec)
    with engine.connect() as conn:
        local = {r.crm_id: r._mapping for r in conn.execute(sa.select(table))}
        synced = {
            r.crm_id: r.synced_values
            for r in conn.execute(sa.select(sync_record.c.crm_id, sync_record.c.synced_values))
        }
    for row in GOOD:
        crm_id = row["new_courseid"]
        for column, field in spec.field_specs.items():
            value = row[field.attribute]
            want_local, want_json = decoded(field, value) if value is not None else (None, None)
            got = local[crm_id][column]
            assert got == want_local and type(got) is type(want_local), (crm_id, column, got)
            if isinstance(want_local, Decimal):
                assert got.as_tuple() == want_local.as_tuple()  # the places kept: 12.50
            kept = json.loads(json.dumps(synced[crm_id]))[column]
            assert kept == want_json and type(kept) is type(want_json), (crm_id, column, kept)
    one = local[guid(1)]
    assert (one["fee"], one["starts"], one["day"], one["level"]) == (
        Decimal("12.50"),
        datetime(2026, 3, 4, 8, 30, 15, tzinfo=UTC),
        date(2026, 3, 4),
        "high",
    )
    assert synced[guid(4)]["fee"] == 7 and synced[guid(4)]["budget"] == 0
