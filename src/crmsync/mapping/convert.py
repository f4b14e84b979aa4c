"""Field values between a local row and Dataverse's JSON, exactly both ways. No I/O.

``to_dataverse`` turns a local value into the JSON value Dataverse takes for the
field's type; ``from_dataverse`` turns what Dataverse returns into the local value. A
value that does not fit (not a number, out of range, not one of the choices) raises
``DoesNotFit`` naming the field: it becomes a sync error, never a rounding or a
truncation. Text longer than Dynamics allows is sent as it is, so that Dynamics'
own error (0x80044331) names the limit.

The engine compares and keeps field values in their JSON form (the last synced values,
conflict detection); ``canonical`` gives it for a value Dataverse returned, so that
``1.5`` and ``1.50`` of a decimal, or a datetime's two spellings, are the same.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from crmsync.domain import FieldSpec, FieldType, ObjectSpec

INVALID_VALUE = "crmsync.invalid_value"
# A choice's local column holds up to 100 characters (``store/local_tables.py``).
MAX_LABEL = 100
# The most options a message lists (a choice may have hundreds).
LISTED = 20


class DoesNotFit(ValueError):
    """A value that cannot be converted for its field; ``code`` is crmsync's error code."""

    def __init__(self, field: FieldSpec, message: str, code: str = INVALID_VALUE) -> None:
        self.field = field
        self.code = code
        super().__init__(f"{field.column}: {message}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def to_dataverse(field: FieldSpec, value: Any) -> Any:
    """The JSON value Dataverse takes for ``field`` holding the local ``value``."""
    if value is None:
        return None
    kind = field.type
    if kind in (FieldType.STRING, FieldType.MEMO):
        return value if isinstance(value, str) else str(value)
    if kind is FieldType.INTEGER:
        return _integer(field, value)
    if kind in (FieldType.DECIMAL, FieldType.MONEY):
        return _number(field, _decimal(field, value))
    if kind is FieldType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # SQLite keeps booleans as 0 and 1
            return bool(value)
        raise DoesNotFit(field, f"{_short(value)} is not a yes/no value")
    if kind is FieldType.DATETIME:
        return _instant(field, value).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind is FieldType.DATE:
        return _date(field, value).isoformat()
    if kind is FieldType.CHOICE:
        return _option(field, value)
    return value  # a lookup is bound by the engine, not converted


@functools.cache
def encoder(field: FieldSpec) -> Callable[[Any], Any]:
    """``to_dataverse`` for ``field`` as one function, with a fast path for the values a
    local column usually holds (the same answers: anything else takes ``to_dataverse``)."""
    slow = functools.partial(to_dataverse, field)
    kind = field.type
    low, high = field.minimum, field.maximum
    if kind in (FieldType.STRING, FieldType.MEMO):
        return lambda v: v if type(v) is str else slow(v)
    if kind is FieldType.INTEGER:

        def integer(v: Any) -> Any:
            if type(v) is int and (low is None or v >= low) and (high is None or v <= high):
                return v
            return slow(v)

        return integer
    if kind in (FieldType.DECIMAL, FieldType.MONEY):
        places = -(field.precision or 0)

        def number(v: Any) -> Any:
            if type(v) is Decimal:
                _, digits, exponent = v.as_tuple()
                # Up to 15 significant digits a float holds a decimal exactly.
                if (
                    isinstance(exponent, int)
                    and exponent >= places
                    and len(digits) <= 15
                    and (low is None or v >= low)
                    and (high is None or v <= high)
                ):
                    f = float(v)
                    return int(f) if f.is_integer() else f
            return slow(v)

        return number
    if kind is FieldType.BOOLEAN:
        return lambda v: v if type(v) is bool else slow(v)
    if kind is FieldType.DATETIME:
        # isoformat's first 19 characters are the second; Dataverse keeps no fraction.
        return lambda v: (
            v.isoformat()[:19] + "Z" if type(v) is datetime and v.tzinfo is UTC else slow(v)
        )
    if kind is FieldType.DATE:
        return lambda v: v.isoformat() if type(v) is date else slow(v)
    if kind is FieldType.CHOICE and field.labels and field.choices:
        # A label two options share is left to ``to_dataverse``, which refuses it.
        named = Counter(local for local, _ in field.choices)
        options = {local: option for local, option in field.choices if named[local] == 1}

        def choice(v: Any) -> Any:
            option = options.get(v) if type(v) is str else None
            return option if option is not None else slow(v)

        return choice
    return slow


def decoded(field: FieldSpec, value: Any) -> tuple[Any, Any]:
    """The local value of Dataverse's ``value`` and the JSON form crmsync keeps of it
    (``to_dataverse`` of the local value): what applying a pulled value does."""
    local = from_dataverse(field, value)
    return local, to_dataverse(field, local)


@functools.cache
def decoder(field: FieldSpec) -> Callable[[Any], tuple[Any, Any]]:
    """``decoded`` for ``field`` as one function, with a fast path for the shapes
    Dataverse returns (the same answers: anything else takes ``decoded``)."""
    slow = functools.partial(decoded, field)
    kind = field.type
    low, high = field.minimum, field.maximum
    if kind is FieldType.INTEGER or (kind is FieldType.CHOICE and not field.labels):

        def integer(v: Any) -> tuple[Any, Any]:
            if type(v) is int and (low is None or v >= low) and (high is None or v <= high):
                return v, v
            return slow(v)

        return integer
    if kind in (FieldType.DECIMAL, FieldType.MONEY):
        places = field.precision or 0
        step = Decimal(1).scaleb(-places)

        def number(v: Any) -> tuple[Any, Any]:
            # A float's repr is its shortest exact spelling (as ``_decimal`` reads it);
            # with no more places than the field's, quantizing it rounds nothing.
            exact = Decimal(repr(v)) if type(v) is float else Decimal(v) if type(v) is int else None
            if exact is not None:
                exponent = exact.as_tuple().exponent
                if (
                    isinstance(exponent, int)
                    and exponent >= -places
                    and (low is None or exact >= low)
                    and (high is None or exact <= high)
                ):
                    return exact.quantize(step), int(v) if v == int(v) else v
            return slow(v)

        return number
    if kind is FieldType.BOOLEAN:
        return lambda v: (v, v) if type(v) is bool else slow(v)
    if kind is FieldType.DATETIME:

        def instant(v: Any) -> tuple[Any, Any]:
            # Dataverse's own shape, "2026-03-04T08:30:15Z": the JSON form already.
            if type(v) is str and len(v) == 20 and _INSTANT.fullmatch(v):
                with contextlib.suppress(ValueError):  # a 30 February
                    return datetime.fromisoformat(v[:19]).replace(tzinfo=UTC), v
            return slow(v)

        return instant
    if kind is FieldType.DATE:

        def day(v: Any) -> tuple[Any, Any]:
            if type(v) is str and len(v) == 10 and _DAY.fullmatch(v):
                with contextlib.suppress(ValueError):
                    return date.fromisoformat(v), v
            return slow(v)

        return day
    if kind is FieldType.CHOICE and field.choices:
        named = Counter(local for local, _ in field.choices)
        labels: dict[int, str] = {}
        for local, option in field.choices:
            labels.setdefault(option, local)
        # Only an option whose label is its alone and fits the column comes back fast.
        fast = {o: c for o, c in labels.items() if named[c] == 1 and len(c) <= MAX_LABEL}

        def choice(v: Any) -> tuple[Any, Any]:
            local = fast.get(v) if type(v) is int else None
            return (local, v) if local is not None else slow(v)

        return choice
    return slow


# Dataverse's spellings, years from 1000 (those ``strftime`` spells back the same).
_INSTANT = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_DAY = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}")


def from_dataverse(field: FieldSpec, value: Any) -> Any:
    """The local value of ``field`` for the JSON ``value`` Dataverse returned."""
    if value is None:
        return None
    kind = field.type
    if kind in (FieldType.STRING, FieldType.MEMO):
        if not isinstance(value, str):
            raise DoesNotFit(field, f"Dynamics returned {_short(value)}, not text")
        return value
    if kind is FieldType.INTEGER:
        return _integer(field, value)
    if kind in (FieldType.DECIMAL, FieldType.MONEY):
        return _decimal(field, value)
    if kind is FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise DoesNotFit(field, f"Dynamics returned {_short(value)}, not a yes/no value")
        return value
    if kind is FieldType.DATETIME:
        return _instant(field, value)
    if kind is FieldType.DATE:
        return _date(field, value)
    if kind is FieldType.CHOICE:
        return _local_choice(field, _integer(field, value))
    return value


def from_input(field: FieldSpec, value: Any) -> Any:
    """The local value of a typed field given by a person or a program (the records API's
    JSON, a CSV cell's text), checked as Dynamics would check it."""
    if value is None:
        return None
    if field.type is FieldType.CHOICE:
        if field.needs_options:
            # Dynamics' options are read by the workers: one they lack is their sync error.
            if not isinstance(value, str) or not 1 <= len(value) <= MAX_LABEL:
                raise DoesNotFit(
                    field, f"{_short(value)} is not an option's label (1 to {MAX_LABEL} characters)"
                )
            return value
        option = to_dataverse(field, value)  # one of the choices, or an option value
        return value if field.labels else option
    if field.type is FieldType.BOOLEAN and isinstance(value, str):
        text = value.strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise DoesNotFit(field, f"{_short(value)} is not a yes/no value")
        return text in ("true", "1", "yes")
    local = from_dataverse(field, value)
    to_dataverse(field, local)
    return local


def canonical(field: FieldSpec, value: Any) -> Any:
    """Dataverse's JSON ``value`` in the one form crmsync keeps and compares."""
    return to_dataverse(field, from_dataverse(field, value))


def json_row(spec: ObjectSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """A local row with its mapped fields in their JSON form, to compare with Dynamics'
    (a value that does not fit stays as it is, and so differs)."""
    out = dict(row)
    for column, field in spec.field_specs.items():
        if column in out and field.type is not FieldType.LOOKUP:
            with contextlib.suppress(DoesNotFit):
                out[column] = to_dataverse(field, out[column])
    return out


def local_values(spec: ObjectSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON field values (lookups already local ids) as a local row holds them."""
    types = spec.field_specs
    return {
        c: from_dataverse(types[c], v)
        if c in types and types[c].type is not FieldType.LOOKUP
        else v
        for c, v in values.items()
    }


def _options_unread(field: FieldSpec) -> DoesNotFit:
    return DoesNotFit(
        field,
        f"the options of {field.attribute} were not read from Dynamics' metadata (a worker "
        "reads them when it starts): nothing was converted",
    )


def _listing(field: FieldSpec) -> str:
    if not field.options_read:
        return "the choices (" + ", ".join(repr(c) for c, _ in field.choices) + ")"
    shown = [f"{o} {c!r}" for c, o in field.choices[:LISTED]]
    if len(field.choices) > LISTED:
        shown.append(f"and {len(field.choices) - LISTED} more")
    return f"{field.attribute}'s options in Dynamics ({', '.join(shown) or 'none'})"


def _option(field: FieldSpec, value: Any) -> int:
    """The option value of a choice's local value: a declared choice, an option's label
    (exactly, and the label of one option only), or the option value itself."""
    if not field.labels:
        return _integer(field, value)
    if field.needs_options:
        raise _options_unread(field)
    found = [option for local, option in field.choices if value == local]
    if len(found) == 1:
        return found[0]
    if found:
        raise DoesNotFit(
            field,
            f"{_short(value)} is the label of {len(found)} options of {field.attribute} "
            f"({', '.join(map(str, found))}): crmsync cannot tell which; declare the "
            "choices in the mapping",
        )
    raise DoesNotFit(field, f"{_short(value)} is not one of {_listing(field)}")


def _local_choice(field: FieldSpec, option: int) -> Any:
    """The local value of Dynamics' option ``option``."""
    if not field.labels:
        return option
    if field.needs_options:
        raise _options_unread(field)
    for local, known in field.choices:
        if known == option:
            if len(local) > MAX_LABEL:
                raise DoesNotFit(
                    field,
                    f"option {option}'s label {_short(local)} is longer than the {MAX_LABEL} "
                    "characters the local column holds: declare the choices in the mapping",
                )
            return local
    if field.options_read:
        raise DoesNotFit(
            field,
            f"Dynamics' option {option} is not among {_listing(field)}, as read again "
            "from Dynamics' metadata: the error is retried when the workers read a change "
            "of the options",
        )
    raise DoesNotFit(field, f"Dynamics' option {option} has no local choice in the mapping")


def _integer(field: FieldSpec, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise DoesNotFit(field, f"{_short(value)} is not a whole number")
    try:
        number = int(value) if not isinstance(value, float) else None
    except ValueError:
        number = None
    if number is None and isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or (isinstance(value, Decimal) and value != number):
        raise DoesNotFit(field, f"{_short(value)} is not a whole number")
    _in_range(field, number)
    return number


def _decimal(field: FieldSpec, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise DoesNotFit(field, f"{_short(value)} is not a number")
    try:
        # repr of a float is its shortest exact spelling: 0.1 stays 0.1.
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise DoesNotFit(field, f"{_short(value)} is not a number") from None
    if not exact.is_finite():
        raise DoesNotFit(field, f"{_short(value)} is not a number")
    _in_range(field, exact)
    places = field.precision or 0
    step = Decimal(1).scaleb(-places)
    try:
        exact_places = exact.quantize(step)
    except InvalidOperation:  # more digits than a decimal holds at all
        raise DoesNotFit(field, f"{exact} has too many digits") from None
    if exact != exact_places:
        raise DoesNotFit(
            field, f"{exact} has more than {places} decimal places (it would be rounded)"
        )
    return exact_places


def _number(field: FieldSpec, exact: Decimal) -> int | float:
    """A JSON number that is exactly ``exact``: an integer, or a float whose shortest
    spelling is the decimal's (JSON has no decimal type; 15 significant digits always
    round-trip)."""
    if exact == exact.to_integral_value():
        return int(exact)
    as_float = float(exact)
    if Decimal(repr(as_float)) != exact:
        raise DoesNotFit(field, f"{exact} has more significant digits than can be sent exactly")
    return as_float


def _in_range(field: FieldSpec, number: int | Decimal) -> None:
    low, high = field.minimum, field.maximum
    if (low is not None and number < low) or (high is not None and number > high):
        raise DoesNotFit(field, f"{number} is outside {low}..{high}")


def _instant(field: FieldSpec, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DoesNotFit(field, f"{_short(value)} is not a date and time") from None
    if not isinstance(value, datetime):
        raise DoesNotFit(field, f"{_short(value)} is not a date and time")
    moment: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # Dataverse keeps date and time columns to the second; local ones hold UTC.
    return moment.astimezone(UTC).replace(microsecond=0)


def _date(field: FieldSpec, value: Any) -> date:
    if isinstance(value, datetime):
        raise DoesNotFit(field, f"{_short(value)} has a time; the field is a date only")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise DoesNotFit(field, f"{_short(value)} is not a date (YYYY-MM-DD)")
