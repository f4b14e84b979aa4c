"""The command names the objects of the mapping in force: each object option's help
lists them, custom ones included, and an object the mapping lacks is refused with the
list before the store is opened. The mapping is the demo's (``event_registration``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import typer.testing
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.cli_objects import NAMED, command
from crmsync.mapping import activate, default_objects

DEMO = str(resources.files("crmsync.demo").joinpath("mapping.toml"))
MAPPED = "lead, contact, account, opportunity, event_registration"
# Every command that takes an object, and how it is given.
OBJECT_COMMANDS = [
    ("status", "--object"),
    ("errors", "list", "--object"),
    ("errors", "export", "--object"),
    ("errors", "retry", "--object"),
    ("errors", "dismiss", "--object"),
    ("audit", "--object"),
    ("resync",),
    ("import",),
]


@pytest.fixture
def demo_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """CRMSYNC_CONFIG names the demo's mapping; the CLI runner renders ``main``'s command."""
    for key in [k for k in os.environ if k.startswith("CRMSYNC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CRMSYNC_CONFIG", DEMO)
    store = tmp_path / "never" / "store.db"
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", f"sqlite:///{store}")
    monkeypatch.setattr(typer.testing, "_get_command", command)
    yield store
    activate(default_objects())


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("args", OBJECT_COMMANDS, ids=" ".join)
def test_the_help_lists_the_mapped_objects(demo_mapping: Path, args: tuple[str, ...]) -> None:
    path = [a for a in args if not a.startswith("--")]
    assert MAPPED in _help(*path)


def test_without_a_mapping_the_help_lists_the_standard_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CRMSYNC_CONFIG", raising=False)
    monkeypatch.setattr(typer.testing, "_get_command", command)
    text = _help("audit")
    assert f"Only this object: {NAMED} " in text and "event_registration" not in text


def test_a_configuration_that_cannot_be_read_still_answers_help(
    demo_mapping: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMSYNC_CONFIG", "/nonexistent/crmsync.toml")
    assert f"Only this object: {NAMED} " in _help("errors", "list")


@pytest.mark.parametrize("args", OBJECT_COMMANDS, ids=" ".join)
def test_an_unknown_object_is_refused_with_the_mapped_ones(
    demo_mapping: Path, args: tuple[str, ...]
) -> None:
    given = [*args, "registrations"]
    if args[0] == "import":
        given.append("people.csv")
    if args[:2] == ("errors", "export"):
        given.append("out.csv")
    if args[:2] in (("errors", "retry"), ("errors", "dismiss")):
        given.append("--all")
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 2, result.output
    assert f"unknown object 'registrations'; one of {MAPPED}" in result.output
    assert result.output.startswith(
        "crmsync: " if args[0] in ("resync", "import") else "crmsync: --object: "
    )
    assert not demo_mapping.parent.exists()  # refused before the store was opened
