"""``crmsync --help`` and the errors and status commands' help, at 80 columns: written
for the person running them (no talk of wrappers, library functions or the contract)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from crmsync.cli import app

INSIDE_WORDS = ("wrapper", "library function", "contract", "the API's JSON")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("errors",),
        ("errors", "list"),
        ("errors", "export"),
        ("errors", "retry"),
        ("errors", "dismiss"),
        ("status",),
    ],
)
def test_help_speaks_to_the_user(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split()).lower()
    for words in INSIDE_WORDS:
        assert words.lower() not in text, (args, words)
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_errors_help_lists_dismiss() -> None:
    result = CliRunner().invoke(app, ["errors", "--help"], env={"COLUMNS": "80"})
    assert "dismiss" in result.output and "Hide errors you will not fix" in result.output
