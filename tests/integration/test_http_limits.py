"""``crmsync serve``'s HTTP server over real loopback sockets: body size and time limits
(before authentication), header deadlines, a cap on connections that a slowloris
cannot turn against ``/healthz``, and X-Forwarded-For believed from trusted proxies
only. Bounded: a few hundred connections, a few seconds."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from crmsync.config import load_settings
from crmsync.store.db import create_store_engine
from crmsync.web.app import create_app
from crmsync.web.server import server_options

TOKEN = "limits-token-1234567890"
PASSWORD = "limits-Admin-pw-1"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store_url(tmp_path: Path, sqlite_template: Path) -> str:
    target = tmp_path / "store.db"
    target.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{target}"


Serve = Callable[..., AbstractContextManager[tuple[str, int]]]


@pytest.fixture
def serve(store_url: str, thread_server: Any) -> Iterator[Serve]:
    engines: list[sa.Engine] = []

    @contextmanager
    def run(**overrides: Any) -> Iterator[tuple[str, int]]:
        settings = load_settings(
            database_url=store_url, api_token=TOKEN, admin_password=PASSWORD, **overrides
        )
        engine = create_store_engine(store_url)
        engines.append(engine)
        port = free_port()
        config = uvicorn.Config(
            create_app(settings, engine=engine),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            **server_options(settings),
        )
        with thread_server(config):
            yield f"http://127.0.0.1:{port}", port

    yield run
    for engine in engines:
        engine.dispose()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_by_server(socks: list[socket.socket], want: int, seconds: float) -> int:
    """How many of ``socks`` the server closed (EOF or reset), looked at until ``want``
    of them are or ``seconds`` have passed."""
    waiting, closed = list(socks), 0
    deadline = time.monotonic() + seconds
    while closed < want and time.monotonic() < deadline:
        for s in list(waiting):
            s.settimeout(0.001)
            try:
                gone = s.recv(1) == b""
            except TimeoutError:
                gone = False
            except ConnectionResetError:
                gone = True
            if gone:
                closed += 1
                waiting.remove(s)
    return closed


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3})", response)
    assert match, response[:200]
    return int(match.group(1))


def leads(store_url: str) -> int:
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT count(*) FROM lead")) or 0)
    finally:
        engine.dispose()


def test_a_declared_oversized_body_is_413_unread_and_before_authentication(serve: Serve) -> None:
    with serve(max_request_bytes=100_000) as (_url, port), connect(port) as sock:
        # 100 MB announced, not one byte of it sent: the answer must not wait for it.
        sock.sendall(
            b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        response = read_response(sock)
    assert status_of(response) == 413
    assert b"connection: close" in response.lower()


def test_a_chunked_body_is_counted_while_it_streams(serve: Serve, store_url: str) -> None:
    with serve(max_request_bytes=100_000) as (url, port):
        with connect(port) as sock:
            sock.sendall(
                b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\n"
                + AUTH.encode()
                + b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            piece = b'{"email": "' + b"x" * 30_000
            sent = 0
            try:
                while sent < 1_000_000:  # far past the limit; the server stops it early
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
                    piece = b"x" * 30_000
            except (BrokenPipeError, ConnectionResetError):
                pass
            response = read_response(sock)
        assert status_of(response) == 413
        assert sent < 1_000_000 or b"413" in response
        # Under the limit, the same route works (and is authenticated as usual).
        ok = httpx.post(
            f"{url}/api/v1/records/lead",
            json={"email": "small@example.com"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 201, ok.text
        anonymous = httpx.post(f"{url}/api/v1/records/lead", json={"email": "a@example.com"})
        assert anonymous.status_code == 401
    assert leads(store_url) == 1


def test_a_slow_body_gets_408(serve: Serve) -> None:
    with serve(body_timeout_seconds=0.5) as (_url, port), connect(port) as sock:
        sock.sendall(
            b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\n"
            + AUTH.encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        response = read_response(sock)
    assert status_of(response) == 408
    assert time.monotonic() - started < 4


def test_slow_or_absent_headers_are_cut_off(serve: Serve) -> None:
    with serve(header_timeout_seconds=0.5) as (url, port):
        with connect(port) as half, connect(port) as silent:
            half.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # never finished
            started = time.monotonic()
            assert status_of(read_response(half)) == 408
            assert half.recv(1) == b""  # and closed
            assert silent.recv(1024).startswith(b"HTTP/1.1 408")
            assert time.monotonic() - started < 4
        # One header line at a time, each in time, still has one deadline in all.
        with connect(port) as trickle:
            trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
            cut = False
            for n in range(20):
                time.sleep(0.1)
                try:
                    trickle.sendall(b"X-Slow-%d: 1\r\n" % n)
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
            assert cut or status_of(read_response(trickle)) == 408
        # Keep-alive: a finished request's connection is fine, then idles out as before.
        with httpx.Client(base_url=url) as http:
            assert http.get("/healthz").status_code in (200, 503)
            assert http.get("/healthz").status_code in (200, 503)


def test_a_slowloris_cannot_keep_healthz_from_answering(serve: Serve) -> None:
    slow, cap = 400, 150
    with serve(max_connections=cap, header_timeout_seconds=30) as (url, port), ExitStack() as stack:
        socks = []
        for _ in range(slow):
            s = stack.enter_context(connect(port, timeout=2))
            s.sendall(b"GET /api/v1/sync/status HTTP/1.1\r\nHost: t\r\nX-a: ")
            socks.append(s)
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(5):
                started = time.monotonic()
                r = http.get("/healthz")
                assert r.status_code in (200, 503), r.text  # answers (503: no Dynamics set)
                assert time.monotonic() - started < 1.0
        # The cap held: the half-sent requests beyond it were closed by the server.
        assert closed_by_server(socks, slow - cap, seconds=5) >= slow - cap


def test_a_health_check_is_answered_while_every_kept_connection_serves_a_request(
    serve: Serve,
) -> None:
    """The cap full of real requests (each waiting for the rest of its body): a new
    connection waits in the reserve and is answered; past the reserve one is closed."""
    cap, reserve = 10, 8  # the reserve: 1% of the cap, at least 8
    with serve(max_connections=cap, body_timeout_seconds=30) as (url, port), ExitStack() as stack:
        busy = []
        for _ in range(cap):
            s = stack.enter_context(connect(port))
            busy.append(s)
            s.sendall(
                b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\n"
                + AUTH.encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
        time.sleep(0.3)  # every one of them is past its headers
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(3):
                assert http.get("/healthz").status_code in (200, 503)
        # Past the cap and the reserve, every new connection costs one: however the
        # server's reads interleave with its accepts, no more than both are kept.
        over = 4
        socks = []
        for _ in range(reserve + over):
            s = stack.enter_context(connect(port))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # counted below
                s.sendall(
                    b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\n"
                    + AUTH.encode()
                    + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                )
            socks.append(s)
        closed = closed_by_server(busy + socks, over, seconds=10)
        assert closed >= over, f"{closed} of the {over} connections past the cap and reserve"


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(serve: Serve) -> None:
    def attempt(http: httpx.Client, password: str, forwarded_for: str) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        form = http.get("/login", headers=headers)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, form.text
        data = {"username": "admin", "password": password, "csrf_token": token.group(1)}
        return http.post("/login", data=data, headers=headers).status_code

    # Not trusted (the default): rotating the header does not buy more guesses.
    with serve() as (url, _port), httpx.Client(base_url=url) as http:
        codes = [attempt(http, "wrong", f"198.51.100.{n}") for n in range(1, 8)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]

    # Trusted: each client is itself, and an attacker's guesses never delay the admin.
    with serve(trusted_proxies="127.0.0.1") as (url, _port):
        with httpx.Client(base_url=url) as attacker:
            codes = [attempt(attacker, "wrong", "203.0.113.9") for _ in range(7)]
        assert codes[5:] == [429, 429]
        with httpx.Client(base_url=url, follow_redirects=False) as admin:
            assert attempt(admin, PASSWORD, "198.51.100.20") == 303


def test_crmsync_serve_applies_the_limits_and_starts_with_its_store_down(tmp_path: Path) -> None:
    """The real command: its server is the guarded one, and a store that is down is
    /healthz's to report (systemd would not restart a status-2 exit)."""
    import os
    import subprocess
    import sys

    port, dead = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env |= {
        "CRMSYNC_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{dead}/none",
        "CRMSYNC_API_TOKEN": TOKEN,
        "CRMSYNC_HEADER_TIMEOUT_SECONDS": "0.5",
        "CRMSYNC_MAX_REQUEST_BYTES": "2048",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "crmsync serve did not start"
                time.sleep(0.2)
        assert health.status_code == 503
        with connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            assert status_of(read_response(sock)) == 408
        with connect(port) as sock:
            sock.sendall(
                b"POST /api/v1/records/lead HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n"
            )
            assert status_of(read_response(sock)) == 413
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
