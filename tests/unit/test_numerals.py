"""What the wire calls a number: ASCII digits only (``crmsync.numerals``)."""

from __future__ import annotations

import pytest

from crmsync.numerals import decimal, whole

NOT_WHOLE = ["\u00b2", "\u0663", "1_000", " 7", "7 ", "+7", "0x10", "1e3", "1.0"]
DECIMALS = [("1.5", 1.5), ("-2", -2.0), (".5", 0.5), ("5.", 5.0), ("1e-05", 1e-05), ("1e+16", 1e16)]
NOT_DECIMAL = ["nan", "inf", "-inf", "1e999", ".", "-", "\u0661.\u0665", "1_0.5", " 1", "+1"]


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("42", 42), ("007", 7), ("-3", None), ("", None)]
)
def test_whole_takes_ascii_digits(text: str, expected: int | None) -> None:
    assert whole(text) == expected


@pytest.mark.parametrize("text", NOT_WHOLE)
def test_whole_refuses_what_int_or_isdigit_would_take(text: str) -> None:
    assert whole(text) is None and whole(text, signed=True) is None


def test_a_sign_only_where_asked() -> None:
    assert whole("-3", signed=True) == -3 and whole("--3", signed=True) is None


@pytest.mark.parametrize(("text", "expected"), DECIMALS)
def test_decimal_takes_what_a_json_number_prints_as(text: str, expected: float) -> None:
    assert decimal(text) == expected


@pytest.mark.parametrize("text", NOT_DECIMAL)
def test_decimal_refuses_what_float_would_take(text: str) -> None:
    assert decimal(text) is None


def test_more_digits_than_int_converts_is_no_number_not_an_error() -> None:
    assert whole("9" * 5000) is None and decimal("9" * 5000) is None
    assert whole("9" * 4300) == int("9" * 4300)
