"""Migrating an empty database yields exactly the declared metadata, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crmsync.config import Settings
from crmsync.store import migrate
from crmsync.store.schema import (
    ERROR_FTS,
    ERROR_FTS_TABLES,
    PG_SEARCH_INDEXES,
    POSTGRESQL_ONLY_INDEXES,
    declared_on,
    metadata,
)


def test_upgraded_schema_equals_metadata(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "include_object": declared_on(engine.dialect.name)},
        )
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_upgrade_records_head_and_is_repeatable(engine: sa.Engine) -> None:
    assert migrate.current_revision(engine) == migrate.head_revision()
    # A second upgrade is a no-op that keeps the schema and reinstalls the triggers.
    captured = migrate.upgrade(engine, Settings().object_specs().values())
    assert captured == ["lead", "contact"]
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_every_declared_table_exists(engine: sa.Engine) -> None:
    names = set(sa.inspect(engine).get_table_names())
    assert set(metadata.tables) <= names


def test_postgresql_search_indexes_exist(engine: sa.Engine) -> None:
    """The errors search is served by trigram indexes on PostgreSQL (migration 0002);
    SQLite has no such index type and gets none."""
    expected = set(PG_SEARCH_INDEXES) if engine.dialect.name == "postgresql" else set()
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("sync_error")}
    assert names & set(PG_SEARCH_INDEXES) == expected


def test_sqlite_error_search_index_and_its_triggers_exist(engine: sa.Engine) -> None:
    """Migration 0004: the FTS5 trigram table and the three triggers that keep it, on
    SQLite only. A later migration that rebuilds ``sync_error`` on SQLite (batch mode)
    drops the triggers with the old table: this fails until it creates them again."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text("SELECT type, name, tbl_name FROM sqlite_master WHERE name LIKE :name"),
                {"name": f"{ERROR_FTS}%"},
            ).all()
            if engine.dialect.name == "sqlite"
            else []
        )
    found = {(kind, name, table) for kind, name, table in rows}
    if engine.dialect.name != "sqlite":
        assert ERROR_FTS not in sa.inspect(engine).get_table_names()
        return
    assert ("table", ERROR_FTS, ERROR_FTS) in found
    triggers = {name for kind, name, table in found if kind == "trigger" and table == "sync_error"}
    assert triggers == {f"{ERROR_FTS}_insert", f"{ERROR_FTS}_update", f"{ERROR_FTS}_delete"}
    shadows = {name for kind, name, _ in found if kind == "table"} - {ERROR_FTS}
    assert shadows and shadows <= ERROR_FTS_TABLES


def test_the_logs_record_index_is_postgresqls_alone(engine: sa.Engine) -> None:
    """Every captured write pays for an index on the log; SQLite's reads of the log go
    without it (migration 0017)."""
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("sync_change")}
    on_postgresql = engine.dialect.name == "postgresql"
    assert (names >= POSTGRESQL_ONLY_INDEXES) is on_postgresql
    assert not (POSTGRESQL_ONLY_INDEXES & names) or on_postgresql


def test_0019_adds_the_choice_options_table_and_takes_it_away(engine: sa.Engine) -> None:
    from alembic import command

    from crmsync.mapping import default_objects
    from crmsync.store.db import write_transaction

    assert "sync_choice_option" in sa.inspect(engine).get_table_names()
    with write_transaction(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), "0018")
    assert "sync_choice_option" not in sa.inspect(engine).get_table_names()
    assert migrate.current_revision(engine) == "0018"
    migrate.upgrade(engine, default_objects().values())
    columns = {c["name"] for c in sa.inspect(engine).get_columns("sync_choice_option")}
    assert columns == {"object", "field", "value", "attribute", "label", "read_at"}
    assert migrate.current_revision(engine) == migrate.head_revision() == "0019"
