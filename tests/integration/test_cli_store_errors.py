"""The real ``crmsync`` command when its store or its settings are wrong: one line saying
what to do, exit status 2, no traceback, and nothing created."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# As tests/conftest.py has it (a conftest module is not importable from every folder).
PG_ADMIN_URL = os.environ.get(
    "CRMSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crmsync(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args],
        cwd=cwd,
        env={**clean, "COLUMNS": "80", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crmsync: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_read_commands_without_a_store_create_nothing(tmp_path: Path) -> None:
    for args in (["status"], ["errors", "list"], ["worker", "--once"]):
        line = one_line_error(crmsync(tmp_path, *args), "no store at crmsync.db", "db upgrade")
        assert "CRMSYNC_DATABASE_URL=" not in line or "sqlite:///" in line
        assert list(tmp_path.iterdir()) == []  # not even an empty crmsync.db


def test_sqlite_file_in_a_missing_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope' / 'store.db'}"
    for args in (["status"], ["db", "upgrade"]):
        result = crmsync(tmp_path, *args, CRMSYNC_DATABASE_URL=url)
        one_line_error(result, "CRMSYNC_DATABASE_URL", "does not exist", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_store_not_upgraded_sqlite(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    result = crmsync(tmp_path, "status", CRMSYNC_DATABASE_URL=f"sqlite:///{empty}")
    one_line_error(result, "no crmsync schema", "crmsync db upgrade")


@pytest.fixture
def empty_pg_url(pg_template: str | None) -> Iterator[str]:
    if pg_template is None:
        pytest.skip("PostgreSQL not reachable")
    name = f"crmsync_empty_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_store_not_upgraded_postgresql(tmp_path: Path, empty_pg_url: str) -> None:
    for args in (["status"], ["errors", "list"], ["import", "lead", "x.csv"]):
        (tmp_path / "x.csv").write_text("email\na@example.com\n")
        result = crmsync(tmp_path, *args, CRMSYNC_DATABASE_URL=empty_pg_url)
        one_line_error(result, "no crmsync schema", "crmsync db upgrade")


def test_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://crm:pa55-canary@127.0.0.1:{free_port()}/crmsync"
    line = one_line_error(
        crmsync(tmp_path, "errors", "list", CRMSYNC_DATABASE_URL=url),
        "cannot open the store",
        "Connection refused",
        "CRMSYNC_DATABASE_URL",
    )
    assert "pa55-canary" not in line


def test_a_table_missing_later_is_still_one_line(
    tmp_path: Path, db_url: str, engine: sa.Engine
) -> None:
    """A failure past the start-up check (a table dropped by hand) reaches main()."""
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE sync_error"))
    result = crmsync(tmp_path, "errors", "list", CRMSYNC_DATABASE_URL=db_url)
    one_line_error(result, "is not upgraded", "sync_error", "crmsync db upgrade")


def test_config_file_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "crmsync.toml"
    config.write_bytes('timezone = "Europe/Zürich"\n'.encode("latin-1"))
    result = crmsync(tmp_path, "status", CRMSYNC_CONFIG=str(config))
    one_line_error(result, "CRMSYNC_CONFIG", "not UTF-8")
    assert list(tmp_path.iterdir()) == [config]
