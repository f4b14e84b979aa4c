"""Alembic environment: runs on the connection handed over by ``crmsync.store.migrate``."""

from __future__ import annotations

from alembic import context

from crmsync.store.schema import declared_on, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=declared_on(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
