"""Migrating an empty database yields exactly the declared metadata, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crmsync.config import Settings
from crmsync.store import migrate
from crmsync.store.schema import metadata


def test_upgraded_schema_equals_metadata(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
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
