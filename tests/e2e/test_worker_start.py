"""A worker or ``serve`` starting brings the capture triggers to the configured flows.

Issue 16 item 2: an object made two-way in ``CRMSYNC_CONFIG`` without ``crmsync db
upgrade`` had no capture triggers, so its local changes were silently lost. The store
fixtures are migrated with the default registry (account pulls only).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.store import capture, migrate
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.schema import sync_queue
from crmsync.web.app import create_app


@pytest.fixture
def two_way_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_settings: Settings
) -> Settings:
    cfg = tmp_path / "crmsync.toml"
    cfg.write_text('[objects.account]\nflow = "both"\n')
    monkeypatch.setenv("CRMSYNC_CONFIG", str(cfg))
    settings = load_settings(**sync_settings.model_dump(exclude_unset=True))
    assert settings.object_specs()["account"].flow.pushes
    return settings


def queued_accounts(engine: sa.Engine) -> list[tuple[str, str | None]]:
    capture.fold_pending(engine)
    q = sync_queue.c
    with engine.connect() as conn:
        return [
            (r.direction, r.label)
            for r in conn.execute(sa.select(q.direction, q.label).where(q.object == "account"))
        ]


def insert_account(engine: sa.Engine, name: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO account (name) VALUES (:n)"), {"n": name})


def test_a_worker_start_captures_an_object_made_two_way_without_upgrade(
    two_way_accounts: Settings, store: sa.Engine, drain: object
) -> None:
    insert_account(store, "Before")  # no trigger yet: the store was migrated pull-only
    assert queued_accounts(store) == []
    drain(two_way_accounts, store)  # type: ignore[operator]  # worker --once, no upgrade
    insert_account(store, "Acme")
    assert queued_accounts(store) == [("to_crm", "Acme")]


def test_serve_start_captures_an_object_made_two_way_without_upgrade(
    two_way_accounts: Settings, store: sa.Engine
) -> None:
    async def serving() -> None:
        app = create_app(two_way_accounts, engine=store)
        async with app.router.lifespan_context(app):
            insert_account(store, "Acme")

    asyncio.run(serving())
    assert queued_accounts(store) == [("to_crm", "Acme")]


def test_processes_starting_at_once_install_the_triggers_once(
    two_way_accounts: Settings, store: sa.Engine
) -> None:
    """Each starting process reads the triggers, and installs them under a lock (an
    advisory lock on PostgreSQL) after looking again: one installs, the others find
    them done; none fails."""
    specs = list(two_way_accounts.object_specs().values())
    engines = [create_store_engine(two_way_accounts.database_url) for _ in range(4)]
    results: list[object] = []
    start = threading.Barrier(len(engines))

    def starting(engine: sa.Engine) -> None:
        start.wait()
        try:
            results.append(capture.ensure_triggers(engine, specs))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=starting, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert sorted(map(repr, results)) == sorted(
        [repr(["lead", "contact", "account"])] + [repr(None)] * (len(engines) - 1)
    )
    insert_account(store, "Acme")
    assert queued_accounts(store) == [("to_crm", "Acme")]


def test_a_store_not_upgraded_is_refused_in_one_line(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(migrate.StoreNotUpgraded) as info:
            migrate.ensure_current(engine, load_settings().object_specs().values())
    finally:
        engine.dispose()
    message = str(info.value)
    assert "\n" not in message and "crmsync db upgrade" in message


def test_serve_starts_on_a_store_not_upgraded_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve`` keeps starting on a store that is not upgraded (its health checks say
    so); the trigger check only logs why it could not run."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = create_store_engine(url)

    async def serving() -> None:
        app = create_app(load_settings(database_url=url), engine=engine)
        async with app.router.lifespan_context(app):
            pass

    try:
        asyncio.run(serving())
    finally:
        engine.dispose()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store.triggers_unchecked") == 1
