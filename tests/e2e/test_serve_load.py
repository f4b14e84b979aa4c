"""``crmsync serve`` under load (issue 16): 1,000 concurrent API reads and a slowloris of
2,000 half-sent requests at once, while ``/healthz`` keeps answering within a second;
afterwards the server answers normally. Loopback only, bounded in count and time.

The real command in its own process, with its default limits (1,000 connections kept,
a 10 s header deadline). ``/healthz`` is probed on a fresh connection, 0.1 s after each
answer, from a process of its own; the machine may be small and busy (a probe that
connects in the same instant as 3,000 others waits in the kernel's accept queue), so the
bound is held by the probes' median, with nine in ten answered and never two in a row
unanswered; after the load every request must be answered at once. Figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "serve-load-token-0123456789abcdef"
HOST = "127.0.0.1"
SLOW, GETS, CAP = 2000, 1000, 1000
BOUND_S = 1.0

pytestmark = pytest.mark.slow


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Enough open files for this process's 3,000 sockets and the server's 1,000
    (``crmsync serve`` inherits the limit, as LimitNOFILE gives it in the systemd units)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (SLOW + GETS) + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the open-file hard limit ({hard}) is below the {need} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def server(tmp_path: Path, sqlite_template: Path, descriptors: None) -> Iterator[tuple[str, int]]:
    store = tmp_path / "store.db"
    store.write_bytes(sqlite_template.read_bytes())
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env |= {"CRMSYNC_DATABASE_URL": f"sqlite:///{store}", "CRMSYNC_API_TOKEN": TOKEN}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "serve", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "crmsync serve did not start"
                time.sleep(0.1)
        yield url, port
        assert proc.poll() is None, "crmsync serve died under load"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# The health checker is a process of its own, as a load balancer's would be: in this
# one, the flood's 3,000 connections would delay its requests before they are sent.
PROBER = """
import json, pathlib, sys, time
import httpx
url, stop = sys.argv[1], pathlib.Path(sys.argv[2])
probes = []
print("ready", flush=True)
while not stop.exists():
    started = time.monotonic()
    try:
        r = httpx.get(url + "/healthz", timeout=5)
        # 503: no Dynamics configured, still an answer
        ok = r.status_code in (200, 503)
        probes.append(time.monotonic() - started if ok else f"status {r.status_code}")
    except httpx.HTTPError as exc:
        probes.append(type(exc).__name__)
    time.sleep(0.1)
print(json.dumps(probes), flush=True)
"""


async def half_sent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /api/v1/sync/status HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def get(port: int) -> int | str:
    """A plain GET of the API on its own connection: its status, or why none came."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        return type(exc).__name__
    try:
        writer.write(
            b"GET /api/v1/sync/status HTTP/1.1\r\nHost: t\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not answer.startswith(b"HTTP/1.1 "):
        return "no answer"
    return int(answer[9:12])


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        # A closed connection reads as EOF (after a 408, or without one) at once.
        await asyncio.wait_for(reader.read(), timeout=0.01)
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def load(port: int) -> dict[str, object]:
    slow, answers = await asyncio.gather(
        asyncio.gather(*(half_sent(port) for _ in range(SLOW)), return_exceptions=True),
        asyncio.gather(*(get(port) for _ in range(GETS))),
    )
    pairs = [p for p in slow if isinstance(p, tuple)]
    await asyncio.sleep(0.5)
    closed = sum(await asyncio.gather(*(closed_by_server(r) for r, _ in pairs)))
    for _, writer in pairs:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    statuses = [a for a in answers if isinstance(a, int)]
    return {
        "slow_opened": len(pairs),
        "slow_closed": closed,
        "ok": statuses.count(200),
        "server_errors": [s for s in statuses if s >= 500],
    }


def test_healthz_answers_through_a_slowloris_and_a_burst_and_serve_recovers(
    server: tuple[str, int], tmp_path: Path
) -> None:
    url, port = server
    stop = tmp_path / "stop-probing"
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBER, url, str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        result = asyncio.run(asyncio.wait_for(load(port), timeout=90))
        stop.touch()
        out, _ = prober.communicate(timeout=30)
    finally:
        prober.kill()
        prober.wait()
    probes: list[float | str] = json.loads(out)
    assert len(probes) >= 5, probes
    failed = [p for p in probes if isinstance(p, str)]
    # Unanswered counts as slower than any answer.
    seconds = [p if isinstance(p, float) else float("inf") for p in probes]
    assert statistics.median(seconds) < BOUND_S, probes
    assert len(failed) <= max(1, len(probes) // 10), probes
    assert not any(a == b == float("inf") for a, b in itertools.pairwise(seconds)), probes
    # The burst is served, never with a server error (the burst is the cap; the probe
    # beside it waits in the reserve, web/server.py).
    assert result["server_errors"] == [], result["server_errors"]
    assert result["ok"] >= GETS - 10, result["ok"]
    # The slowloris lost its connections: those over the cap at least.
    assert result["slow_opened"] == SLOW
    assert result["slow_closed"] >= SLOW - CAP, result["slow_closed"]

    # And afterwards, business as usual.
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        started = time.monotonic()
        assert http.get("/healthz").status_code in (200, 503)
        assert time.monotonic() - started < BOUND_S
        assert http.get("/api/v1/sync/status").status_code == 200
        created = http.post("/api/v1/records/lead", json={"email": "after@example.com"})
        assert created.status_code == 201, created.text
        assert http.get(f"/api/v1/records/lead/{created.json()['id']}").status_code == 200
