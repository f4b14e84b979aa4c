"""Numbers as the wire writes them: ASCII digits, an optional minus sign, a point.

Python's ``int()`` and ``float()`` also take spaces, underscores, a plus sign, any
script's digits ("\u0663", "1_000", " 7") and, for ``float``, "nan" and "inf"; and
``str.isdigit()`` takes "²", which ``int()`` then refuses. None of that is what an
HTTP status line, a query option or a Dataverse literal means by a number, so every
number read from outside goes through ``whole`` or ``decimal``: None for anything else.
"""

from __future__ import annotations

import math
import re

_WHOLE = re.compile(r"-?[0-9]+")
_UNSIGNED = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_MOST_DIGITS = 4_300  # sys.int_info.default_max_str_digits


def whole(text: str, *, signed: bool = False) -> int | None:
    """``text`` as a whole number (a leading ``-`` only if ``signed``), else None (also
    for more digits than ``int()`` converts, 4,300)."""
    if len(text) > _MOST_DIGITS or not (_WHOLE if signed else _UNSIGNED).fullmatch(text):
        return None
    return int(text)


def decimal(text: str) -> float | None:
    """``text`` as a finite decimal number (``-12.5``, ``.5``, ``5.``, ``1e-05``: what
    ``str()`` of a JSON number gives; no sign but ``-``), else None."""
    if len(text) > _MOST_DIGITS or not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
