"""``crmsync db upgrade`` on an application's existing table, on both stores.

It adds only the Dynamics id column (with its unique index), missing fields' columns and
the triggers, keeps every row, and refuses what it cannot attach (a table that is not
there, an id column that is not a generated integer primary key, a Dynamics id column
that is not text) by the mapping's TOML path, changing nothing. The raw SQL of capture,
the fold and the bulk initial load use the table's own column names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config import load_settings
from crmsync.domain import ObjectSpec
from crmsync.engine import load
from crmsync.mapping import activate, default_objects
from crmsync.store import backlog, capture, migrate, outbound
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.local_tables import LocalSchemaMismatch
from crmsync.store.queue import Entry
from crmsync.store.schema import sync_change, sync_queue, sync_record

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def default_mapping_after() -> Iterator[None]:
    yield
    activate(default_objects())


def person(**extra: Any) -> dict[str, Any]:
    return {
        "table": "people",
        "id_column": "person_id",
        "crm_id_column": "dynamics_id",
        "entity_set": "new_people",
        "logical_name": "new_person",
        "primary_key": "new_personid",
        "label": "full_name",
        "fields": {
            "full_name": {"attribute": "new_name", "type": "string", "max_length": 200},
            "age": {"attribute": "new_age", "type": "integer"},
        },
        **extra,
    }


GHOST = {**person(), "table": "ghosts", "entity_set": "new_ghosts", "logical_name": "new_ghost"}
GHOST["primary_key"] = "new_ghostid"
# Beside the attached ones: a field crmsync would add to lead, a table it would create.
OTHERS: dict[str, Any] = {
    "lead": {"fields": {"lead_score": {"attribute": "new_leadscore", "type": "integer"}}},
    "badge": {
        "entity_set": "new_badges",
        "logical_name": "new_badge",
        "primary_key": "new_badgeid",
        "label": "name",
        "fields": {
            "name": {"attribute": "new_name", "type": "string"},
            "person_id": {"type": "lookup", "target": "person", "attribute": "new_personid"},
        },
    },
}

ID_COLUMN = {
    "sqlite": "person_id INTEGER PRIMARY KEY",
    "postgresql": "person_id SERIAL PRIMARY KEY",
}


def specs_of(db_url: str, **objects: Any) -> dict[str, ObjectSpec]:
    return load_settings(database_url=db_url, objects=objects).object_specs()


@pytest.fixture(autouse=True)
def _default_mapping_after() -> Iterator[None]:
    yield
    activate(default_objects())


def create_people(engine: sa.Engine, id_column: str | None = None, extra: str = "") -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE people ({id_column or ID_COLUMN[engine.dialect.name]},"
                f" full_name VARCHAR(200) NOT NULL, age INTEGER{extra})"
            )
        )
        conn.execute(sa.text("INSERT INTO people (full_name, age) VALUES ('Ann', 40), ('Bob', 50)"))


def columns(engine: sa.Engine, table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def triggers(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(capture.installed_triggers(conn))


def test_upgrade_adds_the_dynamics_id_and_keeps_every_row(
    engine: sa.Engine, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    create_people(engine)
    specs = specs_of(db_url, person=person())
    said: list[str] = []
    with caplog.at_level("INFO", logger="crmsync"):
        captured = migrate.upgrade(engine, specs.values(), announce=said.append)
    assert "person" in captured
    assert said == [
        "adding column dynamics_id to people (the Dynamics id of each record)",
        "installing capture triggers on people",
    ]
    assert "adding column dynamics_id to people" in caplog.text  # logged as well
    assert columns(engine, "people") == ["person_id", "full_name", "age", "dynamics_id"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM people ORDER BY person_id")).all()
    assert [tuple(r) for r in rows] == [(1, "Ann", 40, None), (2, "Bob", 50, None)]
    assert {f"{capture.PREFIX}people_{op}" for op in capture.OPS} <= triggers(engine)
    migrate.ensure_current(engine, specs.values())


def test_an_existing_dynamics_id_column_is_used_and_gets_its_unique_index(
    engine: sa.Engine, db_url: str
) -> None:
    create_people(engine, extra=", dynamics_id VARCHAR(36)")
    specs = specs_of(db_url, person=person())
    with pytest.raises(migrate.StoreNotUpgraded, match=r"people\.dynamics_id \(its unique index\)"):
        migrate.ensure_current(engine, specs.values())
    said: list[str] = []
    migrate.upgrade(engine, specs.values(), announce=said.append)
    assert said[0] == (
        "adding a unique index on column dynamics_id of people (the Dynamics id of each record)"
    )
    unique = [ix["column_names"] for ix in sa.inspect(engine).get_indexes("people") if ix["unique"]]
    assert unique == [["dynamics_id"]]
    migrate.ensure_current(engine, specs.values())


def test_a_missing_table_is_refused_by_its_path_and_nothing_changes(
    engine: sa.Engine, db_url: str
) -> None:
    create_people(engine)
    specs = specs_of(db_url, person=person(), ghost=GHOST, **OTHERS)
    before = (columns(engine, "people"), columns(engine, "lead"), triggers(engine))
    said: list[str] = []
    with pytest.raises(LocalSchemaMismatch) as info:
        migrate.upgrade(engine, specs.values(), announce=said.append)
    assert "objects.ghost.table: there is no table 'ghosts' in the store" in str(info.value)
    assert said == []  # refused before anything was announced, or done
    assert (columns(engine, "people"), columns(engine, "lead"), triggers(engine)) == before
    assert "badge" not in sa.inspect(engine).get_table_names()
    # Start-up refuses the same way, in one line.
    with pytest.raises(LocalSchemaMismatch, match=r"objects\.ghost\.table"):
        migrate.ensure_current(engine, specs.values())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_store(
    request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None
) -> Iterator[sa.Engine]:
    """A store crmsync has never upgraded: Alembic's migrations run in the transaction."""
    if request.param == "sqlite":
        engine = create_store_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        yield engine
        engine.dispose()
        return
    if pg_template is None:
        pytest.skip("PostgreSQL not reachable; set CI=1 to make this fail")
    admin_url = os.environ.get(
        "CRMSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"crmsync_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_store_engine(
        sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    )
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_a_refused_first_upgrade_leaves_an_empty_store_empty(empty_store: sa.Engine) -> None:
    create_people(empty_store)
    url = empty_store.url.render_as_string(hide_password=False)
    specs = specs_of(url, person=person(), ghost=GHOST)
    with pytest.raises(LocalSchemaMismatch, match=r"objects\.ghost\.table"):
        migrate.upgrade(empty_store, specs.values())
    # Alembic's tables and crmsync's went with the rollback; the application's is as it was.
    assert sa.inspect(empty_store).get_table_names() == ["people"]
    assert columns(empty_store, "people") == ["person_id", "full_name", "age"]
    assert migrate.current_revision(empty_store) is None


NOT_GENERATED = {
    "sqlite": "person_id BIGINT PRIMARY KEY",
    "postgresql": "person_id BIGINT PRIMARY KEY",
}


@pytest.mark.parametrize(
    ("id_column", "extra", "mapping", "expected"),
    [
        ("pid INTEGER PRIMARY KEY", "", {}, "objects.person.id_column: people has no column"),
        (
            "person_id VARCHAR(10) PRIMARY KEY",
            "",
            {},
            "objects.person.id_column: people.person_id must be the table's integer primary key",
        ),
        (None, "", {}, "objects.person.id_column: people.person_id is not generated"),
        (
            "person_id INTEGER",
            ", dynamics_id INTEGER",
            {},
            "objects.person.crm_id_column: people.dynamics_id is INTEGER",
        ),
        (
            "person_id INTEGER",
            ", nickname INTEGER",
            {"fields": {"nickname": {"attribute": "new_nick", "type": "string"}}},
            "people.nickname is INTEGER in the store but the mapping says string",
        ),
    ],
    ids=["no id column", "id not an integer key", "id not generated", "crm id not text", "type"],
)
def test_what_cannot_be_attached_is_refused_by_its_path(
    engine: sa.Engine,
    db_url: str,
    id_column: str | None,
    extra: str,
    mapping: dict[str, Any],
    expected: str,
) -> None:
    dialect = engine.dialect.name
    if id_column is None:
        id_column = NOT_GENERATED[dialect]
    elif id_column == "person_id INTEGER":
        id_column = ID_COLUMN[dialect]
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text(f"CREATE TABLE people ({id_column}, full_name TEXT, age INTEGER{extra})")
        )
    entry = person()
    entry["fields"] = {**entry["fields"], **mapping.get("fields", {})}
    specs = specs_of(db_url, person=entry)
    before = columns(engine, "people")
    with pytest.raises(LocalSchemaMismatch) as info:
        migrate.upgrade(engine, specs.values())
    assert expected in str(info.value)
    assert columns(engine, "people") == before


def test_capture_and_the_fold_use_the_tables_own_names(engine: sa.Engine, db_url: str) -> None:
    create_people(engine)
    settings = load_settings(database_url=db_url, objects={"person": person()})
    activate(settings.object_specs())  # as a command does
    migrate.upgrade(engine, settings.object_specs().values())
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE people SET age = 41 WHERE full_name = 'Ann'"))
        conn.execute(
            sa.text("UPDATE people SET dynamics_id = :c WHERE full_name = 'Bob'"),
            {"c": "00000000-0000-0000-0000-00000000000b"},
        )
    with engine.connect() as conn:
        logged = conn.execute(sa.select(sync_change.c.object, sync_change.c.record_id)).all()
    # Only Ann's change is a pushed column's; Bob's Dynamics id is crmsync's own.
    assert [tuple(r) for r in logged] == [("person", 1)]
    with write_transaction(engine) as conn:
        conn.execute(sa.text("UPDATE people SET age = 51 WHERE full_name = 'Bob'"))
        conn.execute(sa.text("DELETE FROM people WHERE full_name = 'Bob'"))
    with engine.connect() as conn:
        # Readers (status, dry runs) see the unfolded log as the entries it will make.
        tail = sorted(
            (t.record_id, t.crm_id, t.after, t.label)
            for t in backlog.tail_entries(conn, "person", 10)
        )
        groups = {(g.operation, g.count) for g in backlog.groups(conn, "to_crm", "person")}
    capture.fold_pending(engine)
    with engine.connect() as conn:
        entries = conn.execute(
            sa.select(
                sync_queue.c.record_id,
                sync_queue.c.crm_id,
                sync_queue.c.operation,
                sync_queue.c.label,
            ).order_by(sync_queue.c.record_id)
        ).all()
    assert [tuple(e) for e in entries] == [
        (1, None, "insert", "Ann"),
        (2, "00000000-0000-0000-0000-00000000000b", "delete", "Bob"),
    ]
    assert tail == [tuple(e) for e in entries]
    assert groups == {("insert", 1), ("delete", 1)}


def test_the_initial_loads_bulk_path_inserts_into_an_attached_table(
    engine: sa.Engine, db_url: str
) -> None:
    create_people(engine)
    settings = load_settings(database_url=db_url, objects={"person": person()})
    activate(settings.object_specs())  # as a command does
    migrate.upgrade(engine, settings.object_specs().values())
    specs = settings.object_specs()
    crm_id = "00000000-0000-0000-0000-000000000001"
    page = [
        {
            "@odata.etag": 'W/"7"',
            "new_personid": crm_id,
            "new_name": "Cy",
            "new_age": None,
            "modifiedon": "2026-12-01T10:00:00Z",
            "versionnumber": 7,
        }
    ]
    with write_transaction(engine) as conn:
        done = load.insert_new(conn, specs, specs["person"], page, None, NOW)
    assert (done.inserted, done.rest) == ([crm_id], [])
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT person_id, full_name FROM people WHERE dynamics_id = :c"), {"c": crm_id}
        ).one()
        state = conn.execute(sa.select(sync_record.c.object, sync_record.c.record_id)).one()
        logged = conn.execute(sa.select(sa.func.count()).select_from(sync_change)).scalar()
    assert tuple(row) == (3, "Cy")
    assert tuple(state) == ("person", 3)
    assert logged == 0  # applied, not captured to go back


def test_the_push_reads_an_attached_row_by_crmsyncs_names(engine: sa.Engine, db_url: str) -> None:
    """The push plans from the row's ``crm_id`` (an id the application set itself is
    kept: the upsert goes to that record), whatever the table calls the column."""
    create_people(engine)
    settings = load_settings(database_url=db_url, objects={"person": person()})
    activate(settings.object_specs())  # as a command does
    migrate.upgrade(engine, settings.object_specs().values())
    linked = "00000000-0000-0000-0000-0000000000aa"
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE people SET dynamics_id = :c WHERE person_id = 2"), {"c": linked}
        )
    entries = [
        Entry(0, "person", "to_crm", str(i), i, None, "insert", None, None, 1, 0, NOW)
        for i in (1, 2)
    ]
    with engine.connect() as conn:
        rows = outbound.load_rows(conn, settings.object_specs(), entries)
    assert {k: (r["id"], r["crm_id"], r["full_name"]) for k, r in rows.items()} == {
        ("person", 1): (1, None, "Ann"),
        ("person", 2): (2, linked, "Bob"),
    }


PERSON_TOML = """
[objects.person]
table = "people"
id_column = "person_id"
crm_id_column = "dynamics_id"
entity_set = "new_people"
logical_name = "new_person"
primary_key = "new_personid"
label = "full_name"

[objects.person.fields]
full_name = { attribute = "new_name", type = "string", max_length = 200 }
"""


def test_the_command_says_what_it_adds_and_refuses_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "crmsync.toml").write_text(PERSON_TOML, encoding="utf-8")
    store = tmp_path / "store.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env |= {
        "CRMSYNC_CONFIG": str(tmp_path / "crmsync.toml"),
        "CRMSYNC_DATABASE_URL": f"sqlite:///{store}",
    }

    def upgrade() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crmsync", "db", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = upgrade()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("crmsync: ") and "objects.person.table: there is no table" in line
    engine = create_store_engine(f"sqlite:///{store}")
    try:
        assert sa.inspect(engine).get_table_names() == []
        create_people(engine)
    finally:
        engine.dispose()
    done = upgrade()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "adding column dynamics_id to people (the Dynamics id of each record)",
        "installing capture triggers on people",
        f"schema from None to {migrate.head_revision()}; capturing changes on:"
        " lead, contact, person",
    ]
