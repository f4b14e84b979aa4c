"""Load on ``crmsync serve``: a slowloris and a burst of API reads at once, while
``/healthz`` must keep answering within a second (issue 16, items 4 and 5).

Usage: ``.venv/bin/python bench/serve_load.py [--slow 2000] [--gets 1000]``
(not part of the test suite). Loopback only, bounded in count and time.

- ``crmsync serve`` runs as its own process on a fresh SQLite store, with the default
  limits (``CRMSYNC_MAX_CONNECTIONS`` 1,000, header deadline 10 s);
- ``--slow`` connections each send half a request's headers and then nothing;
- then ``--gets`` concurrent ``GET /api/v1/sync/status`` with the API token;
- all the while, ``GET /healthz`` on a fresh connection every 0.2 s, timed.

Printed: healthz latencies (max, median), how many GETs were answered 200 and how long
the burst took, how many half-sent connections the server closed, its resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TOKEN = "bench-serve-load-token-0123456789"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def probe(url: str, stop: asyncio.Event, latencies: list[float], failures: list[str]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"{url}/healthz")
            latencies.append(time.monotonic() - started)
            if r.status_code not in (200, 503):
                failures.append(f"healthz {r.status_code}")
        except httpx.HTTPError as exc:
            failures.append(f"healthz {type(exc).__name__}")
        await asyncio.sleep(0.2)


async def slowloris(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    pairs = []
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            break
        writer.write(b"GET /api/v1/sync/status HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        pairs.append((reader, writer))
    return pairs


async def burst(url: str, count: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as http:
        results = await asyncio.gather(
            *(http.get(f"{url}/api/v1/sync/status") for _ in range(count)),
            return_exceptions=True,
        )
    ok = sum(1 for r in results if isinstance(r, httpx.Response) and r.status_code == 200)
    return ok, time.monotonic() - started


async def run(url: str, port: int, slow: int, gets: int) -> dict[str, object]:
    stop = asyncio.Event()
    latencies: list[float] = []
    failures: list[str] = []
    prober = asyncio.create_task(probe(url, stop, latencies, failures))
    pairs = await slowloris(port, slow)
    await asyncio.sleep(1)
    ok, took = await burst(url, gets)
    await asyncio.sleep(1)
    closed = sum(1 for reader, _ in pairs if reader.at_eof())
    stop.set()
    await prober
    for _, writer in pairs:
        writer.close()
    return {
        "slow_opened": len(pairs),
        "slow_closed_by_server": closed,
        "gets_ok": ok,
        "burst_seconds": round(took, 2),
        "healthz_max_s": round(max(latencies), 3) if latencies else None,
        "healthz_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "healthz_samples": len(latencies),
        "failures": failures[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=2000, help="half-sent connections (≤ 5000)")
    parser.add_argument("--gets", type=int, default=1000, help="concurrent GETs (≤ 2000)")
    args = parser.parse_args()
    slow, gets = min(args.slow, 5000), min(args.gets, 2000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * (slow + gets))), hard))

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
        env |= {"CRMSYNC_DATABASE_URL": f"sqlite:///{tmp}/store.db", "CRMSYNC_API_TOKEN": TOKEN}
        crmsync = [sys.executable, "-m", "crmsync"]
        subprocess.run([*crmsync, "db", "upgrade"], env=env, check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen(
            [*crmsync, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{url}/healthz", timeout=2)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("crmsync serve did not start") from None
                    time.sleep(0.2)
            result = asyncio.run(asyncio.wait_for(run(url, port, slow, gets), timeout=180))
            result["server_rss_mib"] = round(rss_mib(server.pid), 1)
        finally:
            server.terminate()
            server.wait(timeout=30)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
