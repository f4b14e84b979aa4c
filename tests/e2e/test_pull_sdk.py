"""Pull with Microsoft's own SDK as the Dynamics user.

``powerplatform-dataverse-client`` (with MSAL, over HTTPS with a throwaway trustme CA)
creates, updates and deletes leads, contacts, accounts and opportunities in the
emulator; crmsync, served the same emulator over plain HTTP, pulls them into a real
SQLite or PostgreSQL store. Lookups must resolve; an expired delta token must recover.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
import sqlalchemy as sa
import trustme
import uvicorn
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient
from pull_support import count, rows

from crmsync.config import load_settings
from crmsync.emulator.app import Emulator, create_app
from crmsync.store.db import create_store_engine
from crmsync.store.schema import sync_error, sync_queue


@dataclass
class Served:
    http_url: str
    https_url: str
    ca_file: Path
    emulator: Emulator


def _serve(app: Emulator, **tls: Any) -> tuple[uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning", **tls)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "emulator did not start"
        time.sleep(0.02)
    return server, thread, sock


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One emulator, over HTTPS for the SDK and over HTTP for crmsync."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    app = create_app()
    plain = _serve(app)
    tls = _serve(app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
    yield Served(
        f"http://127.0.0.1:{plain[2].getsockname()[1]}",
        f"https://127.0.0.1:{tls[2].getsockname()[1]}",
        ca_file,
        app,
    )
    for server, thread, sock in (plain, tls):
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class Credential:
    """An azure-core TokenCredential asking the emulator's token endpoint through MSAL."""

    def __init__(self, authority: str, session: requests.Session) -> None:
        self.app = msal.ConfidentialClientApplication(
            "sales-sdk-user",
            client_credential="secret",
            authority=authority,
            instance_discovery=False,
            http_client=session,
        )

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        result = self.app.acquire_token_for_client(scopes=list(scopes))
        assert "access_token" in result, result
        return AccessToken(result["access_token"], int(time.time()) + int(result["expires_in"]))


@pytest.fixture
def sdk(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataverseClient]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(served.ca_file))
    served.emulator.reset()
    with (
        requests.Session() as session,
        DataverseClient(
            served.https_url, Credential(f"{served.https_url}/sdk-tenant", session)
        ) as client,
    ):
        yield client


def test_sdk_user_changes_reach_local_tables_and_survive_an_expired_token(
    served: Served, sdk: DataverseClient, db_url: str, drain: Any
) -> None:
    settings = load_settings(
        database_url=db_url,
        dynamics_url=served.http_url,
        authority_url=served.http_url,
        tenant_id="crmsync-tests",
        client_id="crmsync-app",
        client_secret="test-secret",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
    )
    store = create_store_engine(db_url)
    try:
        acme = sdk.records.create("account", {"name": "Acme"})
        initech = sdk.records.create("account", {"name": "Initech"})
        contacts = sdk.records.create(
            "contact",
            [
                {
                    "lastname": f"C{i}",
                    "emailaddress1": f"c{i}@example.com",
                    "parentcustomerid_account@odata.bind": f"/accounts({acme})",
                }
                for i in range(3)
            ],
        )
        lead = sdk.records.create(
            "lead", {"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@example.com"}
        )
        deal = sdk.records.create(
            "opportunity", {"name": "Deal", "parentaccountid@odata.bind": f"/accounts({acme})"}
        )
        drain(settings, store)
        accounts = rows(store, "account")
        assert {a["name"] for a in accounts.values()} == {"Acme", "Initech"}
        local_contacts = rows(store, "contact")
        assert set(local_contacts) == set(contacts)
        assert {c["account_id"] for c in local_contacts.values()} == {accounts[acme]["id"]}
        assert rows(store, "lead")[lead]["first_name"] == "Ada"
        assert rows(store, "opportunity")[deal]["account_id"] == accounts[acme]["id"]

        sdk.records.update("lead", lead, {"lastname": "King"})
        sdk.records.update(
            "contact", contacts[0], {"parentcustomerid_account@odata.bind": f"/accounts({initech})"}
        )
        sdk.records.delete("contact", contacts[1])
        sdk.records.update("opportunity", deal, {"name": "Won deal"})
        drain(settings, store)
        assert rows(store, "lead")[lead]["last_name"] == "King"
        assert rows(store, "contact")[contacts[0]]["account_id"] == accounts[initech]["id"]
        assert set(rows(store, "contact")) == {contacts[0], contacts[2]}
        assert rows(store, "opportunity")[deal]["name"] == "Won deal"

        # Change tracking forgets our delta links: a full reconciliation must follow.
        served.emulator.configure({"expire_delta_tokens": True})
        sdk.records.delete("opportunity", deal)
        sdk.records.delete("account", initech)
        sdk.records.update("lead", lead, {"companyname": "Analytical Engines"})
        extra = sdk.records.create("lead", {"lastname": "New", "emailaddress1": "n@example.com"})
        drain(settings, store)
        assert rows(store, "opportunity") == {}
        assert set(rows(store, "account")) == {acme}
        assert set(rows(store, "lead")) == {lead, extra}
        assert rows(store, "lead")[lead]["company"] == "Analytical Engines"
        assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
        with store.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 2
    finally:
        store.dispose()
