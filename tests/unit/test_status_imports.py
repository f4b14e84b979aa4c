"""``crmsync status`` is a read: its import tree leaves out the queue's writers.

The command must answer within a second (issue 14), and start-up is most of it. The
queue module pulls in capture, the finishing of batches and both dialects' inserts; a
status read needs none of them, nor the web, the engine, the emulator or the Dataverse
client.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import crmsync

SRC = str(Path(crmsync.__file__).resolve().parents[1])
NOT_FOR_A_READ = (
    "crmsync.store.queue",
    "crmsync.store.capture",
    "crmsync.store.finish",
    "crmsync.engine",
    "crmsync.web",
    "crmsync.emulator",
    "crmsync.dynamics",
    "rich",
    "httpx",
    "fastapi",
    "uvicorn",
)


def test_the_status_command_imports_no_writer() -> None:
    code = (
        "import sys\n"
        "import crmsync.cli, crmsync.store.status, crmsync.terminal\n"
        f"print('\\n'.join(m for m in sys.modules if m.startswith({NOT_FOR_A_READ!r})))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == []
