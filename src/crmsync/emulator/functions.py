"""``$filter`` query functions: ``Microsoft.Dynamics.CRM.In(PropertyName='x',
PropertyValues=['a','b'])`` and its kin (``webapi/query/filter-rows.md``, "Dataverse
query functions"), and OData 4.01 ``x in ('a','b')``.

Run: ``In``, ``NotIn``, ``Between``, ``NotBetween`` (inclusive), ``On``, ``OnOrAfter``,
``OnOrBefore``, ``Today``, ``Yesterday``, ``Tomorrow``, ``ThisMonth``, ``LastMonth``,
``ThisYear``, ``LastXDays``, ``NextXDays``, ``LastXHours``, ``NextXHours``, the weeks,
months, years and ``OlderThanX...`` of ``datefuncs``, and on choices
(multi-select) columns ``ContainValues`` / ``DoesNotContainValues`` (multi-select-
picklist.md). Any other function is the OData error Dataverse gives for an unknown one.
Dates are compared in UTC (inferred: Dataverse uses the caller's time zone, which an
application user leaves at UTC unless set). ``LastXDays(n)`` is from midnight ``n`` days
ago up to now; ``NextXDays(n)`` from now up to the end of the ``n``-th day ahead
(FetchXML ``last-x-days``/``next-x-days`` semantics).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from crmsync.emulator import datefuncs, faults
from crmsync.emulator.model import MULTISELECT, choice_values, selected
from crmsync.numerals import decimal

Row = dict[str, Any]
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]
PREFIX = "microsoft.dynamics.crm."


def unknown(name: str) -> faults.DataverseFault:
    # Microsoft.OData's message for a function it can't bind.
    return faults.bad_query(
        f"An unknown function with name '{name}' was found. This may also be a function "
        "import or a key lookup on a navigation property, which is not allowed."
    )


def parse_args(parser: Any) -> dict[str, Any]:
    """``(PropertyName='x',PropertyValue=1,PropertyValues=['a',2])`` from the parser."""
    parser.expect("(")
    args: dict[str, Any] = {}
    while True:
        tok = parser.peek()
        if tok is None or tok.kind != "name":
            raise parser.fail()
        parser.i += 1
        parser.expect("=")
        if parser.peek() is not None and parser.peek().text == "[":
            parser.i += 1
            items = []
            while parser.peek() is not None and parser.peek().text != "]":
                items.append(parser.operand()({}))
                if parser.peek() is not None and parser.peek().text == ",":
                    parser.i += 1
            parser.expect("]")
            args[tok.text] = items
        else:
            args[tok.text] = parser.operand()({})
        if parser.peek() is not None and parser.peek().text == ",":
            parser.i += 1
            continue
        parser.expect(")")
        return args


def build(
    name: str,
    args: dict[str, Any],
    resolve: Callable[[str], Getter],
    column_type: Callable[[str], str | None] = lambda name: None,
) -> Predicate:
    """The predicate of one query function, given its parsed arguments; ``column_type``
    names a record column's type (None where unknown, as for metadata rows)."""
    short = name.lower()[len(PREFIX) :] if name.lower().startswith(PREFIX) else ""
    prop = args.get("PropertyName")
    if not isinstance(prop, str):
        raise (
            unknown(name)
            if short not in _ALL
            else faults.bad_query(f"The function '{name}' needs a PropertyName parameter.")
        )
    get = resolve(prop)
    if short in ("in", "notin"):
        values = _list(name, args)
        return membership(get, values, negate=short == "notin")
    if short in ("between", "notbetween"):
        values = _list(name, args)
        if len(values) != 2:
            raise faults.bad_query(f"The function '{name}' needs exactly two PropertyValues.")
        lo, hi = values

        def between(row: Row) -> bool:
            v = get(row)
            if v is None:
                return False
            try:
                return bool(_like(v, lo) <= _norm(v) <= _like(v, hi))
            except TypeError:
                return False

        return between if short == "between" else (lambda r: get(r) is not None and not between(r))
    if short in ("containvalues", "doesnotcontainvalues"):
        if column_type(prop) != MULTISELECT:
            # (inferred) wording: Dataverse documents these for choices columns only.
            raise faults.bad_query(
                f"The function '{name}' needs a choices column; '{prop}' is not one."
            )
        wanted = option_values(name, _list(name, args))
        return contains_values(get, wanted, negate=short != "containvalues")
    if short in _DAY_FUNCS:
        return _dated(get, _DAY_FUNCS[short](args, name))
    if short in datefuncs.NAMES:
        return _dated(get, datefuncs.window(short, lambda: _count_arg(args, name)))
    raise unknown(name)


def option_values(name: str, values: list[Any]) -> set[int]:
    """``PropertyValues=['2','9']`` (the docs quote them; numbers are taken too)."""
    out: set[int] = set()
    for value in values:
        parsed = None if isinstance(value, bool) else choice_values(str(value))
        if parsed is None or len(parsed) != 1:
            raise faults.bad_query(
                f"The function '{name}' needs option values, got '{value}'."
            )  # (inferred) wording
        out.add(parsed[0])
    return out


def contains_values(get: Getter, wanted: set[int], *, negate: bool) -> Predicate:
    """Rows whose choices hold any of ``wanted`` (or, negated, none of them). Inferred:
    any, not all, as FetchXML ``contain-values`` with several ``value``s; a null column
    matches neither, as ``NotIn`` leaves nulls out."""

    def pred(row: Row) -> bool:
        value = get(row)
        if value is None:
            return False
        return bool(selected(value) & wanted) != negate

    return pred


def membership(get: Getter, values: list[Any], *, negate: bool) -> Predicate:
    # A text value matches a literal case-blind (``_like``): one set lookup, not a scan of
    # the list (a read-back of 500 ids by ``In`` over a large table).
    strings = {str(x).casefold() for x in values}

    def pred(row: Row) -> bool:
        v = get(row)
        if v is None:
            return False
        if isinstance(v, str):
            return (v.casefold() in strings) != negate
        found = any(_like(v, x) == _norm(v) for x in values)
        return found != negate

    return pred


def _norm(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _like(stored: Any, literal: Any) -> Any:
    """``literal`` as the type of ``stored``: the docs pass numbers as strings
    (``PropertyValues=["5","2000"]``); a literal that can't convert matches nothing."""
    if isinstance(stored, bool):
        return str(literal).lower() in ("true", "1") if isinstance(literal, str) else literal
    if isinstance(stored, int | float) and isinstance(literal, str):
        number = decimal(literal)
        return _NOTHING if number is None else number
    if isinstance(stored, str):
        return str(literal).casefold()
    return literal


class _Nothing:
    """Equal to nothing and ordered against nothing (comparisons raise TypeError)."""


_NOTHING = _Nothing()


def _list(name: str, args: dict[str, Any]) -> list[Any]:
    values = args.get("PropertyValues")
    if not isinstance(values, list) or not values:
        raise faults.bad_query(f"The function '{name}' needs a PropertyValues list.")
    return values


def _dated(get: Getter, window: tuple[datetime, datetime]) -> Predicate:
    lo, hi = window

    def pred(row: Row) -> bool:
        v = get(row)
        if not isinstance(v, str):
            return False
        try:
            moment = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return False
        return lo <= moment < hi

    return pred


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _day_arg(args: dict[str, Any], name: str) -> date:
    value = args.get("PropertyValue")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError as exc:
        raise faults.bad_query(f"The function '{name}' needs a date PropertyValue.") from exc


def _count_arg(args: dict[str, Any], name: str) -> int:
    value = args.get("PropertyValue")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise faults.bad_query(f"The function '{name}' needs a whole-number PropertyValue.")
    return value


def _month_start(day: date, back: int = 0) -> date:
    month = day.month - back
    year = day.year + (month - 1) // 12
    return date(year, (month - 1) % 12 + 1, 1)


def _now() -> datetime:
    return datetime.now(UTC)


_FAR = datetime(9999, 12, 31, tzinfo=UTC)
_PAST = datetime(1, 1, 1, tzinfo=UTC)
Window = Callable[[dict[str, Any], str], tuple[datetime, datetime]]
_DAY_FUNCS: dict[str, Window] = {
    "today": lambda a, n: (_midnight(_now().date()), _midnight(_now().date() + timedelta(1))),
    "yesterday": lambda a, n: (_midnight(_now().date() - timedelta(1)), _midnight(_now().date())),
    "tomorrow": lambda a, n: (
        _midnight(_now().date() + timedelta(1)),
        _midnight(_now().date() + timedelta(2)),
    ),
    "thismonth": lambda a, n: (
        _midnight(_month_start(_now().date())),
        _midnight(_month_start(_now().date(), -1)),
    ),
    "lastmonth": lambda a, n: (
        _midnight(_month_start(_now().date(), 1)),
        _midnight(_month_start(_now().date())),
    ),
    "thisyear": lambda a, n: (
        _midnight(date(_now().year, 1, 1)),
        _midnight(date(_now().year + 1, 1, 1)),
    ),
    "on": lambda a, n: (_midnight(_day_arg(a, n)), _midnight(_day_arg(a, n) + timedelta(1))),
    "onorafter": lambda a, n: (_midnight(_day_arg(a, n)), _FAR),
    "onorbefore": lambda a, n: (_PAST, _midnight(_day_arg(a, n) + timedelta(1))),
    "lastxdays": lambda a, n: (
        _midnight(_now().date() - timedelta(_count_arg(a, n))),
        _now() + timedelta(seconds=1),
    ),
    "nextxdays": lambda a, n: (
        _now() - timedelta(seconds=1),
        _midnight(_now().date() + timedelta(_count_arg(a, n) + 1)),
    ),
    "lastxhours": lambda a, n: (
        _now() - timedelta(hours=_count_arg(a, n)),
        _now() + timedelta(seconds=1),
    ),
    "nextxhours": lambda a, n: (
        _now() - timedelta(seconds=1),
        _now() + timedelta(hours=_count_arg(a, n)),
    ),
}
_ALL = {
    "in", "notin", "between", "notbetween", "containvalues", "doesnotcontainvalues", *_DAY_FUNCS,
    *datefuncs.NAMES,
}  # fmt: skip
