"""What a newcomer does next to the demo: paste the printed CRMSYNC_DATABASE_URL line and
use the CLI (issue 19.4), with the printed CRMSYNC_CONFIG line the demo mapping's custom
table too, then Ctrl-C, which stops quietly, with no ERROR and no
CancelledError from the emulator (issue 19.7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_demo import START_TIMEOUT, Demo, demo_command, demo_env

pytestmark = pytest.mark.slow


def test_the_printed_line_points_the_cli_at_the_demo_and_ctrl_c_is_quiet(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        demo_command(Path("demo-data"), "--reset", "--rate", "30"),
        cwd=tmp_path,  # the default, relative data folder, as a newcomer has it
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    demo = Demo(proc)
    try:
        line = demo.wait_for(r"export (CRMSYNC_DATABASE_URL=\S+)", START_TIMEOUT).group(1)
        name, value = line.split("=", 1)
        mapping = demo.wait_for(r"export (CRMSYNC_CONFIG=\S+)", 1).group(1).split("=", 1)[1]

        def status_json(**env: str) -> dict[str, object]:
            status = subprocess.run(
                [sys.executable, "-m", "crmsync", "status", "--json"],
                cwd=tmp_path,
                env={**demo_env(), name: value, "COLUMNS": "80", **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert status.returncode == 0, status.stderr
            body: dict[str, Any] = json.loads(status.stdout)
            return body

        def objects(body: dict[str, Any]) -> set[str]:
            return {o["object"] for o in body["objects"]}

        assert "lead" in objects(status_json())
        assert "event_registration" in objects(status_json(CRMSYNC_CONFIG=mapping))
        assert not (tmp_path / "crmsync.db").exists()
        time.sleep(3)  # traffic and batches in flight when Ctrl-C comes
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        output = demo.output()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert rc == 0, stderr
    assert "CancelledError" not in stderr and "Traceback" not in stderr, stderr
    assert "ERROR" not in stderr, stderr
    assert "crmsync demo stopped." in output
