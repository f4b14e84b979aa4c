"""``INNER JOIN`` and ``LEFT [OUTER] JOIN`` for ``sql=`` (listed by Microsoft's SDK for
``query.sql``; its guardrails refuse RIGHT, FULL and CROSS joins, as the server does):
each join matches one column of a table already in the query with one of the joined
table, by equality (``ON a.accountid = c.parentcustomerid``). Rows of the result are
keyed ``alias.column``; a ``LEFT JOIN`` row without a match holds nulls for the joined
table. Inferred: text matches case-insensitively (Dataverse's collation), and only one
equality per ``ON`` is run (others are refused, never guessed at).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crmsync.emulator.model import Entity
from crmsync.emulator.sqlagg import Ref
from crmsync.emulator.store import Store

Row = dict[str, Any]


@dataclass(frozen=True)
class Join:
    alias: str
    entity: Entity
    outer: Ref  # a column of a table before this one
    inner: Ref  # the joined table's column
    left: bool


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def keyed(alias: str, rows: Iterable[Row]) -> list[Row]:
    return [{f"{alias}.{k}": v for k, v in row.items()} for row in rows]


def combine(rows: list[Row], joins: list[Join], store: Store) -> list[Row]:
    """``rows`` (keyed by the FROM table's alias) joined with each of ``joins`` in turn."""
    for join in joins:
        index: dict[Any, list[Row]] = {}
        for row in store.tables[join.entity.entity_set].rows.values():
            value = row.get(join.inner.attr.name)
            if value is not None:
                index.setdefault(_fold(value), []).append(row)
        out: list[Row] = []
        for row in rows:
            value = row.get(join.outer.key)
            matches = index.get(_fold(value), []) if value is not None else []
            for match in matches:
                out.append({**row, **keyed(join.alias, [match])[0]})
            if not matches and join.left:
                out.append(dict(row))
        rows = out
    return rows
