"""HTTPS emulator for real clients (a throwaway trustme CA), shared by the client tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import trustme
import uvicorn
from emulator_https import Running

from crmsync.emulator import server
from crmsync.emulator.app import Emulator


@pytest.fixture(scope="module")
def https_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server.config("127.0.0.1", port, None, cert_file, key_file)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    app = config.loaded_app if hasattr(config, "loaded_app") else config.app
    emulator = config.app if isinstance(config.app, Emulator) else app
    assert isinstance(emulator, Emulator)
    yield Running(f"https://127.0.0.1:{port}", ca_file, emulator)
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def fresh(https_emulator: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_emulator.ca_file))
    https_emulator.emulator.reset()
    return https_emulator


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """MSAL's HTTP session, closed after the test so no TLS connection outlives it."""
    with requests.Session() as s:
        yield s
