"""The store owns every statement: ``engine/`` orchestrates and decides, ``store/`` runs
SQL. A module under ``engine/`` may name SQLAlchemy's types for annotations (under
``TYPE_CHECKING``) but imports neither SQLAlchemy nor the store's schema, and holds no
SQL text of its own (no statement in a string, no ``exec_driver_sql``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import crmsync.engine

ENGINE = Path(crmsync.engine.__file__).parent
FORBIDDEN = ("sqlalchemy", "crmsync.store.schema")
# The start of a statement as crmsync's SQL text writes it (keywords in capitals, so
# that prose saying "select ... from" in a docstring is not taken for a statement).
STATEMENT = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+.*\sAS\s*\()",
    re.DOTALL,
)
DRIVER_CALLS = {"exec_driver_sql", "text", "execute", "executemany", "executescript"}


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


def _sql_text(path: Path) -> list[str]:
    """What in the module looks like SQL: statement text in a string (f-strings too)
    and calls that hand a statement to the database."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if STATEMENT.search(node.value):
                found.append(f"line {node.lineno}: {node.value[:60]!r}")
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            if STATEMENT.search(text):
                found.append(f"line {node.lineno}: f-string {text[:60]!r}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in DRIVER_CALLS
        ):
            found.append(f"line {node.lineno}: .{node.func.attr}()")
    return found


def _engine_modules() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_engine_modules_import_neither_sqlalchemy_nor_the_schema() -> None:
    offenders = {p.name for p in _engine_modules() if _uses_sql(p)}
    assert offenders == set(), "engine modules importing SQLAlchemy or the schema"


def test_engine_modules_build_no_sql_text() -> None:
    offenders = {p.name: found for p in _engine_modules() if (found := _sql_text(p))}
    assert offenders == {}, "engine modules holding SQL text"


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


def test_the_check_sees_sql_text(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Select what to send from the plan."""\nx = "update the row"\n', encoding="utf-8"
    )
    assert _sql_text(module) == []
    for sql in (
        'q = "SELECT id FROM sync_queue"',
        'q = f"INSERT INTO {table} (a) VALUES (?)"',
        'q = "UPDATE sync_queue SET state = 1"',
        'q = "DELETE FROM sync_queue"',
        "conn.exec_driver_sql(q)",
        "conn.execute(q)",
        "sa.text(q)",
    ):
        module.write_text(sql + "\n", encoding="utf-8")
        assert _sql_text(module), sql


def test_the_values_module_sits_at_the_bottom() -> None:
    """``values`` imports nothing but the standard library and ``domain``: every layer may
    import it, and it drags no I/O in."""
    import crmsync.values

    imported = {n.split(".")[0] for n in _runtime_imports(Path(crmsync.values.__file__))}
    crmsync_modules = {
        n for n in _runtime_imports(Path(crmsync.values.__file__)) if n.startswith("crmsync")
    }
    assert imported <= {
        "__future__",
        "enum",
        "re",
        "collections",
        "dataclasses",
        "datetime",
        "typing",
        "crmsync",
    }
    assert {m for m in crmsync_modules if not m.startswith("crmsync.domain")} == set()


def test_push_and_apply_plan_with_one_family_of_steps() -> None:
    from crmsync import values
    from crmsync.engine import apply, plan

    for name in ("Defer", "Park", "Skip"):
        assert getattr(plan, name) is getattr(values, name)
    assert set(apply.Step.__args__) >= {values.Defer, values.Park, values.Skip}
    assert set(plan.Step.__args__) >= {values.Defer, values.Park, values.Skip}
