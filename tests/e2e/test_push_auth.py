"""A token revoked in the middle of a push, end to end over HTTP, on SQLite and PostgreSQL.

The emulator runs in this test's own thread server so that the test can reach its token
issuer and revoke every token it has issued while a worker is pushing (as Entra ID does
when an app's tokens are revoked, or when a token dies early). Dataverse then answers
401; the client must fetch one new token for all its lanes (single flight), resend, and
finish the push with nothing lost, duplicated or parked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from crmsync.config import Settings, load_settings
from crmsync.emulator.app import Emulator
from crmsync.emulator.server import config
from crmsync.store.db import create_store_engine

N = 120


@pytest.fixture
def own_emulator() -> Iterator[tuple[Emulator, str]]:
    """An emulator on a port the OS picks, with its ``Emulator`` object at hand."""
    cfg = config("127.0.0.1", 0)
    assert isinstance(cfg.app, Emulator)
    server = uvicorn.Server(cfg)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "emulator did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield cfg.app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _synced(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM lead WHERE crm_id IS NOT NULL")).scalar_one()
        )


# The token's life is the client's business, not the store's: one store is enough.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_token_revoked_mid_push_is_refreshed_once_and_the_push_goes_on(
    db_url: str,
    own_emulator: tuple[Emulator, str],
    configure: Callable[..., None],
    drain: Callable[..., None],
    insert_leads: Callable[..., None],
    check_exactly_once: Callable[..., dict[str, Any]],
) -> None:
    emulator, url = own_emulator
    settings: Settings = load_settings(
        database_url=db_url,
        dynamics_url=url,
        authority_url=url,
        tenant_id="crmsync-tests",
        client_id="crmsync-app",
        client_secret="test-secret",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        batch_size=10,
    )
    issued: list[float] = []
    issue = emulator.tokens.issue

    def counting_issue(form: dict[str, str]) -> dict[str, Any]:
        if form.get("client_id") == "crmsync-app":
            issued.append(time.monotonic())
        return issue(form)

    emulator.tokens.issue = counting_issue  # type: ignore[method-assign]
    # 12 batches of 10 at ~0.2 s each over 2 lanes: over a second of pushing.
    configure(url, latency_ms=150, per_record_ms=5)
    store = create_store_engine(db_url)
    try:
        insert_leads(store, N)
        worker = threading.Thread(target=drain, args=(settings, store))
        worker.start()
        deadline = time.monotonic() + 30
        while _synced(store) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        synced_before = _synced(store)
        assert 20 <= synced_before < N, "revoke while the push is under way"
        assert len(issued) == 1
        revoked_at = time.monotonic()
        emulator.tokens.grants.clear()  # every token issued so far is now refused
        worker.join(timeout=60)
        assert not worker.is_alive()

        by_status = httpx.get(f"{url}/_emulator/stats", timeout=10).json()["requests"]["by_status"]
        # Both lanes' next requests met the revoked token...
        assert 1 <= by_status.get("401", 0) <= 2, by_status
        assert set(by_status) <= {"200", "401"}, by_status
        # ...and one new token served them both (single flight).
        assert len([t for t in issued if t >= revoked_at]) == 1, issued
        result = check_exactly_once(store, url)
        assert result["synced"] == N and len(result["crm"]) == N
    finally:
        store.dispose()
