"""``$apply``: ``filter(...)``, ``groupby((a,b))``, ``groupby((a),aggregate(...))`` and
``aggregate(...)``, as ``webapi/query/aggregate-data.md`` describes them.

Aggregates: ``$count as x`` and ``<column> with sum|min|max|average|countdistinct as
x``. Documented limits kept: at most 50,000 rows are aggregated (more is an error),
``groupby`` on a date-time column is refused, and ``$orderby`` on an aggregate answers
``The query node SingleValueOpenPropertyAccess is not supported.``. Rows carry the
grouped columns and the aggregate aliases only (the docs' examples); formatted values
come with ``odata.include-annotations``. Inferred: other query options beside
``$apply`` (``$select``, ``$top``...) are refused rather than guessed at, except an
``$orderby`` on grouped columns; the error code for the 50,000 limit (0x8004e023).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.metaquery import split_top
from crmsync.emulator.model import BIGINT, DATETIME, PICKLIST, Entity
from crmsync.emulator.odata import Predicate, compile_filter, parse_orderby, sort_key

Row = dict[str, Any]
LIMIT = 50_000
_AGG_RE = re.compile(
    r"^(\$count|[A-Za-z_][A-Za-z0-9_]*)(?:\s+with\s+([a-z]+))?\s+as\s+([A-Za-z_][A-Za-z0-9_]*)$"
)
_METHODS = ("sum", "min", "max", "average", "countdistinct")


@dataclass
class Apply:
    filters: list[Predicate] = field(default_factory=list)
    groupby: list[str] | None = None
    aggregates: list[tuple[str, str, str]] = field(default_factory=list)  # column, method, alias


def parse(text: str, entity: Entity) -> Apply:
    out = Apply()
    for step in split_top(text, "/"):
        name, _, rest = step.partition("(")
        name = name.strip()
        if not rest.endswith(")"):
            raise _syntax(text)
        inner = rest[:-1]
        if name == "filter" and out.groupby is None and not out.aggregates:
            out.filters.append(compile_filter(inner, entity))
        elif name == "groupby" and out.groupby is None and not out.aggregates:
            columns, *more = split_top(inner, ",")
            if not (columns.startswith("(") and columns.endswith(")")) or len(more) > 1:
                raise _syntax(text)
            out.groupby = [c.strip() for c in columns[1:-1].split(",") if c.strip()]
            for column in out.groupby:
                attr = entity.attributes.get(column)
                if attr is None:
                    raise faults.unknown_property(entity.logical, column)
                if attr.type == DATETIME:
                    raise faults.bad_query("groupby with datetime values isn't supported.")
            if more:
                out.aggregates = _aggregates(more[0], entity, text)
        elif name == "aggregate" and not out.aggregates:
            out.aggregates = _aggregates(step, entity, text)
        else:
            raise faults.bad_query(f"The $apply transformation '{name}' is not supported.")
    if out.groupby is None and not out.aggregates:
        raise _syntax(text)
    return out


def _aggregates(text: str, entity: Entity, whole: str) -> list[tuple[str, str, str]]:
    if not (text.startswith("aggregate(") and text.endswith(")")):
        raise _syntax(whole)
    out = []
    for item in split_top(text[len("aggregate(") : -1], ","):
        m = _AGG_RE.match(item.strip())
        if m is None:
            raise _syntax(whole)
        column, method, alias = m.group(1), m.group(2), m.group(3)
        if column == "$count":
            if method is not None:
                raise _syntax(whole)
            out.append(("$count", "count", alias))
            continue
        attr = entity.attributes.get(column)
        if attr is None:
            raise faults.unknown_property(entity.logical, column)
        if method not in _METHODS:
            raise faults.bad_query(f"The aggregate method '{method}' is not supported.")
        numeric = attr.type in (PICKLIST, BIGINT)
        if method in ("sum", "average") and not numeric:
            raise faults.bad_query(
                f"The aggregate method '{method}' can't be applied to '{column}' of type "
                f"'{attr.type}'."
            )
        out.append((attr.name, method, alias))
    return out


def run(spec: Apply, rows: list[Row], orderby_text: str | None, entity: Entity) -> list[Row]:
    chosen = [r for r in rows if all(f(r) for f in spec.filters)]
    if len(chosen) > LIMIT:
        raise faults.DataverseFault(
            400, "0x8004e023", f"AggregateQueryRecordLimit exceeded. Cannot perform this "
            f"operation on more than {LIMIT} records."
        )  # fmt: skip
    groups: dict[tuple[Any, ...], list[Row]] = {}
    columns = spec.groupby or []
    for row in chosen:
        groups.setdefault(tuple(row.get(c) for c in columns), []).append(row)
    if not columns:
        groups = {(): chosen}
    out = []
    for key, members in groups.items():
        result: Row = dict(zip(columns, key, strict=True))
        for column, method, alias in spec.aggregates:
            result[alias] = _compute(method, column, members)
        out.append(result)
    if orderby_text:
        aliases = {alias for _, _, alias in spec.aggregates}
        named = [p.split()[0] for p in orderby_text.split(",") if p.split()]
        if any(n in aliases for n in named):
            raise faults.bad_query("The query node SingleValueOpenPropertyAccess is not supported.")
        orders = parse_orderby(orderby_text, entity)
        for name, _ in orders:
            if name not in columns:
                raise faults.bad_query(f"$orderby on '{name}' needs it in the groupby.")
        by = sort_key(orders, "\0group")
        out.sort(key=lambda r: by({**r, "\0group": 0}))
    return out


def _compute(method: str, column: str, rows: list[Row]) -> Any:
    if method == "count":
        return len(rows)
    values: list[Any] = [r[column] for r in rows if r.get(column) is not None]
    if method == "countdistinct":
        return len({v.casefold() if isinstance(v, str) else v for v in values})
    if not values:
        return None
    if method == "sum":
        return sum(values)
    if method == "average":
        return sum(values) / len(values)
    return min(values) if method == "min" else max(values)


def _syntax(text: str) -> faults.DataverseFault:
    return faults.bad_query(f"Syntax error in '$apply={text}'.")
