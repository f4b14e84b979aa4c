"""OData query options: ``$filter`` compiled to a predicate, ``$select``, ``$orderby``,
``Prefer`` and the opaque paging cookie. No I/O: text in, decision out.

Dataverse compares strings case-insensitively (SQL Server collation), so ``eq``,
``contains``, ``startswith`` and ``endswith`` do too; comparisons with null are false
except ``eq null`` / ``ne null``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crmsync.emulator import faults, functions
from crmsync.emulator.model import Entity
from crmsync.numerals import decimal, whole

Row = dict[str, Any]
Predicate = Callable[[Row], bool]

_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<enum>[A-Za-z][A-Za-z0-9_.]*'(?:[^']|'')*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)
    | (?P<date>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_./@]*)
    | (?P<punct>[(),=\[\]])
    )""",
    re.VERBOSE | re.ASCII,
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCS = {"contains", "startswith", "endswith"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def format_datetime(moment: datetime) -> str:
    """Dataverse's wire format for date-times: UTC, whole seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(text: str) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment)


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.lastgroup is None:
            raise faults.bad_query(f"Syntax error at position {pos} in '{text}'.")
        out.append(_Tok(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)))
        pos = m.end()
    return out


Resolver = Callable[[str], Callable[[Row], Any]]


class _Parser:
    def __init__(self, text: str, entity: Entity, resolve: Resolver | None = None) -> None:
        self.text = text
        self.entity = entity
        self.resolve = resolve
        self.toks = _tokenize(text)
        self.i = 0

    def fail(self) -> faults.DataverseFault:
        pos = self.toks[self.i].pos if self.i < len(self.toks) else len(self.text)
        return faults.bad_query(f"Syntax error at position {pos} in '{self.text}'.")

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def word(self) -> str:
        tok = self.peek()
        return tok.text.lower() if tok is not None and tok.kind == "name" else ""

    def expect(self, text: str) -> None:
        tok = self.peek()
        if tok is None or tok.text != text:
            raise self.fail()
        self.i += 1

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise self.fail()
        return pred

    def or_expr(self) -> Predicate:
        left = self.and_expr()
        while self.word() == "or":
            self.i += 1
            right = self.and_expr()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def and_expr(self) -> Predicate:
        left = self.not_expr()
        while self.word() == "and":
            self.i += 1
            right = self.not_expr()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def not_expr(self) -> Predicate:
        if self.word() == "not":
            self.i += 1
            inner = self.not_expr()
            return lambda r: not inner(r)
        return self.comparison()

    def comparison(self) -> Predicate:
        tok = self.peek()
        if tok is None:
            raise self.fail()
        if tok.text == "(":
            self.i += 1
            inner = self.or_expr()
            self.expect(")")
            return inner
        if tok.kind == "name" and tok.text.lower() in _FUNCS:
            return self.function(tok.text.lower())
        if tok.kind == "name" and tok.text.lower().startswith(functions.PREFIX):
            self.i += 1
            args = functions.parse_args(self)
            return functions.build(tok.text, args, self.getter, self.column_type)
        left = self.operand()
        op = self.word()
        if op == "in":  # OData 4.01: name in ('a','b')
            self.i += 1
            self.expect("(")
            items = [self.operand()({})]
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.i += 1
                items.append(self.operand()({}))
            self.expect(")")
            return functions.membership(left, items, negate=False)
        if op not in _COMPARE:
            raise self.fail()
        self.i += 1
        right = self.operand()
        return _compare(op, left, right)

    def getter(self, name: str) -> Callable[[Row], Any]:
        """A column's value by name, for a query function's PropertyName."""
        if self.resolve is not None:
            return self.resolve(name)
        attr = self.entity.attributes.get(name)
        if attr is None:
            raise faults.unknown_property(self.entity.logical, name)
        column = attr.name
        return lambda r: r.get(column)

    def column_type(self, name: str) -> str | None:
        if self.resolve is not None:
            return None
        attr = self.entity.attributes.get(name)
        return attr.type if attr is not None else None

    def function(self, name: str) -> Predicate:
        self.i += 1
        self.expect("(")
        prop = self.operand()
        self.expect(",")
        arg = self.operand()
        self.expect(")")
        method = {"contains": "__contains__", "startswith": "startswith", "endswith": "endswith"}

        def pred(row: Row) -> bool:
            value, needle = prop(row), arg(row)
            if not isinstance(value, str) or not isinstance(needle, str):
                return False
            return bool(getattr(value.casefold(), method[name])(needle.casefold()))

        return pred

    def operand(self) -> Callable[[Row], Any]:
        tok = self.peek()
        if tok is None:
            raise self.fail()
        self.i += 1
        if tok.kind in ("string", "enum"):
            # An enum literal (Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist') compares
            # as its member name, which is how metadata rows carry enum values.
            text = tok.text[tok.text.index("'") + 1 : -1].replace("''", "'")
            return lambda r: text
        if tok.kind == "guid":
            guid = tok.text.lower()
            return lambda r: guid
        if tok.kind == "date":
            try:
                stamp = parse_date(tok.text)
            except ValueError as exc:
                raise self.fail() from exc
            return lambda r: stamp
        if tok.kind == "number":
            num = decimal(tok.text) if "." in tok.text else whole(tok.text, signed=True)
            if num is None:  # more digits than a number has
                raise self.fail()
            return lambda r: num
        if tok.kind == "name":
            lowered = tok.text.lower()
            if lowered in ("true", "false"):
                flag = lowered == "true"
                return lambda r: flag
            if lowered == "null":
                return lambda r: None
            if self.resolve is not None:
                return self.resolve(tok.text)
            attr = self.entity.attributes.get(tok.text)
            if attr is None:
                raise faults.unknown_property(self.entity.logical, tok.text)
            name = attr.name
            return lambda r: r.get(name)
        raise self.fail()


def _key(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _compare(op: str, left: Callable[[Row], Any], right: Callable[[Row], Any]) -> Predicate:
    def pred(row: Row) -> bool:
        a, b = left(row), right(row)
        if op == "eq":
            return a is b if a is None or b is None else bool(_key(a) == _key(b))
        if op == "ne":
            return a is not b if a is None or b is None else bool(_key(a) != _key(b))
        if a is None or b is None:
            return False
        try:
            a, b = _key(a), _key(b)
            if op == "gt":
                return bool(a > b)
            if op == "ge":
                return bool(a >= b)
            if op == "lt":
                return bool(a < b)
            return bool(a <= b)
        except TypeError:
            return False

    return pred


def compile_filter(text: str, entity: Entity, resolve: Resolver | None = None) -> Predicate:
    """``$filter`` as a predicate; ``resolve`` maps names to getters (metadata rows)."""
    return _Parser(text, entity, resolve).parse()


def parse_select(text: str | None, entity: Entity) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in entity.attributes:
            raise faults.unknown_property(entity.logical, name)
    if entity.primary_id not in names:
        names.append(entity.primary_id)
    return names


def parse_orderby(text: str | None, entity: Entity) -> list[tuple[str, bool]]:
    """``name desc,createdon`` -> [("name", True), ("createdon", False)]."""
    if not text:
        return []
    out = []
    for part in text.split(","):
        bits = part.split()
        if not bits or len(bits) > 2 or (len(bits) == 2 and bits[1].lower() not in ("asc", "desc")):
            raise faults.bad_query(f"Syntax error in '$orderby={text}'.")
        if bits[0] not in entity.attributes:
            raise faults.unknown_property(entity.logical, bits[0])
        out.append((bits[0], len(bits) == 2 and bits[1].lower() == "desc"))
    return out


@dataclass
class Prefer:
    representation: bool = False
    maxpagesize: int | None = None
    track_changes: bool = False
    continue_on_error: bool = False
    annotations: tuple[str, ...] = ()  # odata.include-annotations patterns, lower-case
    annotations_raw: tuple[str, ...] = ()  # the same, as the caller spelled them

    def wants(self, annotation: str) -> bool:
        """Whether ``odata.include-annotations`` asks for this annotation (``*`` globs)."""
        name = annotation.lower()
        for pattern in self.annotations:
            if pattern == "*" or pattern == name:
                return True
            if pattern.endswith(".*") and name.startswith(pattern[:-1]):
                return True
        return False


# Commas split preferences, except inside a quoted include-annotations list.
_PREFER_SPLIT_RE = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


def parse_prefer(header: str | None) -> Prefer:
    prefer = Prefer()
    if not header:
        return prefer
    for part in _PREFER_SPLIT_RE.split(header):
        item = part.strip().lower()
        if item.startswith("odata.include-annotations="):
            listed = part.strip().split("=", 1)[1].strip().strip('"')
            prefer.annotations_raw = tuple(p.strip() for p in listed.split(",") if p.strip())
            prefer.annotations = tuple(p.lower() for p in prefer.annotations_raw)
        elif item == "return=representation":
            prefer.representation = True
        elif item == "odata.track-changes":
            prefer.track_changes = True
        elif item == "odata.continue-on-error":
            prefer.continue_on_error = True
        elif item.startswith("odata.maxpagesize="):
            size = whole(item.split("=", 1)[1].strip('"'))
            if size is None:
                continue
            if size > 0:
                prefer.maxpagesize = size
    return prefer


def sort_key(orderby: list[tuple[str, bool]], pk: str) -> Callable[[Row], tuple[Any, ...]]:
    """A key that sorts like SQL Server: nulls first ascending, the primary key last."""

    def key(row: Row) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name, desc in orderby:
            value = _key(row.get(name))
            present = value is not None
            parts.append(_Desc((present, value)) if desc else (present, value))
        parts.append(row[pk])
        return tuple(parts)

    return key


class _Desc:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def encode_skiptoken(state: dict[str, Any], page: int, tracking: bool) -> str:
    """An opaque cookie shaped like Dataverse's (page-results docs)."""
    cookie = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    return (
        f'<cookie pagenumber="{page}" pagingcookie="{cookie}" '
        f'istracking="{"True" if tracking else "False"}" />'
    )


def decode_skiptoken(token: str) -> tuple[dict[str, Any], int]:
    m = re.search(r'pagenumber="([0-9]+)" pagingcookie="([A-Za-z0-9_\-=]+)"', token)
    if m is None:
        raise faults.bad_query("The $skiptoken value is invalid.")
    try:
        state = json.loads(base64.urlsafe_b64decode(m.group(2)))
    except ValueError as exc:
        raise faults.bad_query("The $skiptoken value is invalid.") from exc
    if not isinstance(state, dict):
        raise faults.bad_query("The $skiptoken value is invalid.")
    return state, int(m.group(1))
