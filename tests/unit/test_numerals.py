"""What the wire calls a number: ASCII digits only (``crmsync.numerals``)."""

from __future__ import annotations

import pytest

from crmsync.numerals import decimal, whole


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("42", 42), ("007", 7), ("-3", None), ("", None)]
)
def test_whole_takes_ascii_digits(text: str, expected: int | None) -> None:
    assert whole(text) == expected


@pytest.mark.parametrize(
    "text", ["\u00b2", "\u0663", "1_000", " 7", "7 ", "+7", "0x10", "1e3", "1.0"]
)
def test_whole_refuses_what_int_or_isdigit_would_take(text: str) -> None:
    assert whole(text) is None and whole(text, signed=True) is None


def test_a_sign_only_where_asked() -> None:
    assert whole("-3", signed=True) == -3 and whole("--3", signed=True) is None


@pytest.mark.parametrize(("text", "expected"), [("1.5", 1.5), ("-2", -2.0), ("10.25", 10.25)])
def test_decimal_takes_plain_decimals(text: str, expected: float) -> None:
    assert decimal(text) == expected


@pytest.mark.parametrize(
    "text", ["nan", "inf", "-inf", "1e3", "1.", ".5", "\u0661.\u0665", "1_0.5", " 1"]
)
def test_decimal_refuses_what_float_would_take(text: str) -> None:
    assert decimal(text) is None
