"""``GET {set}?sql=SELECT ...``: the read-only SQL subset Microsoft's Python SDK sends.

Microsoft documents the subset (``sdk-python/query.md``): one ``SELECT`` with an
optional ``WHERE`` whose leaves compare a column with a constant, ``TOP`` with an
integer literal, ``ORDER BY`` plain columns, a plain table alias after ``FROM``. The
emulator runs that, plus what the SDK's docstring lists: ``DISTINCT``, ``[NOT] LIKE``,
``IS [NOT] NULL``, ``[NOT] IN`` lists, ``[NOT] BETWEEN``, ``OFFSET ... FETCH NEXT``,
``INNER``/``LEFT JOIN`` (``sqljoin``), ``GROUP BY`` and aggregates (``sqlagg``). The
rest (other functions, ``*``, ``HAVING``, subqueries, other joins) is a 400. Inferred,
undocumented: the error code (0x80040203), that rows carry every selected column
including nulls, that a result has no next page, and that a condition on a choices
(multi-select) column other than ``IS [NOT] NULL`` is refused, as is a containment
test (``ContainValues``, ``DoesNotContainValues``, ``CONTAINS``, ``FREETEXT``): the SQL
subset has none, so the answer points to ``$filter``'s ``ContainValues`` and FetchXML's
``contain-values``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crmsync.emulator import sqlagg, sqljoin
from crmsync.emulator.conditions import coerce, column, invalid, like, logical_name, operator_test
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import ENTITIES, MULTISELECT, Entity
from crmsync.emulator.odata import sort_key
from crmsync.emulator.store import Store
from crmsync.numerals import whole

MAX_ROWS = 5000
Row = dict[str, Any]
_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<string>N?'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)
    |(?P<name>\[[^\]]+\]|[A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|<>|!=|=|<|>)|(?P<punct>[(),.*;]))""",
    re.VERBOSE | re.ASCII,
)
_KEYWORDS = {
    "select", "distinct", "top", "from", "as", "where", "and", "or", "not", "order", "by",
    "asc", "desc", "like", "is", "null", "in", "join", "inner", "left", "right", "on",
    "group", "having", "union", "with", "exists", "between", "case", "offset",
}  # fmt: skip
# Containment tests a client may try on a choices column (FetchXML and $filter have them).
_CONTAINMENT = {"containvalues", "doesnotcontainvalues", "contains", "freetext"}
_OPS = {"=": "eq", "<>": "ne", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


def refused(message: str) -> Exception:
    return invalid(f"The SQL query is not supported: {message}")


@dataclass
class Select:
    columns: list[sqlagg.Item]
    where: Callable[[Row], bool] | None = None
    orders: list[tuple[str, bool]] = field(default_factory=list)
    group: list[sqlagg.Ref] = field(default_factory=list)
    alias: str = ""
    joins: list[sqljoin.Join] = field(default_factory=list)
    top: int | None = None
    distinct: bool = False
    offset: int = 0

    @property
    def grouped(self) -> bool:
        return bool(self.group) or any(isinstance(a, sqlagg.Aggregate) for a, _ in self.columns)


class _Parser:
    def __init__(self, text: str, entity: Entity) -> None:
        self.entity = entity
        self.alias = entity.logical
        self.tables: list[tuple[str, Entity]] = []
        self.toks: list[tuple[str, str]] = []
        pos = 0
        while text[pos:].strip():
            m = _TOKEN_RE.match(text, pos)
            if m is None or m.lastgroup is None:
                raise refused(f"unexpected text at position {pos}: '{text[pos : pos + 20]}'.")
            self.toks.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.i = 0

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.toks[j][1].lower() if j < len(self.toks) else ""

    def take(self, *words: str) -> bool:
        if self.peek() in words:
            self.i += 1
            return True
        return False

    def need(self, word: str) -> None:
        if not self.take(word):
            raise refused(f"expected '{word.upper()}' but found '{self.peek() or 'the end'}'.")

    def name(self) -> str:
        if self.i >= len(self.toks) or self.toks[self.i][0] != "name":
            raise refused(f"expected a name but found '{self.peek() or 'the end'}'.")
        text = self.toks[self.i][1]
        self.i += 1
        return text[1:-1] if text.startswith("[") else text

    def column(self) -> sqlagg.Ref:
        first = self.name()
        tables = self.tables
        if self.take("."):
            tables = [(a, e) for a, e in self.tables if first.lower() in (a.lower(), e.logical)]
            if not tables:
                raise invalid(
                    f'The multi-part identifier "{first}.{self.peek()}" could not be bound.'
                )
            first = self.name()
        if first.lower() in _KEYWORDS or self.peek() == "(":
            raise refused(f"'{first}' where a column was expected (functions are not run).")
        found = [
            sqlagg.Ref(a, e, attr)
            for a, e in tables
            if (attr := column(e, first.lower())) is not None
        ]
        if not found:
            raise invalid(f"Invalid column name '{first}'.")
        if len(found) > 1:
            raise invalid(f"Ambiguous column name '{first}'.")
        return found[0]

    def called(self) -> str | None:
        """The (dotted) name of a function called at this point, or None."""
        j, names = self.i, []
        while j < len(self.toks) and self.toks[j][0] == "name":
            names.append(self.toks[j][1])
            if j + 1 < len(self.toks) and self.toks[j + 1][1] == ".":
                j += 2
                continue
            j += 1
            break
        if names and j < len(self.toks) and self.toks[j][1] == "(":
            return ".".join(names)
        return None

    def table(self) -> tuple[str, Entity]:
        name = self.name()
        entity = next((e for e in ENTITIES.values() if e.logical == name.lower()), None)
        if entity is None:
            raise invalid(f"Invalid object name '{name}'.")
        alias = entity.logical
        if self.take("as") or (self.peek() and self.peek() not in _KEYWORDS):
            alias = self.name()
        if any(alias.lower() == a.lower() for a, _ in self.tables):
            raise invalid(f"The correlation name '{alias}' is specified multiple times.")
        self.tables.append((alias, entity))
        return alias, entity

    def joins(self) -> list[sqljoin.Join]:
        out: list[sqljoin.Join] = []
        while True:
            if self.peek() in ("right", "full", "cross"):
                raise refused(f"{self.peek().upper()} JOIN: only INNER JOIN and LEFT JOIN are run.")
            left = self.take("left")
            if left:
                self.take("outer")
            else:
                self.take("inner")
            if not self.take("join"):
                if left:
                    raise refused("expected 'JOIN' after LEFT.")
                return out
            alias, entity = self.table()
            self.need("on")
            one = self.column()
            self.need("=")
            two = self.column()
            inner, outer = (one, two) if one.alias == alias else (two, one)
            if inner.alias != alias or outer.alias == alias:
                raise refused("ON must compare a column of the joined table with an earlier one.")
            if self.peek() in ("and", "or"):
                raise refused("ON takes one equality of two columns.")
            out.append(sqljoin.Join(alias, entity, outer, inner, left))

    def parse(self) -> Select:
        self.need("select")
        distinct = self.take("distinct")
        top = None
        if self.take("top"):
            kind, text = self.toks[self.i] if self.i < len(self.toks) else ("", "")
            value = whole(text) if kind == "number" else None
            if value is None:
                raise refused("TOP takes an integer literal.")
            self.i += 1
            top = min(value, MAX_ROWS)
        start = self.i
        depth = 0
        while self.i < len(self.toks) and not (depth == 0 and self.peek() == "from"):
            depth += {"(": 1, ")": -1}.get(self.peek(), 0)
            self.i += 1
        select_end = self.i
        self.need("from")
        if self.peek() != self.entity.logical:
            raise refused(f"the table '{self.peek()}' is not the entity set's table.")
        self.alias, _ = self.table()
        joins = self.joins()
        after_from = self.i
        self.i = start
        columns = self.columns(select_end)
        self.i = after_from
        out = Select(columns, top=top, distinct=distinct, alias=self.alias, joins=joins)
        if self.take("where"):
            out.where = self.or_expr()
        if self.take("group"):
            self.need("by")
            out.group.append(self.column())
            while self.take(","):
                out.group.append(self.column())
        if self.take("order"):
            self.need("by")
            while True:
                key = self.output_key(out) if out.grouped else self.column().key
                desc = self.take("desc")
                if not desc:
                    self.take("asc")
                out.orders.append((key, desc))
                if not self.take(","):
                    break
            if self.take("offset"):
                self.offset_fetch(out)
        if self.i < len(self.toks):
            raise refused(f"'{self.peek()}' is not part of the supported SELECT subset.")
        return out

    def count(self, clause: str) -> int:
        kind, text = self.toks[self.i] if self.i < len(self.toks) else ("", "")
        value = whole(text) if kind == "number" else None
        if value is None:
            raise refused(f"{clause} takes an integer literal.")
        self.i += 1
        return value

    def offset_fetch(self, out: Select) -> None:
        """``OFFSET n ROWS [FETCH NEXT|FIRST m ROWS ONLY]`` after ``ORDER BY`` (T-SQL;
        listed by Microsoft's SDK); with ``TOP`` it is T-SQL's own error."""
        if out.top is not None:
            raise refused("A TOP can not be used in the same query or sub-query as a OFFSET.")
        out.offset = self.count("OFFSET")
        if not self.take("rows", "row"):
            raise refused("expected 'ROWS' after OFFSET.")
        if self.take("fetch"):
            if not self.take("next", "first"):
                raise refused("expected 'NEXT' after FETCH.")
            out.top = min(self.count("FETCH"), MAX_ROWS)
            if not self.take("rows", "row"):
                raise refused("expected 'ROWS' after FETCH NEXT.")
            self.need("only")

    def output_key(self, out: Select) -> str:
        """An ``ORDER BY`` name over grouped rows: an aggregate's alias or a grouped column."""
        if self.i + 1 >= len(self.toks) or self.toks[self.i + 1][1] != ".":
            labels = {label.lower(): label for _, label in out.columns if label}
            if self.peek() in labels:
                self.i += 1
                return labels[self.toks[self.i - 1][1].lower()]
        ref = self.column()
        for item, label in out.columns:
            if isinstance(item, sqlagg.Ref) and item.key == ref.key:
                return label or logical_name(ref.attr)
        raise invalid(
            f"Column '{logical_name(ref.attr)}' is invalid in the ORDER BY clause because it is "
            "not contained in either an aggregate function or the GROUP BY clause."
        )

    def aggregate(self) -> sqlagg.Aggregate:
        function = self.peek()
        self.i += 2  # the name and "("
        if self.take("*"):
            if function != "count":
                raise refused(f"{function.upper()}(*) is not valid; name a column.")
            agg = sqlagg.Aggregate(function, None)
        else:
            distinct = self.take("distinct")
            agg = sqlagg.Aggregate(function, self.column(), distinct)
        self.need(")")
        return agg

    def columns(self, end: int) -> list[sqlagg.Item]:
        out: list[sqlagg.Item] = []
        while True:
            if self.peek() == "*":
                raise refused("SELECT * is not run; name the columns.")
            if self.peek() in sqlagg.FUNCTIONS and self.peek(1) == "(":
                agg = self.aggregate()
                named = self.take("as") or (self.i < end and self.peek() != ",")
                if not named or self.i >= end or self.peek() in _KEYWORDS:
                    raise refused(f"{agg.function.upper()}(...) needs an alias (AS name).")
                out.append((agg, self.name()))
                if self.i >= end:
                    return _unique(out)
                self.need(",")
                continue
            ref = self.column()
            label = ""
            if self.take("as") or (self.i < end and self.peek() not in (",",)):
                label = self.name()
            out.append((ref, label))
            if self.i >= end:
                return _unique(out)
            self.need(",")

    def or_expr(self) -> Callable[[Row], bool]:
        left = self.and_expr()
        while self.take("or"):
            right = self.and_expr()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def and_expr(self) -> Callable[[Row], bool]:
        left = self.not_expr()
        while self.take("and"):
            right = self.not_expr()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def not_expr(self) -> Callable[[Row], bool]:
        if self.take("not"):
            inner = self.not_expr()
            return lambda r: not inner(r)
        if self.take("("):
            inner = self.or_expr()
            self.need(")")
            return inner
        return self.leaf()

    def leaf(self) -> Callable[[Row], bool]:
        called = self.called()
        if called is not None and called.rsplit(".", 1)[-1].lower() in _CONTAINMENT:
            # Dataverse's SQL has no containment test: its documented subset lists none,
            # T-SQL's CONTAINS/FREETEXT need a full-text index the endpoint does not
            # expose, and ContainValues exists only in $filter. The wording is inferred.
            raise refused(
                f"{called}() is not part of Dataverse's SQL. Filter a choices column with "
                "$filter=Microsoft.Dynamics.CRM.ContainValues(PropertyName=...,"
                "PropertyValues=[...]) or FetchXML's contain-values."
            )
        ref = self.column()
        attr, name, entity = ref.attr, ref.key, ref.entity
        if attr.type == MULTISELECT and self.peek() != "is":
            # Inferred: Dataverse's SQL documents no operator for a choices column, so a
            # guessed meaning could answer 200 with rows Dataverse would not give.
            raise refused(
                f"'{logical_name(attr)}' is a choices column: filter it with $filter "
                "Microsoft.Dynamics.CRM.ContainValues or FetchXML contain-values."
            )
        if self.take("is"):
            negate = self.take("not")
            self.need("null")
            return (
                (lambda r: r.get(name) is not None) if negate else (lambda r: r.get(name) is None)
            )
        negate = self.take("not")
        if self.take("like"):
            pattern = self.constant()
            if not isinstance(pattern, str):
                raise refused("LIKE takes a string literal.")
            if negate:
                return lambda r: isinstance(r.get(name), str) and not like(r.get(name), pattern)
            return lambda r: like(r.get(name), pattern)
        if self.take("between"):
            lo = coerce(entity, attr, self.constant())
            self.need("and")
            hi = coerce(entity, attr, self.constant())
            inside = operator_test("ge", [lo]), operator_test("le", [hi])

            def between(r: Row) -> bool:
                v = r.get(name)
                return v is not None and (inside[0](v) and inside[1](v)) != negate

            return between
        if self.take("in"):
            self.need("(")
            values = [coerce(entity, attr, self.constant())]
            while self.take(","):
                values.append(coerce(entity, attr, self.constant()))
            self.need(")")
            check = operator_test("not-in" if negate else "in", values)
            return lambda r: check(r.get(name))
        if negate or self.peek() not in _OPS:
            raise refused(f"'{self.peek() or 'the end'}' after column '{logical_name(attr)}'.")
        op = _OPS[self.peek()]
        self.i += 1
        value = coerce(entity, attr, self.constant())
        check = operator_test(op, [value])
        return lambda r: check(r.get(name))

    def constant(self) -> Any:
        kind, text = self.toks[self.i] if self.i < len(self.toks) else ("", "")
        self.i += 1
        if kind == "string":
            return text[text.index("'") + 1 : -1].replace("''", "'")
        if kind == "number":
            return text
        if text.lower() == "null":
            return None
        raise refused(f"'{text or 'the end'}' where a constant was expected.")


def _plain(items: list[sqlagg.Item]) -> list[tuple[sqlagg.Ref, str]]:
    return [(a, label) for a, label in items if isinstance(a, sqlagg.Ref)]


def _unique(items: list[sqlagg.Item]) -> list[sqlagg.Item]:
    """Inferred: two result columns of one name (``a.name, c.name``) are refused, since a
    JSON row holds one; T-SQL allows them, Dataverse's answer is undocumented."""
    names = [label or logical_name(i.attr) for i, label in items if isinstance(i, sqlagg.Ref)]
    names += [label for i, label in items if isinstance(i, sqlagg.Aggregate)]
    for name in names:
        if [n.lower() for n in names].count(name.lower()) > 1:
            raise refused(f"two result columns are named '{name}'; give one an alias (AS name).")
    return items


def _by(name: str) -> Callable[[Row], tuple[bool, Any]]:
    return lambda row: _order_value(row.get(name))


def _order_value(value: Any) -> tuple[bool, Any]:
    """SQL Server's order: nulls first ascending; text case-insensitively."""
    return (value is not None, value.casefold() if isinstance(value, str) else value)


def parse(text: str, entity: Entity) -> Select:
    return _Parser(text.strip(), entity).parse()


def run(select: Select, entity: Entity, store: Store, call: Call) -> Reply:
    base = sqljoin.keyed(select.alias, store.tables[entity.entity_set].rows.values())
    rows = [
        r
        for r in sqljoin.combine(base, select.joins, store)
        if select.where is None or select.where(r)
    ]
    if select.grouped:
        shaped_rows = sqlagg.grouped(select.columns, select.group, rows, logical_name)
        for name, desc in reversed(select.orders):
            shaped_rows.sort(key=_by(name), reverse=desc)
    else:
        rows.sort(key=sort_key(select.orders, f"{select.alias}.{entity.primary_id}"))
        shaped_rows = [
            {label or logical_name(r.attr): row.get(r.key) for r, label in _plain(select.columns)}
            for row in rows
        ]
    out: list[Row] = []
    seen: set[str] = set()
    skip = select.offset
    for shaped in shaped_rows:
        if select.distinct:
            marker = repr(sorted(shaped.items()))
            if marker in seen:
                continue
            seen.add(marker)
        if skip:
            skip -= 1
            continue
        out.append(shaped)
        if len(out) == (select.top if select.top is not None else MAX_ROWS):
            break
    payload = {"@odata.context": f"{call.base}$metadata#{entity.entity_set}", "value": out}
    return Reply.json(200, payload, len(out))
