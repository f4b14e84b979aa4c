"""Numbers as the wire writes them: ASCII digits, an optional minus sign, a point.

Python's ``int()`` and ``float()`` also take spaces, underscores, a plus sign, any
script's digits ("٣", "1_000", " 7") and, for ``float``, "nan" and "inf"; and
``str.isdigit()`` takes "²", which ``int()`` then refuses. None of that is what an
HTTP status line, a query option or a Dataverse literal means by a number, so every
number read from outside goes through ``whole`` or ``decimal``: None for anything else.
"""

from __future__ import annotations

import re

_WHOLE = re.compile(r"-?[0-9]+")
_UNSIGNED = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def whole(text: str, *, signed: bool = False) -> int | None:
    """``text`` as a whole number (a leading ``-`` only if ``signed``), else None."""
    return int(text) if (_WHOLE if signed else _UNSIGNED).fullmatch(text) else None


def decimal(text: str) -> float | None:
    """``text`` as a decimal number (``-12.5``; no exponent, no sign but ``-``), else
    None."""
    return float(text) if _DECIMAL.fullmatch(text) else None
