"""``crmsync demo`` as a newcomer runs it: one process, a printed URL and login, live sync.

The demo runs as a subprocess (``python -m crmsync``, so the tree under test is the one
on ``PYTHONPATH``) on free ports (``--port 0``) and a temporary data folder. Within a
minute the backlog must move, sync errors must appear (through the API, with the
printed token) and ``/metrics`` must count newly synced records; the demo mapping's
custom table and custom field must have their status row and reach the emulator as the
local rows hold them. SIGINT must then stop it with exit code 0 and no traceback.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crmsync.config import Settings

pytestmark = pytest.mark.slow

START_TIMEOUT = 40
WATCH_SECONDS = 60


def demo_command(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crmsync",
        "demo",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def demo_env() -> dict[str, str]:
    # Everything inherited (PYTHONPATH included) but crmsync's own settings: the demo
    # must work on a machine where none are set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Demo:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.seen:
                if m := rx.search(line):
                    return m
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                assert self.proc.poll() is None, f"demo exited early: {self.output()}"
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.output()}")

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> Demo:
        proc = subprocess.Popen(
            demo_command(tmp_path / "demo-data", *extra),
            env=demo_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return Demo(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def synced_total(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^crmsync_synced_records_total\{[^}]*\} (\S+)$", metrics, re.M)
    )


def backlog_total(body: dict[str, object]) -> int:
    return sum(int(o["total"]) for o in body["objects"])  # type: ignore[attr-defined, index]


# Rows crmsync has nothing waiting for, in either direction, neither queued nor captured
# and not yet folded into the queue: what they hold is in Dynamics.
SETTLED = (
    "NOT EXISTS (SELECT 1 FROM sync_queue q WHERE q.object = '{obj}'"
    " AND (q.record_id = {t}.id OR q.record_key = {t}.crm_id))"
    " AND NOT EXISTS (SELECT 1 FROM sync_change c WHERE c.object = '{obj}'"
    " AND c.record_id = {t}.id)"
)


def settled_custom_rows(data_dir: Path) -> dict[str, list[dict[str, object]]]:
    """Event registrations and scored leads the demo's store says are in Dynamics as
    they are held locally."""
    store = sqlite3.connect(f"file:{data_dir / 'crmsync.db'}?mode=ro", uri=True)
    store.row_factory = sqlite3.Row
    registrations = (
        "SELECT r.id, r.crm_id, r.name, r.fee, c.crm_id AS contact FROM event_registration r"
        " JOIN contact c ON c.id = r.contact_id WHERE r.crm_id IS NOT NULL"
        f" AND c.crm_id IS NOT NULL AND {SETTLED.format(obj='event_registration', t='r')}"
        " ORDER BY r.id LIMIT 5"
    )
    leads = (
        "SELECT id, crm_id, lead_score FROM lead WHERE crm_id IS NOT NULL"
        f" AND lead_score IS NOT NULL AND {SETTLED.format(obj='lead', t='lead')}"
        " ORDER BY id LIMIT 5"
    )
    try:
        return {
            "event_registration": [dict(r) for r in store.execute(registrations)],
            "lead": [dict(r) for r in store.execute(leads)],
        }
    finally:
        store.close()


class CrmReader:
    """Records as the demo's "sales team" user of the emulator reads them."""

    def __init__(self, emulator: str, data_dir: Path) -> None:
        self.emulator = emulator
        self.secret = json.loads((data_dir / "demo.json").read_text())["crm_user_secret"]
        self.token: str | None = None

    def get(self, path: str) -> dict[str, object]:
        for _ in range(20):  # the demo throttles about 1% of requests on purpose
            if self.token is None:
                self.token = httpx.post(
                    f"{self.emulator}/demo/oauth2/v2.0/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": "demo-sales-team",
                        "client_secret": self.secret,
                        "scope": f"{self.emulator}/.default",
                    },
                    timeout=10,
                ).json()["access_token"]
            resp = httpx.get(
                f"{self.emulator}/api/data/v9.2/{path}",
                headers={"Authorization": f"Bearer {self.token}", "OData-Version": "4.0"},
                timeout=10,
            )
            if resp.status_code not in (429, 503):
                assert resp.status_code == 200, resp.text
                body: dict[str, object] = resp.json()
                return body
            time.sleep(float(resp.headers.get("Retry-After", "1")))
        raise AssertionError(f"the emulator kept refusing {path}")


def in_dynamics(crm: CrmReader, obj: str, row: dict[str, object]) -> dict[str, object]:
    """``row``'s mapped values as Dynamics holds them, under the local names."""
    if obj == "lead":
        return {"lead_score": crm.get(f"leads({row['crm_id']})")["new_leadscore"]}
    got = crm.get(f"new_eventregistrations({row['crm_id']})")
    fee = got["new_fee"]
    return {
        "name": got["new_name"],
        "fee": None if fee is None else Decimal(str(fee)),
        "contact": got["_new_contactid_value"],
    }


def as_local(obj: str, row: dict[str, object]) -> dict[str, object]:
    if obj == "lead":
        return {"lead_score": row["lead_score"]}
    return {"name": row["name"], "fee": Decimal(str(row["fee"])), "contact": row["contact"]}


def check_custom_rows_in_dynamics(crm: CrmReader, data_dir: Path) -> None:
    """Settled rows of the custom table and field are in Dynamics as held locally.

    The generator keeps changing rows while this runs: a row that differs is read again
    until it agrees; one that is changed meanwhile (no longer settled) is not compared.
    A row that stays settled and different is a local change lost on its way."""
    for obj, rows in settled_custom_rows(data_dir).items():
        assert rows, f"no {obj} with the demo mapping's custom fields reached the emulator"
        same = 0
        for row in rows:
            deadline = time.monotonic() + 20
            while (remote := in_dynamics(crm, obj, row)) != as_local(obj, row):
                assert time.monotonic() < deadline, f"{obj} {row} is {remote} in Dynamics"
                time.sleep(0.5)
                again = {r["id"]: r for r in settled_custom_rows(data_dir)[obj]}
                if row["id"] not in again:
                    break
                row = again[row["id"]]
            else:
                same += 1
        assert same, f"no settled {obj} row could be compared with Dynamics"


def test_demo_runs_syncs_fills_errors_and_stops_on_ctrl_c(
    start_demo: object, tmp_path: Path
) -> None:
    demo = start_demo("--reset", "--rate", "20")  # type: ignore[operator]
    url = demo.wait_for(r"Console\s+(http://\S+?)/admin/", START_TIMEOUT).group(1)
    password = demo.wait_for(r"Login\s+user admin, password (\S+)", 1).group(1)
    token = demo.wait_for(r"API token\s+(\S+)", 1).group(1)
    emulator = demo.wait_for(r"Dynamics\s+(http://\S+?)/api/", 1).group(1)
    assert "event_registration" in demo.wait_for(r"Mapping\s+(.*)", 1).group(1)
    assert len(password) >= 12 and len(token) >= 20
    headers = {"Authorization": f"Bearer {token}"}

    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        # The API refuses a wrong token: the printed one is the real credential.
        assert (
            http.get("/api/v1/sync/errors", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        first_synced = synced_total(http.get("/metrics", headers=headers).text)
        # Seeded history: "Last hour" is meaningful at once.
        last_hour = http.get("/api/v1/sync/status?view=last_hour", headers=headers).json()
        assert sum(o["synced"] for o in last_hour["objects"]) > 0

        backlogs: set[int] = set()
        errors = 0
        synced = first_synced
        custom: dict[str, list[dict[str, object]]] = {}
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            status = http.get("/api/v1/sync/status?view=backlog", headers=headers)
            assert status.status_code == 200, status.text
            backlogs.add(backlog_total(status.json()))
            page = http.get("/api/v1/sync/errors?limit=5", headers=headers).json()
            errors = page["total"]
            synced = synced_total(http.get("/metrics", headers=headers).text)
            custom = settled_custom_rows(tmp_path / "demo-data")
            if len(backlogs) >= 3 and errors > 0 and synced > first_synced and all(custom.values()):
                break
            time.sleep(1)
        assert len(backlogs) >= 3, f"the backlog did not move: {sorted(backlogs)}"
        # The demo mapping's custom table has its row on Sync Status (API and page)...
        rows = {o["object"] for o in status.json()["objects"]}
        assert {"lead", "event_registration"} <= rows, rows
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text)
        assert csrf
        login = {"username": "admin", "password": password, "csrf_token": csrf[1]}
        assert http.post("/login", data=login).status_code == 303
        assert "Event registration" in http.get("/admin/microsoft-dynamics/sync-status").text
        # ...and its rows, like the custom field's values, are in Dynamics as held locally.
        check_custom_rows_in_dynamics(
            CrmReader(emulator, tmp_path / "demo-data"), tmp_path / "demo-data"
        )

    demo.proc.send_signal(signal.SIGINT)
    rc = demo.proc.wait(timeout=30)
    stderr = demo.proc.stderr.read() if demo.proc.stderr else ""
    assert rc == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "stopped" in demo.output()

    # A second run carries on with the same data and the same login.
    again = start_demo("--reuse", "--rate", "1")  # type: ignore[operator]
    url = again.wait_for(r"Console\s+(http://\S+?)/admin/", START_TIMEOUT).group(1)
    assert again.wait_for(r"\(data in .*, (\w+)\)", 1).group(1) == "reused"
    assert again.wait_for(r"API token\s+(\S+)", 1).group(1) == token
    assert again.wait_for(r"password (\S+)", 1).group(1) == password
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        errors_now = http.get("/api/v1/sync/errors?status=all&limit=1").json()["total"]
        assert errors_now >= errors
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(timeout=30) == 0


def test_demo_refuses_a_port_in_use_with_a_clear_message(start_demo: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = start_demo("--reset", "--emulator-port", str(port))  # type: ignore[operator]
        rc = demo.proc.wait(timeout=30)
        stderr = demo.proc.stderr.read() if demo.proc.stderr else ""
    assert rc == 2, stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def test_run_serves_the_api_and_syncs_in_one_process(sync_settings: Settings) -> None:
    """``crmsync run``: the records API and the worker in one process, stopped by SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=sync_settings.database_url,
        CRMSYNC_DYNAMICS_URL=sync_settings.dynamics_url or "",
        CRMSYNC_AUTHORITY_URL=sync_settings.authority_url,
        CRMSYNC_TENANT_ID="t",
        CRMSYNC_CLIENT_ID="crmsync-run",
        CRMSYNC_CLIENT_SECRET="s",
        CRMSYNC_API_TOKEN="run-token-0123456789",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "run", "--port", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        match = None
        while match is None and len(lines) < 5:  # start-up warnings come first
            lines.append(proc.stderr.readline())
            match = re.search(r"on (http://\S+),", lines[-1])
        assert match, lines
        headers = {"Authorization": "Bearer run-token-0123456789"}
        with httpx.Client(base_url=match.group(1), headers=headers, timeout=10) as http:
            created = http.post("/api/v1/records/lead", json={"email": "run@example.com"})
            assert created.status_code == 201, created.text
            record_id = created.json()["id"]
            deadline = time.monotonic() + 30
            state = None
            while time.monotonic() < deadline and state != "synced":
                state = http.get(f"/api/v1/records/lead/{record_id}").json()["sync"]["state"]
                time.sleep(0.2)
            assert state == "synced"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
