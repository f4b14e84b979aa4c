"""Seeding history into a real store: empty buckets only, read back by the status API's
queries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings, load_settings
from crmsync.demo.history import seed_history
from crmsync.demo.runner import demo_mapping
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate, status
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_throughput


def test_seeded_history_fills_last_hour_and_keeps_real_counts(
    engine: Engine, settings: Settings
) -> None:
    now = datetime(2026, 11, 25, 14, 10, tzinfo=UTC)
    real = datetime(2026, 11, 25, 13, 30, tzinfo=UTC)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.insert(sync_throughput).values(
                bucket_start=real, object="lead", direction="to_crm", operation="insert", synced=7
            )
        )
        written = seed_history(conn, now, settings.zone, settings.object_specs().values())
    assert written > 1000
    with engine.connect() as conn:
        kept = conn.execute(
            sa.select(sync_throughput.c.synced).where(sync_throughput.c.bucket_start == real)
        ).all()
        assert [r[0] for r in kept] == [7]
        body = status.last_hour(conn, settings.object_specs(), settings.zone, at=now)
    assert body["window"]["start"].startswith("2026-11-25T13:00")
    synced = {o["object"]: o["synced"] for o in body["objects"]}
    assert synced["lead"] > 7 and synced["account"] > 0
    # A second seeding (a reused demo) finds every bucket filled.
    with write_transaction(engine) as conn:
        assert seed_history(conn, now, settings.zone, settings.object_specs().values()) == 0


def test_the_demo_mappings_custom_table_has_history_from_the_start(
    engine: Engine, db_url: str
) -> None:
    settings = load_settings(database_url=db_url, objects=demo_mapping())
    try:
        migrate.upgrade(engine, settings.object_specs().values())
        now = datetime(2026, 11, 25, 14, 10, tzinfo=UTC)
        with write_transaction(engine) as conn:
            seed_history(conn, now, settings.zone, settings.object_specs().values())
        with engine.connect() as conn:
            body = status.last_hour(conn, settings.object_specs(), settings.zone, at=now)
    finally:
        activate(default_objects())
    synced = {o["object"]: o["synced"] for o in body["objects"]}
    assert synced["event_registration"] > 0
