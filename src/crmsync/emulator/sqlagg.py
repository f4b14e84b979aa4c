"""``GROUP BY`` and the aggregates ``COUNT(*)``, ``COUNT([DISTINCT] col)``, ``SUM``,
``AVG``, ``MIN``, ``MAX`` for ``sql=`` on one table (listed by Microsoft's SDK docstring
for ``query.sql``), with T-SQL's rules: a selected column must be grouped, nulls are left
out of every aggregate but ``COUNT(*)``, ``SUM``/``AVG`` of no value is NULL, ``AVG`` of a
whole-number column is a whole number (truncated), ``SUM``/``AVG`` of text is an error;
text groups and compares case-insensitively, as Dataverse's collation does. Inferred:
an aggregate needs an alias (the name Dataverse gives an unnamed column is undocumented).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crmsync.emulator.conditions import invalid
from crmsync.emulator.model import (
    BIGINT,
    DECIMAL,
    INTEGER,
    MONEY,
    PICKLIST,
    Attribute,
    Entity,
)

Row = dict[str, Any]
FUNCTIONS = ("count", "sum", "avg", "min", "max")
_WHOLE = (INTEGER, BIGINT, PICKLIST)
_NUMERIC = (*_WHOLE, DECIMAL, MONEY)


@dataclass(frozen=True, eq=False)
class Ref:
    """A column of one of the query's tables, keyed ``alias.column`` in a joined row."""

    alias: str
    entity: Entity
    attr: Attribute

    @property
    def key(self) -> str:
        return f"{self.alias}.{self.attr.name}"


@dataclass(frozen=True)
class Aggregate:
    function: str
    ref: Ref | None  # None: COUNT(*)
    distinct: bool = False

    @property
    def attr(self) -> Attribute | None:
        return self.ref.attr if self.ref is not None else None

    def check(self) -> None:
        if self.function in ("sum", "avg") and (
            self.attr is None or self.attr.type not in _NUMERIC
        ):
            raise invalid(f"Operand data type nvarchar is invalid for {self.function} operator.")

    def value(self, rows: list[Row]) -> Any:
        if self.ref is None or self.attr is None:
            return len(rows)
        values = [r.get(self.ref.key) for r in rows]
        present = [v for v in values if v is not None]
        if self.distinct:
            present = list({_fold(v): v for v in present}.values())
        if self.function == "count":
            return len(present)
        if not present:
            return None
        if self.function == "sum":
            return sum(present)
        if self.function == "avg":
            mean = sum(present) / len(present)
            return int(mean) if self.attr.type in _WHOLE else mean
        pick = min if self.function == "min" else max
        return pick(present, key=_fold)


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


Item = tuple[Ref | Aggregate, str]


def grouped(
    items: list[Item],
    group: list[Ref],
    rows: Iterable[Row],
    name_of: Callable[[Attribute], str],
) -> list[Row]:
    """One output row per group (one in all when nothing is grouped), shaped by ``items``;
    refuses a plain selected column that is not grouped (T-SQL's message)."""
    grouped_names = {a.key for a in group}
    for item, _label in items:
        if isinstance(item, Ref) and item.key not in grouped_names:
            raise invalid(
                f"Column '{name_of(item.attr)}' is invalid in the select list because it is not "
                "contained in either an aggregate function or the GROUP BY clause."
            )
        if isinstance(item, Aggregate):
            item.check()
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(_fold(row.get(a.key)) for a in group), []).append(row)
    if not group and not groups:
        groups[()] = []
    out = []
    for members in groups.values():
        shaped: Row = {}
        for item, label in items:
            if isinstance(item, Aggregate):
                shaped[label] = item.value(members)
            else:
                shaped[label or name_of(item.attr)] = members[0].get(item.key)
        out.append(shaped)
    return out
