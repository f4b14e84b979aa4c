"""The console in a real browser: Debian's Chromium driven by Playwright, against the real
server (uvicorn on loopback) over a real store that the real engine and emulator filled.

One browser per test module; each test gets a fresh store, server and browser context.
The store is SQLite here (the pages' queries run on both backends in the integration
tests); the emulator is the session's, reset per test.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.web.app import create_app

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
TOKEN = "browser-token"

playwright_sync = pytest.importorskip("playwright.sync_api")


# Module scope, not session: Playwright's sync API keeps its event loop marked as running
# in this thread until it stops, which would break every asyncio test collected after.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium); browser tests need it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + "; set CI=1 to make this fail")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Console:
    url: str
    engine: sa.Engine
    settings: Settings

    def sql(self, statement: str, params: Any = None) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(sa.text(statement), params or {})

    def emulator(self, **values: Any) -> None:
        base = self.settings.dynamics_url or ""
        httpx.put(f"{base}/_emulator/config", json=values, timeout=10).raise_for_status()

    def drain(self, timeout: float = 60) -> None:
        """``worker --once`` in-process, on its own thread (Playwright owns this one's loop)."""
        failure: list[BaseException] = []

        async def go() -> None:
            async with DataverseClient.from_settings(self.settings) as client:
                await Worker(self.engine, client, self.settings, concurrency=2).run(once=True)

        def run() -> None:
            try:
                asyncio.run(asyncio.wait_for(go(), timeout=timeout))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout + 5)
        if failure:
            raise failure[0]

    def scalar(self, statement: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(statement)).scalar()


@pytest.fixture
def console(
    tmp_path: Path, sqlite_template: Path, emulator_url: str, serve_app: Any
) -> Iterator[Console]:
    target = tmp_path / "store.db"
    target.write_bytes(sqlite_template.read_bytes())
    settings = load_settings(
        database_url=f"sqlite:///{target}",
        dynamics_url=emulator_url,
        authority_url=emulator_url,
        tenant_id="crmsync-tests",
        client_id="crmsync-app",
        client_secret="test-secret",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        lease_seconds=10,
        admin_password=PASSWORD,
        api_token=TOKEN,
        timezone="Europe/Paris",
    )
    engine = create_store_engine(settings.database_url)
    with serve_app(create_app(settings, engine=engine)) as url:
        yield Console(url, engine, settings)
    engine.dispose()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    context = browser.new_context(
        base_url=console.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def _login(page: Any, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``docs/screenshots`` when ``CRMSYNC_SCREENSHOTS`` is set (to
    refresh the README's pictures), else a temporary folder (a test run changes no file)."""
    if os.environ.get("CRMSYNC_SCREENSHOTS"):
        path = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def login() -> Callable[..., None]:
    """``login(page, password=...)``: fill in and send the login form."""
    return _login
