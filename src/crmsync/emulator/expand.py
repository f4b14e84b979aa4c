"""``$expand`` on records, and collection-valued navigation paths.

From ``webapi/query/join-tables.md``: a single-valued navigation property (a lookup's,
``parentcustomerid_account``) expands to the related row or ``null``; a collection-valued
one (``contact_customer_accounts`` on account) to a list, with nested ``$select``,
``$filter``, ``$orderby`` and ``$top`` separated by ``;`` (single-valued ones take
``$select`` only). Nested ``$expand`` inside an expansion is refused, as are expansions
with change tracking (reference section 2). ``GET accounts(<id>)/contact_customer_accounts``
lists the related rows with the same options. Inferred: an expanded collection is not
paged (the emulator returns up to 5,000 related rows, without a nested nextLink).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.annotations import annotate
from crmsync.emulator.conditions import logical_name
from crmsync.emulator.metaquery import split_top
from crmsync.emulator.model import ENTITIES, LOOKUP, Attribute, Entity
from crmsync.emulator.odata import (
    Predicate,
    Prefer,
    compile_filter,
    parse_orderby,
    parse_select,
    sort_key,
)
from crmsync.emulator.records import represent
from crmsync.emulator.relationships import relationship_name
from crmsync.emulator.store import Store
from crmsync.numerals import whole

Row = dict[str, Any]
MAX_RELATED = 5000


@dataclass(frozen=True)
class Nav:
    name: str
    many: bool  # collection-valued
    target: Entity  # the entity the property leads to
    lookup: Attribute  # the lookup column (on this entity if single, on target if many)
    source: Entity  # the entity the property belongs to


@dataclass
class Expansion:
    nav: Nav
    select: list[str] | None = None
    where: Predicate | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)
    top: int | None = None


def navigations(entity: Entity) -> dict[str, Nav]:
    out: dict[str, Nav] = {}
    for attr in entity.attributes.values():
        if attr.type == LOOKUP and attr.target:
            name = attr.navigation or logical_name(attr)
            out[name] = Nav(name, False, ENTITIES[attr.target], attr, entity)
    for other in ENTITIES.values():
        for attr in other.attributes.values():
            if attr.type == LOOKUP and attr.target == entity.entity_set:
                name = relationship_name(other.logical, logical_name(attr))
                out[name] = Nav(name, True, other, attr, entity)
    return out


def parse(text: str | None, entity: Entity) -> list[Expansion]:
    if not text:
        return []
    navs = navigations(entity)
    out = []
    for item in split_top(text, ","):
        name, _, rest = item.partition("(")
        nav = navs.get(name.strip())
        if nav is None:
            raise faults.unknown_property(entity.logical, name.strip())
        options: dict[str, str] = {}
        if rest:
            if not rest.endswith(")"):
                raise faults.bad_query(f"Syntax error in '$expand={text}'.")
            for option in split_top(rest[:-1], ";"):
                key, eq, value = option.partition("=")
                if not eq:
                    raise faults.bad_query(f"Syntax error in '$expand={text}'.")
                options[key.strip()] = value.strip()
        out.append(options_for(nav, options))
    return out


def options_for(nav: Nav, options: dict[str, str]) -> Expansion:
    """Nested options of one expansion (or of a navigation path's query)."""
    allowed = {"$select", "$filter", "$orderby", "$top"} if nav.many else {"$select"}
    for key in options:
        if key not in allowed:
            raise faults.bad_query(
                f"The query option {key} is not supported inside $expand of '{nav.name}'."
            )
    exp = Expansion(nav, parse_select(options.get("$select"), nav.target))
    if options.get("$filter"):
        exp.where = compile_filter(options["$filter"], nav.target)
    exp.orderby = parse_orderby(options.get("$orderby"), nav.target)
    if "$top" in options:
        text = options["$top"]
        top = whole(text)
        if top is None:
            raise faults.bad_query(f"Invalid value '{text}' for $top query option found.")
        exp.top = min(top, MAX_RELATED)
    return exp


def related(exp: Expansion, row: Row, store: Store, index: dict[Any, list[Row]] | None) -> Any:
    """The expanded value for one row: a shaped row / None, or a list of shaped rows."""
    nav = exp.nav
    if not nav.many:
        key = row.get(nav.lookup.name)
        target = store.get(nav.target.entity_set, key) if key else None
        return None if target is None else represent(nav.target, target, exp.select)
    matches = (index or {}).get(row.get(nav.source.primary_id), [])
    return rows_of(exp, matches)


def rows_of(exp: Expansion, rows: list[Row]) -> list[Row]:
    nav = exp.nav
    chosen = [r for r in rows if exp.where is None or exp.where(r)]
    chosen.sort(key=sort_key(exp.orderby, nav.target.primary_id))
    limit = exp.top if exp.top is not None else MAX_RELATED
    return [represent(nav.target, r, exp.select) for r in chosen[:limit]]


def index_for(exp: Expansion, store: Store) -> dict[Any, list[Row]] | None:
    """Related rows by foreign key, built once per request for a collection expansion."""
    if not exp.nav.many:
        return None
    out: dict[Any, list[Row]] = {}
    for r in store.tables[exp.nav.target.entity_set].rows.values():
        key = r.get(exp.nav.lookup.name)
        if key is not None:
            out.setdefault(key, []).append(r)
    return out


def expand_rows(
    expansions: list[Expansion],
    raw: list[Row],
    shaped: list[Row],
    store: Store,
    prefer: Prefer | None = None,
) -> None:
    """Add each expansion to the shaped rows (same order as ``raw``), in place; the
    related rows get the annotations ``prefer`` asks for, like the top-level ones."""
    for exp in expansions:
        index = index_for(exp, store)
        for source, out in zip(raw, shaped, strict=True):
            value = related(exp, source, store, index)
            if prefer is not None and prefer.annotations:
                if isinstance(value, list):
                    value = [annotate(exp.nav.target, v, prefer, store) for v in value]
                elif value is not None:
                    value = annotate(exp.nav.target, value, prefer, store)
            out[exp.nav.name] = value
