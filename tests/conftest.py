"""Shared fixtures: real SQLite and PostgreSQL stores, migrated, one fresh per test.

PostgreSQL: one template database is migrated per session; each test gets a copy made
with ``CREATE DATABASE ... TEMPLATE``. Without a server the PostgreSQL tests skip with a
message, except under CI (``CI`` set), where they fail: CI must exercise PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import Settings, load_settings
from crmsync.store.db import create_store_engine
from crmsync.store.migrate import upgrade

PG_ADMIN_URL = os.environ.get(
    "CRMSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_TEMPLATE = f"crmsync_test_tmpl_{os.getpid()}"


def _pg_admin() -> Engine | None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}")
        return None
    return engine


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    admin = _pg_admin()
    if admin is None:
        yield None
        return
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{_TEMPLATE}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{_TEMPLATE}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=_TEMPLATE).render_as_string(hide_password=False)
    engine = create_store_engine(url, poolclass=sa.NullPool)
    upgrade(engine, Settings().object_specs().values())
    engine.dispose()
    yield _TEMPLATE
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)'))
    admin.dispose()


def _pg_url(pg_template: str | None) -> Iterator[str]:
    if pg_template is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}; set CI=1 to make this fail")
    name = f"crmsync_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tmpl") / "template.db"
    engine = create_store_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
    upgrade(engine, Settings().object_specs().values())
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    pg_template: str | None,
) -> Iterator[str]:
    """A freshly migrated store (default object registry), once per backend."""
    if request.param == "sqlite":
        target = tmp_path / "store.db"
        target.write_bytes(sqlite_template.read_bytes())
        yield f"sqlite:///{target}"
    else:
        yield from _pg_url(pg_template)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_store_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return load_settings(database_url=db_url)


# --- real servers on loopback ----------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """A uvicorn server in a background thread, on a free loopback port."""

    def __init__(self, config: object) -> None:
        import threading

        import uvicorn

        assert isinstance(config, uvicorn.Config)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def thread_server() -> type[ThreadServer]:
    """``with thread_server(uvicorn.Config(...)):`` for a test that sets its own server
    options (conftest modules are not importable from other test folders)."""
    return ThreadServer


@pytest.fixture
def serve_app() -> Callable[[Any], AbstractContextManager[str]]:
    """``with serve_app(app) as url:`` an ASGI app on a free loopback port (conftest
    modules are not importable from other test folders, hence a fixture)."""

    @contextmanager
    def serve(app: Any) -> Iterator[str]:
        import uvicorn

        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        with ThreadServer(config):
            yield f"http://127.0.0.1:{port}"

    return serve


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[str]:
    """The Dynamics emulator over real HTTP on loopback, for the whole session."""
    from crmsync.emulator.server import config

    port = free_port()
    with ThreadServer(config("127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def emulator_url(emulator_server: str) -> str:
    """The emulator, reset to empty and default limits for this test."""
    import httpx

    httpx.post(f"{emulator_server}/_emulator/reset", timeout=10).raise_for_status()
    return emulator_server


@pytest.fixture
def sync_settings(db_url: str, emulator_url: str) -> Settings:
    """Settings for a store on ``db_url`` syncing with the emulator, fast retries."""
    return load_settings(
        database_url=db_url,
        dynamics_url=emulator_url,
        authority_url=emulator_url,
        tenant_id="crmsync-tests",
        client_id="crmsync-app",
        client_secret="test-secret",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        lease_seconds=10,
    )
