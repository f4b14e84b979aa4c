"""Every data file the package reads at run time is in its distribution (package-data):
an editable install finds a file that an installed wheel would lack."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "crmsync"
# Alembic's template for writing new revisions: a developer's tool, not read at run time.
NOT_SHIPPED = {"store/migrations/script.py.mako"}


def test_every_data_file_is_in_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["crmsync"]
    data = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert {"mapping/default.toml", "demo/mapping.toml"} <= data
    missing = sorted(
        name
        for name in data - NOT_SHIPPED
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    )
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"
