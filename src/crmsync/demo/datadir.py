"""The demo's data folder: the store, the emulator's records and the demo's credentials.

A second run finds them and reuses them, or starts afresh, as the user chooses:
``--reset`` / ``--reuse`` decide; without either, an interactive terminal is asked and
anything else reuses (a script never blocks on a prompt). Credentials are generated once
and kept (mode 0600) so the login printed last time still works; the environment's
``CRMSYNC_ADMIN_PASSWORD`` / ``CRMSYNC_API_TOKEN`` win when set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from crmsync.errors import ConfigError

STORE_FILE = "crmsync.db"
EMULATOR_FILE = "emulator.db"
CREDENTIALS_FILE = "demo.json"
# Only files the demo made are removed on reset: a mistyped --data-dir pointing at a
# folder of one's own must not be emptied.
OWNED = (STORE_FILE, EMULATOR_FILE, CREDENTIALS_FILE)
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class Choice(StrEnum):
    NEW = "new"
    REUSE = "reuse"
    RESET = "reset"


def decide(has_data: bool, flag: bool | None, interactive: bool, ask: Callable[[], str]) -> Choice:
    """What to do with the data folder (``flag``: True = --reset, False = --reuse)."""
    if not has_data:
        return Choice.NEW
    if flag is not None:
        return Choice.RESET if flag else Choice.REUSE
    if not interactive:
        return Choice.REUSE
    answer = ask().strip().lower()
    return Choice.RESET if answer in ("s", "reset") else Choice.REUSE


@dataclass(frozen=True)
class Credentials:
    admin_password: str
    api_token: str
    client_secret: str  # the sync's app registration in the emulator
    crm_user_secret: str  # the generator's "sales team" app user in the emulator

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            admin_password=secrets.token_urlsafe(12),
            api_token=secrets.token_urlsafe(24),
            client_secret=secrets.token_urlsafe(24),
            crm_user_secret=secrets.token_urlsafe(24),
        )


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def store(self) -> Path:
        return self.path / STORE_FILE

    @property
    def emulator(self) -> Path:
        return self.path / EMULATOR_FILE

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.store}"

    def has_data(self) -> bool:
        return self.store.exists()

    def prepare(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--data-dir: cannot create {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise ConfigError(f"--data-dir: {self.path} is not writable")

    def reset(self) -> None:
        for name in OWNED:
            for suffix in ("", *SQLITE_SIDE_FILES):
                target = self.path / f"{name}{suffix}"
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)

    def credentials(self) -> Credentials:
        """The kept credentials, or new ones saved for next time."""
        path = self.path / CREDENTIALS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Credentials(**{k: str(data[k]) for k in Credentials.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        creds = Credentials.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(creds), fh, indent=2)
        return creds
