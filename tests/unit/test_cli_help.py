"""``crmsync --help`` and the errors and status commands' help, at 80 columns: written
for the person running them (no talk of wrappers, library functions or the contract)."""

from __future__ import annotations

import itertools

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
    assert broken_lines(result.output, 80) == [], (args, result.output)


def broken_lines(output: str, columns: int) -> list[str]:
    """Lines of the help's text (outside the option boxes) that continue a sentence
    although their first word would have fitted on the line before: a line break kept
    from the source, not one the wrapping made."""
    broken = []
    lines = [line.rstrip() for line in output.splitlines()]
    for before, line in itertools.pairwise(lines):
        if not before.strip() or not line.strip() or line.lstrip()[0] in "│╭╰":
            continue
        if before.lstrip()[0] in "│╭╰":
            continue
        word = line.split()[0]
        if word[0].islower() and len(before) + 1 + len(word) < columns:
            broken.append(line)
    return broken


def test_broken_lines_finds_a_kept_line_break() -> None:
    wrapped = (
        " `crmsync errors list --status dismissed` still shows them. With --all, only\n"
        " open errors are dismissed (resolved ones stay resolved).\n"
    )
    kept = (
        " `crmsync errors list --status dismissed` still shows them. With --all, only\n"
        " open\n"
        " errors are dismissed (resolved ones stay resolved).\n"
    )
    assert broken_lines(wrapped, 80) == []
    assert broken_lines(kept, 80) == [" errors are dismissed (resolved ones stay resolved)."]


def test_errors_help_lists_dismiss() -> None:
    result = CliRunner().invoke(app, ["errors", "--help"], env={"COLUMNS": "80"})
    assert "dismiss" in result.output and "Hide errors you will not fix" in result.output
