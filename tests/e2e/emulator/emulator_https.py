"""The running HTTPS emulator handed to real-client tests by ``conftest.https_emulator``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crmsync.emulator.app import Emulator


@dataclass
class Running:
    url: str
    ca_file: Path
    emulator: Emulator
