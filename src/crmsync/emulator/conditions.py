"""Comparisons shared by FetchXML and the SQL endpoint: typed values, ``like``, operators.

Both languages name columns by logical name (``parentcustomerid``), while the emulator
stores lookups the way the Web API returns them (``_parentcustomerid_value``); ``column``
maps one to the other. Strings compare case-insensitively, as SQL Server's collation
does; a comparison with null is false except the null tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.model import (
    BIGINT,
    BOOLEAN,
    DATETIME,
    DECIMAL,
    GUID,
    INTEGER,
    LOOKUP,
    MONEY,
    MULTISELECT,
    PICKLIST,
    Attribute,
    Entity,
    choice_values,
    is_guid,
    normalize_guid,
    selected,
)
from crmsync.emulator.odata import parse_date
from crmsync.numerals import decimal, whole


def logical_name(attr: Attribute) -> str:
    """``_parentcustomerid_value`` -> ``parentcustomerid``; other names unchanged."""
    if attr.type == LOOKUP and attr.name.startswith("_") and attr.name.endswith("_value"):
        return attr.name[1 : -len("_value")]
    return attr.name


def column(entity: Entity, name: str) -> Attribute | None:
    """The attribute a logical column name refers to (lookups by their logical name)."""
    for attr in entity.attributes.values():
        if logical_name(attr) == name:
            return attr
    return None


def invalid(message: str) -> faults.DataverseFault:
    # (inferred) Dataverse answers a malformed query with 0x80040203 (InvalidArgument);
    # the emulator's message names the problem.
    return faults.DataverseFault(400, "0x80040203", message)


def coerce(entity: Entity, attr: Attribute, value: Any) -> Any:
    """A literal from the query as the type the column stores, or ``invalid``."""
    if value is None:
        return None
    text = str(value).strip()
    kind = attr.type
    try:
        if kind == BOOLEAN:
            if text.lower() in ("1", "true"):
                return True
            if text.lower() in ("0", "false"):
                return False
            raise ValueError(text)
        if kind in (PICKLIST, BIGINT, INTEGER):
            # (inferred) .NET's parse of a condition's value: a sign, ASCII digits
            number = whole(text.removeprefix("+"), signed=True)
            if number is None:
                raise ValueError(text)
            return number
        if kind in (DECIMAL, MONEY):
            amount = decimal(text.removeprefix("+"))
            if amount is None:
                raise ValueError(text)
            return amount
        if kind == MULTISELECT:  # compared as stored: ascending, no spaces ("1,9")
            values = choice_values(text)
            if values is None:
                raise ValueError(text)
            return ",".join(str(v) for v in sorted(set(values)))
        if kind in (GUID, LOOKUP):
            bare = text.strip("{}")
            if not is_guid(bare):
                raise ValueError(text)
            return normalize_guid(bare)
        if kind == DATETIME:
            return parse_date(text)
    except ValueError as exc:
        raise invalid(
            f"The value '{text}' is not valid for attribute '{logical_name(attr)}' of "
            f"entity '{entity.logical}'."
        ) from exc
    return str(value)


def _key(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def like(value: Any, pattern: str) -> bool:
    """SQL ``LIKE``: ``%`` any run, ``_`` one character, ``[...]`` a set; no case."""
    if not isinstance(value, str):
        return False
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        elif ch == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), value, re.IGNORECASE | re.DOTALL) is not None


def compare(op: str, a: Any, b: Any) -> bool:
    """``eq ne lt le gt ge`` between a stored value and a coerced literal."""
    if op == "eq":
        return a is not None and b is not None and _key(a) == _key(b)
    if op == "ne":
        # FetchXML and SQL both drop nulls from "<>" (SQL three-valued logic).
        return a is not None and b is not None and _key(a) != _key(b)
    if a is None or b is None:
        return False
    a, b = _key(a), _key(b)
    try:
        if op == "lt":
            return bool(a < b)
        if op == "le":
            return bool(a <= b)
        if op == "gt":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:
        return False


Check = Callable[[Any], bool]


def operator_test(op: str, values: list[Any]) -> Check:
    """A test of one stored value for a FetchXML operator name (``begins-with``...)."""
    first = values[0] if values else None
    if op in ("eq", "ne", "lt", "le", "gt", "ge"):
        return lambda v: compare(op, v, first)
    if op == "neq":
        return lambda v: compare("ne", v, first)
    if op == "null":
        return lambda v: v is None
    if op == "not-null":
        return lambda v: v is not None
    if op == "in":
        return lambda v: any(compare("eq", v, x) for x in values)
    if op == "not-in":
        return lambda v: v is not None and not any(compare("eq", v, x) for x in values)
    if op in ("contain-values", "not-contain-values"):
        wanted = set().union(*(selected(x) for x in values))
        negate = op == "not-contain-values"
        # As the Web API's ContainValues / DoesNotContainValues (functions.contains_values).
        return lambda v: v is not None and bool(selected(v) & wanted) != negate
    if op in ("like", "not-like", "begins-with", "not-begin-with", "ends-with", "not-end-with"):
        pattern = str(first)
        if "begin" in op:
            pattern = _escape_like(pattern) + "%"
        elif "end" in op:
            pattern = "%" + _escape_like(pattern)
        if op.startswith("not-"):
            return lambda v: isinstance(v, str) and not like(v, pattern)
        return lambda v: like(v, pattern)
    raise invalid(f"The condition operator '{op}' is not supported.")


def _escape_like(text: str) -> str:
    return re.sub(r"([%_\[])", r"[\1]", text)
