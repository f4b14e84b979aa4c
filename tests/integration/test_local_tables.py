"""``db upgrade`` brings the local tables to the mapping: it adds, never drops or rewrites."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config import load_settings
from crmsync.mapping import activate, build, default_objects
from crmsync.store import local_tables, migrate
from crmsync.store.db import create_store_engine, write_transaction

SCORE = {"lead": {"fields": {"lead_score": {"attribute": "new_leadscore", "type": "integer"}}}}
ROWS = 100_000


@pytest.fixture(autouse=True)
def default_mapping_after() -> Iterator[None]:
    yield
    activate(default_objects())


def _fill(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "INSERT INTO lead (email, last_name) SELECT 'p' || g || '@x.org', 'L' || g"
                    f" FROM generate_series(1, {ROWS}) AS g"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "WITH RECURSIVE g(n) AS"
                    f" (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {ROWS})"
                    " INSERT INTO lead (email, last_name)"
                    " SELECT 'p' || n || '@x.org', 'L' || n FROM g"
                )
            )


def _file_node(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.text("SELECT relfilenode FROM pg_class WHERE relname = 'lead'")
        ).scalar_one()
    )


def test_adding_a_field_to_a_table_of_100k_rows_keeps_every_row(engine: sa.Engine) -> None:
    _fill(engine)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*), sum(id) FROM lead")).one()
        node = _file_node(conn) if conn.dialect.name == "postgresql" else None
    added = local_tables_added(engine)
    assert added == ["lead.lead_score"]
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT count(*), sum(id), count(lead_score) FROM lead")).one()
        assert tuple(after) == (*before, 0)
        if node is not None:
            # The same file: the catalogue changed, the table was not rewritten.
            assert _file_node(conn) == node


def local_tables_added(engine: sa.Engine) -> list[str]:
    specs = build(SCORE)
    with write_transaction(engine) as conn:
        return local_tables.bring_to(conn, specs.values())


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_writers_keep_writing_while_postgresql_upgrades(db_url: str, engine: sa.Engine) -> None:
    """A writer inserting throughout the upgrade is held up only for the catalogue change."""
    _fill(engine)
    writer = create_store_engine(db_url)
    stop = threading.Event()
    waits: list[float] = []

    def write() -> None:
        while not stop.is_set():
            started = time.monotonic()
            with write_transaction(writer) as conn:
                conn.execute(sa.text("INSERT INTO lead (email) VALUES ('w@x.org')"))
            waits.append(time.monotonic() - started)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.2)
        migrate.upgrade(engine, build(SCORE).values())
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
        writer.dispose()
    assert len(waits) > 10
    # Generous for a loaded 2-core machine; a rewrite of 100k rows under an exclusive
    # lock, or a wait behind the upgrade's whole transaction, would be far longer.
    assert max(waits) < 2.0


def test_an_upgrade_refused_for_a_type_change_changes_nothing(engine: sa.Engine) -> None:
    local_tables_added(engine)
    changed = build(
        {
            "lead": {"fields": {"lead_score": {"attribute": "new_leadscore", "type": "date"}}},
            "thing": {
                "entity_set": "new_things",
                "logical_name": "new_thing",
                "primary_key": "new_thingid",
                "label": "name",
                "fields": {"name": {"attribute": "new_name", "type": "string"}},
            },
        }
    )
    with pytest.raises(local_tables.LocalSchemaMismatch, match=r"lead\.lead_score is"):
        migrate.upgrade(engine, changed.values())
    assert "thing" not in sa.inspect(engine).get_table_names()


def test_removing_a_field_keeps_its_column(engine: sa.Engine, db_url: str) -> None:
    local_tables_added(engine)
    settings = load_settings(database_url=db_url)
    migrate.upgrade(engine, settings.object_specs().values())
    columns = {c["name"] for c in sa.inspect(engine).get_columns("lead")}
    assert "lead_score" in columns


WIDGET = {
    "widget": {
        "entity_set": "new_widgets",
        "logical_name": "new_widget",
        "primary_key": "new_widgetid",
        "label": "name",
        "fields": {"name": {"attribute": "new_name", "type": "string"}},
    }
}


def test_an_object_taken_out_of_the_mapping_stops_and_loses_nothing(engine: sa.Engine) -> None:
    from crmsync.store import capture
    from crmsync.store.schema import sync_change, sync_queue

    with_widget = build(WIDGET)
    activate(with_widget)
    migrate.upgrade(engine, with_widget.values())
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO widget (name) VALUES ('before')"))
    # The operator takes widget out of the mapping and upgrades: its triggers go.
    activate(default_objects())
    migrate.upgrade(engine, default_objects().values())
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO widget (name) VALUES ('after')"))
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('l@x.org')"))
    # The change logged while widget was mapped does not stop the lead's; it stays in
    # the log (not lost) for a process that maps widget, as one still on the older
    # mapping during a rollout would.
    capture.fold_pending(engine)
    with engine.connect() as conn:
        left = conn.execute(sa.select(sync_change.c.object)).scalars().all()
        queued = conn.execute(sa.select(sync_queue.c.object)).scalars().all()
    assert left == ["widget"] and queued == ["lead"]
    assert not capture.has_changes(engine)  # nothing this process can fold
    activate(with_widget)
    assert capture.has_changes(engine)
    capture.fold_pending(engine)
    with engine.connect() as conn:
        queued = sorted(conn.execute(sa.select(sync_queue.c.object)).scalars().all())
    assert queued == ["lead", "widget"]


def _fee(places: int) -> dict[str, Any]:
    fee = {"attribute": "new_fee", "type": "decimal", "precision": places}
    return {"lead": {"fields": {"fee": fee}}}


def test_a_decimal_column_with_fewer_places_than_the_mapping_is_refused(
    engine: sa.Engine,
) -> None:
    """Raising a decimal's precision over a column made for fewer places would let
    PostgreSQL round Dynamics' values without an error (found in review)."""
    migrate.upgrade(engine, build(_fee(2)).values())
    if engine.dialect.name == "postgresql":
        with pytest.raises(local_tables.LocalSchemaMismatch, match="values would be rounded"):
            migrate.upgrade(engine, build(_fee(4)).values())
    else:  # crmsync keeps SQLite's decimals as exact text: any precision fits
        migrate.upgrade(engine, build(_fee(4)).values())


def test_a_binary_float_column_is_refused_for_a_decimal(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("ALTER TABLE lead ADD COLUMN fee DOUBLE PRECISION"))
    with pytest.raises(local_tables.LocalSchemaMismatch, match=r"binary float|says decimal"):
        migrate.upgrade(engine, build(_fee(2)).values())


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_timestamp_without_time_zone_is_refused_for_a_datetime(engine: sa.Engine) -> None:
    """PostgreSQL would write an instant in the session's zone and crmsync read it back as
    UTC (found in review: Europe/Berlin shifted it an hour)."""
    with write_transaction(engine) as conn:
        conn.execute(sa.text("ALTER TABLE lead ADD COLUMN seen TIMESTAMP WITHOUT TIME ZONE"))
    seen = {"attribute": "new_seen", "type": "datetime"}
    with pytest.raises(local_tables.LocalSchemaMismatch, match="without time zone"):
        migrate.upgrade(engine, build({"lead": {"fields": {"seen": seen}}}).values())


def test_a_choice_without_choices_upgrades_an_existing_integer_column_unchanged(
    engine: sa.Engine,
) -> None:
    """A choice with no ``choices`` keeps option values (INTEGER) unless ``labels =
    true``: a mapping written before ``labels`` existed upgrades its column as it is,
    and the two ways of keeping a choice are told apart with what to set."""
    rating: dict[str, Any] = {"attribute": "leadqualitycode", "type": "choice"}
    plain = build({"lead": {"fields": {"rating": rating}}})
    migrate.upgrade(engine, plain.values())
    types = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("lead")}
    assert isinstance(types["rating"], sa.Integer)
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name, rating) VALUES ('a@x', 'A', 2)"))
    migrate.upgrade(engine, plain.values())  # again, as after a release: nothing to change
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT rating FROM lead")).scalar_one() == 2
    labels = build({"lead": {"fields": {"rating": {**rating, "labels": True}}}})
    with pytest.raises(local_tables.LocalSchemaMismatch) as refused:
        migrate.upgrade(engine, labels.values())
    assert "lead.rating is" in str(refused.value)
    assert "without labels = true the choice keeps option values" in str(refused.value)
    text = build(
        {
            "lead": {
                "fields": {"grade": {"attribute": "new_grade", "type": "choice", "labels": True}}
            }
        }
    )
    migrate.upgrade(engine, text.values())
    grade = build({"lead": {"fields": {"grade": {"attribute": "new_grade", "type": "choice"}}}})
    with pytest.raises(local_tables.LocalSchemaMismatch, match="labels = true keeps Dynamics"):
        migrate.upgrade(engine, grade.values())
