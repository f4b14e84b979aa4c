"""The store owns every statement: ``engine/`` orchestrates and decides, ``store/`` runs
SQL. A module under ``engine/`` may name SQLAlchemy's types for annotations (under
``TYPE_CHECKING``) but imports neither SQLAlchemy nor the store's schema.

``STILL_WITH_SQL`` lists the engine modules whose statements have not moved to the
store yet; it may only shrink (a module that no longer needs its place fails the test
until it is taken off the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

import crmsync.engine

ENGINE = Path(crmsync.engine.__file__).parent
STILL_WITH_SQL = {"apply.py", "load.py", "pull.py", "throttle.py", "worker.py"}
FORBIDDEN = ("sqlalchemy", "crmsync.store.schema")


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _uses_sql(path: Path) -> bool:
    return any(
        name == bad or name.startswith(bad + ".")
        for name in _runtime_imports(path)
        for bad in FORBIDDEN
    )


def test_engine_modules_run_no_sql_of_their_own() -> None:
    offenders = {p.name for p in ENGINE.glob("*.py") if _uses_sql(p)}
    assert offenders - STILL_WITH_SQL == set(), "engine modules importing SQLAlchemy or the schema"


def test_the_list_of_modules_still_holding_sql_only_shrinks() -> None:
    moved = {name for name in STILL_WITH_SQL if not _uses_sql(ENGINE / name)}
    assert moved == set(), f"take these off STILL_WITH_SQL: {sorted(moved)}"


def test_the_check_sees_an_import_of_sqlalchemy(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Engine\n",
        encoding="utf-8",
    )
    assert not _uses_sql(module)
    module.write_text("import sqlalchemy as sa\n", encoding="utf-8")
    assert _uses_sql(module)
    module.write_text("from crmsync.store.schema import sync_queue\n", encoding="utf-8")
    assert _uses_sql(module)
