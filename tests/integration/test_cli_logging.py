"""The real command's logs: timestamped and levelled on stderr, INFO included, text or
one JSON object a line, and an outage of Dynamics said at once (not 90 s of silence)."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) [\w.]+: .+ event=[\w.]+"
)
SECRET = "client-secret-canary-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    return {**clean, "CRMSYNC_DATABASE_URL": db_url, **extra}


def test_text_logs_have_time_level_and_event(tmp_path: Path, db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crmsync", "status"],
        env=env_for(db_url, CRMSYNC_BATCH_SISE="5"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[0]
    assert TEXT_LINE.match(line), line
    assert "WARNING crmsync.config" in line and "did you mean CRMSYNC_BATCH_SIZE" in line
    assert "event=config.unknown_variable" in line and "variable=CRMSYNC_BATCH_SISE" in line


def read_until(
    proc: subprocess.Popen[str], lines: queue.Queue[str], pattern: str, seconds: float
) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.1).rstrip("\n"))
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if re.search(pattern, seen[-1]):
            return seen
    raise AssertionError(f"no log line matching {pattern!r} in {seconds} s: {seen}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_says_at_once_that_dynamics_is_unreachable(
    tmp_path: Path, db_url: str, engine, fmt: str
) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO lead (email) VALUES ('ada@example.com')"))
    nowhere = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "--log-format", fmt, "worker", "--once"],
        env=env_for(
            db_url,
            CRMSYNC_DYNAMICS_URL=nowhere,
            CRMSYNC_AUTHORITY_URL=nowhere,
            CRMSYNC_TENANT_ID="t",
            CRMSYNC_CLIENT_ID="c",
            CRMSYNC_CLIENT_SECRET=SECRET,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    queued: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: [queued.put(x) for x in stderr], daemon=True)
    reader.start()
    try:
        lines = read_until(proc, queued, r"dataverse\.unreachable", 20)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
        stderr.close()
    logs = [line for line in lines if line.strip() and not line.startswith(" ")]
    outage = [line for line in logs if "dataverse.unreachable" in line]
    assert len(outage) == 1, lines
    assert all(SECRET not in line for line in lines)
    if fmt == "json":
        records = [json.loads(line) for line in logs if line.startswith("{")]
        started = [r for r in records if r.get("event") == "worker.start"]
        assert started and started[0]["level"] == "INFO"  # INFO is shown
        down = next(r for r in records if r.get("event") == "dataverse.unreachable")
        assert down["level"] == "WARNING" and down["time"].endswith("Z")
        assert "retrying" in down["message"]
    else:
        assert any("INFO crmsync.engine.worker: worker started" in line for line in logs), logs
        assert TEXT_LINE.match(outage[0]), outage[0]
