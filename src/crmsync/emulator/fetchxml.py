"""``GET {set}?fetchXml=...``: FetchXML queries, as ``webapi/use-fetchxml-web-api.md`` runs them.

Runs ``attribute``/``all-attributes`` (with ``alias``), ``filter`` (``and``/``or``,
nested) of ``condition`` (operators in ``conditions.operator_test``, ``entityname`` for
a linked table's column), ``order``, ``top``, ``count``/``page`` paging, ``distinct``,
``returntotalrecordcount`` and ``link-entity`` (``inner``/``outer``, nested) on any
column pair (``from`` on the linked table, ``to`` on its parent). Anything else in the
query is refused, never ignored. Documented shapes: rows omit null columns; a linked
column is ``<alias>.<column>``; ``@Microsoft.Dynamics.CRM.morerecords`` and
``...fetchxmlpagingcookie`` come when ``Prefer: odata.include-annotations`` asks.
The XML is parsed with the stdlib after refusing any DTD, so no entity is ever expanded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # DTDs are refused before parsing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from crmsync.emulator import faults
from crmsync.emulator.annotations import annotate
from crmsync.emulator.conditions import coerce, column, invalid, logical_name, operator_test
from crmsync.emulator.http import Call, Reply, etag
from crmsync.emulator.model import BY_LOGICAL, MULTISELECT, Attribute, Entity
from crmsync.emulator.odata import Prefer, sort_key
from crmsync.emulator.store import Store
from crmsync.numerals import whole

MAX_PAGE = 5000
_DTD_RE = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
Row = dict[str, Any]
Combo = dict[str, Row | None]  # alias ("" for the root) -> row, None for an outer miss
_FETCH_ATTRS = {
    "version", "output-format", "mapping", "distinct", "no-lock", "count", "page",
    "paging-cookie", "top", "returntotalrecordcount", "aggregate", "latematerialize",
}  # fmt: skip
_OPERATORS = {
    "eq", "ne", "neq", "lt", "le", "gt", "ge", "like", "not-like", "null", "not-null",
    "in", "not-in", "begins-with", "not-begin-with", "ends-with", "not-end-with",
    "contain-values", "not-contain-values",
}  # fmt: skip
_MANY = ("in", "not-in", "contain-values", "not-contain-values")  # take several values


@dataclass
class Link:
    entity: Entity
    alias: str
    parent: str  # alias of the table it joins to
    from_attr: Attribute  # on this (linked) table
    to_attr: Attribute  # on the parent table
    outer: bool
    columns: list[tuple[Attribute, str]] = field(default_factory=list)
    where: Callable[[Combo], bool] | None = None


@dataclass
class Fetch:
    entity: Entity
    columns: list[tuple[Attribute, str]] | None  # None: all columns
    links: list[Link] = field(default_factory=list)
    where: Callable[[Combo], bool] | None = None
    orders: list[tuple[str, str, bool]] = field(default_factory=list)  # alias, column, desc
    top: int | None = None
    count: int | None = None
    page: int = 1
    distinct: bool = False
    total: bool = False


def no_attribute(entity: Entity, name: str) -> faults.DataverseFault:
    # QueryBuilderNoAttribute (0x80041103), message as Dataverse words it (from
    # observed responses; the reference does not list it).
    return faults.DataverseFault(
        400,
        "0x80041103",
        f"'{entity.logical}' entity doesn't contain attribute with Name = '{name}' and "
        "NameMapping = 'Logical'.",
    )


def no_entity(name: str) -> faults.DataverseFault:
    # QueryBuilderNoEntity (0x80041102), observed wording.
    return faults.DataverseFault(
        400,
        "0x80041102",
        f"The entity with a name = '{name}' with namemapping = 'Logical' was not found in "
        "the MetadataCache.",
    )


def parse(text: str, entity: Entity) -> Fetch:
    """Validate FetchXML against the entity set it was sent to; raise Dataverse faults."""
    # A DOCTYPE is the only way to declare entities (internal or external); without one
    # expat expands nothing but the five predefined ones. Comments and CDATA are fine.
    if _DTD_RE.search(text):
        raise invalid("The FetchXML contains a DTD or entity declaration, which is not allowed.")
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DTD can reach here
    except ET.ParseError as exc:
        raise invalid(f"Invalid XML in fetchXml: {exc}.") from exc
    if root.tag != "fetch":
        raise invalid(f"The root element of a FetchXML query must be 'fetch', not '{root.tag}'.")
    _known_attrs(root, _FETCH_ATTRS)
    if root.get("aggregate", "false").lower() == "true":
        raise invalid("The emulator does not run aggregate FetchXML queries.")
    entities = [c for c in root if c.tag == "entity"]
    if len(entities) != 1 or len(root) != 1:
        raise invalid("A FetchXML query needs exactly one 'entity' element inside 'fetch'.")
    node = entities[0]
    _known_attrs(node, {"name"})
    name = node.get("name", "")
    if BY_LOGICAL.get(name) is not entity:
        if name not in BY_LOGICAL:
            raise no_entity(name)
        raise invalid(
            f"The FetchXML entity '{name}' does not match the entity set '{entity.entity_set}'."
        )
    fetch = Fetch(entity, None)
    fetch.top = _int(root, "top", 0)
    fetch.count = _int(root, "count", 1)
    fetch.page = _int(root, "page", 1) or 1
    fetch.distinct = root.get("distinct", "false").lower() == "true"
    fetch.total = root.get("returntotalrecordcount", "false").lower() == "true"
    if fetch.top is not None and (fetch.count is not None or "page" in root.attrib):
        raise invalid("The 'top' attribute can't be used with the 'count' or 'page' attributes.")
    aliases: dict[str, Entity] = {"": entity}
    fetch.columns, fetch.where = _body(node, entity, "", fetch, aliases, root=True)
    return fetch


def _body(
    node: ET.Element, entity: Entity, alias: str, fetch: Fetch, aliases: dict[str, Entity], *,
    root: bool,
) -> tuple[list[tuple[Attribute, str]] | None, Callable[[Combo], bool] | None]:  # fmt: skip
    columns: list[tuple[Attribute, str]] | None = []
    wheres: list[Callable[[Combo], bool]] = []
    for child in node:
        if child.tag == "attribute":
            _known_attrs(child, {"name", "alias"})
            attr = _column(entity, child.get("name", ""))
            if columns is not None:
                columns.append((attr, child.get("alias") or ""))
        elif child.tag == "all-attributes":
            columns = None
        elif child.tag == "filter":
            wheres.append(_filter(child, alias, aliases, allow_entityname=root))
        elif child.tag == "order":
            _known_attrs(child, {"attribute", "descending"})
            attr = _column(entity, child.get("attribute", ""))
            desc = child.get("descending", "false").lower() == "true"
            fetch.orders.append((alias, attr.name, desc))
        elif child.tag == "link-entity":
            fetch.links.append(_link(child, alias, entity, fetch, aliases))
        else:
            raise invalid(f"The element '{child.tag}' is not supported in a FetchXML query.")
    where = None
    if wheres:
        where = wheres[0] if len(wheres) == 1 else (lambda c: all(w(c) for w in wheres))
    if root and columns == []:
        columns = None  # no attribute element: every column (select-columns.md)
    return columns, where


def _link(
    node: ET.Element, parent: str, parent_entity: Entity, fetch: Fetch,
    aliases: dict[str, Entity],
) -> Link:  # fmt: skip
    _known_attrs(node, {"name", "from", "to", "link-type", "alias", "intersect", "visible"})
    name = node.get("name", "")
    linked = BY_LOGICAL.get(name)
    if linked is None:
        raise no_entity(name)
    kind = node.get("link-type", "inner")
    if kind not in ("inner", "outer"):
        raise invalid(f"The emulator runs link-type 'inner' and 'outer' only, not '{kind}'.")
    if not node.get("from") or not node.get("to"):
        raise invalid("A link-entity needs both 'from' and 'to' attributes in the emulator.")
    # Without an alias Dataverse names the join <table><n> (observed: "account1").
    alias = node.get("alias") or f"{name}{len(fetch.links) + 1}"
    if alias in aliases:
        raise invalid(f"The link-entity alias '{alias}' is used twice.")
    aliases[alias] = linked
    link = Link(
        linked, alias, parent, _column(linked, node.get("from", "")),
        _column(parent_entity, node.get("to", "")), kind == "outer",
    )  # fmt: skip
    columns, link.where = _body(node, linked, alias, fetch, aliases, root=False)
    link.columns = columns if columns is not None else [(a, "") for a in linked.attributes.values()]
    return link


def _filter(
    node: ET.Element, alias: str, aliases: dict[str, Entity], *, allow_entityname: bool
) -> Callable[[Combo], bool]:
    _known_attrs(node, {"type"})
    kind = node.get("type", "and")
    if kind not in ("and", "or"):
        raise invalid(f"The filter type '{kind}' is not valid: use 'and' or 'or'.")
    parts: list[Callable[[Combo], bool]] = []
    for child in node:
        if child.tag == "filter":
            parts.append(_filter(child, alias, aliases, allow_entityname=allow_entityname))
        elif child.tag == "condition":
            parts.append(_condition(child, alias, aliases, allow_entityname=allow_entityname))
        else:
            raise invalid(f"The element '{child.tag}' is not valid inside a FetchXML filter.")
    if kind == "or":
        return lambda c: any(p(c) for p in parts)
    return lambda c: all(p(c) for p in parts)


def _condition(
    node: ET.Element, alias: str, aliases: dict[str, Entity], *, allow_entityname: bool
) -> Callable[[Combo], bool]:
    _known_attrs(node, {"attribute", "operator", "value", "entityname"})
    target = node.get("entityname")
    if target is not None:
        if not allow_entityname or target not in aliases:
            raise invalid(f"The condition's entityname '{target}' is not a link-entity alias.")
        alias = target
    entity = aliases[alias]
    attr = _column(entity, node.get("attribute", ""))
    op = node.get("operator", "")
    if op not in _OPERATORS:
        raise invalid(f"The condition operator '{op}' is not supported.")
    raw = [v.text or "" for v in node if v.tag == "value"]
    if any(c.tag != "value" for c in node):
        raise invalid("A FetchXML condition may contain only 'value' elements.")
    if "value" in node.attrib:
        raw = [node.get("value", ""), *raw]
    if op in ("null", "not-null"):
        if raw:
            raise invalid(f"The condition operator '{op}' takes no value.")
    elif not raw or (op not in _MANY and len(raw) != 1):
        raise invalid(f"The condition operator '{op}' on '{logical_name(attr)}' needs a value.")
    if op.endswith("contain-values") and attr.type != MULTISELECT:
        # (inferred) wording: multi-select-picklist.md documents them for choices only.
        raise invalid(f"The condition operator '{op}' needs a choices column.")
    # Pattern operators take text as written; the others compare typed values.
    textual = op.endswith(("like", "-with"))
    values = raw if textual else [coerce(entity, attr, v) for v in raw]
    check = operator_test(op, values)
    name = attr.name

    def test(combo: Combo) -> bool:
        row = combo.get(alias)
        return check(None if row is None else row.get(name))

    return test


def _column(entity: Entity, name: str) -> Attribute:
    attr = column(entity, name)
    if attr is None:
        raise no_attribute(entity, name)
    return attr


def _int(node: ET.Element, name: str, minimum: int) -> int | None:
    text = node.get(name)
    if text is None:
        return None
    # Dataverse's Fetch.xsd types count, page and top as xs:integer, whose lexical space
    # is an optional sign and digits after whitespace collapse (XML Schema Part 2,
    # 3.3.13 and 4.3.6): " 5" and "+5" are 5, as the schema-validated query reads them.
    collapsed = text.strip(" \t\r\n")
    plus = collapsed.startswith("+")  # then no second sign: "+-5" is not an integer
    value = whole(collapsed[1:] if plus else collapsed, signed=not plus)
    if value is None:
        raise invalid(f"The fetch attribute '{name}' must be an integer, not '{text}'.")
    if value < minimum:
        raise invalid(f"The fetch attribute '{name}' must be at least {minimum}.")
    return min(value, MAX_PAGE) if name in ("top", "count") else value


def _known_attrs(node: ET.Element, allowed: set[str]) -> None:
    for name in node.attrib:
        if name not in allowed:
            raise invalid(f"The attribute '{name}' is not supported on the '{node.tag}' element.")


# -- running ---------------------------------------------------------------------------


def run(fetch: Fetch, store: Store, call: Call, prefer: Prefer) -> Reply:
    """Join, filter, order, page and shape rows the way the Web API returns FetchXML."""
    entity = fetch.entity
    combos: list[Combo] = [{"": r} for r in store.tables[entity.entity_set].rows.values()]
    for link in fetch.links:
        combos = _join(combos, link, store)
    if fetch.where is not None:
        combos = [c for c in combos if fetch.where(c)]
    combos.sort(key=lambda c: _root(c)[entity.primary_id])
    for alias, name, desc in reversed(fetch.orders):
        combos.sort(key=_order_key(alias, name, desc))  # stable: earlier orders win
    rows = [annotate(entity, _shape(fetch, c), prefer, store) for c in combos]
    if fetch.distinct:
        seen: set[str] = set()
        unique = []
        for row in rows:
            marker = repr(sorted((k, repr(v)) for k, v in row.items() if k != "@odata.etag"))
            if marker not in seen:
                seen.add(marker)
                unique.append(row)
        rows = unique
    total = len(rows)
    size = fetch.top if fetch.top is not None else (fetch.count or MAX_PAGE)
    offset = 0 if fetch.top is not None else (fetch.page - 1) * size
    chunk = rows[offset : offset + size]
    more = fetch.top is None and offset + size < total
    payload: dict[str, Any] = {"@odata.context": f"{call.base}$metadata#{entity.entity_set}"}
    annotations = prefer.wants
    if fetch.total and annotations("Microsoft.Dynamics.CRM.totalrecordcount"):
        payload["@Microsoft.Dynamics.CRM.totalrecordcount"] = min(total, MAX_PAGE)
        payload["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = total > MAX_PAGE
    if annotations("Microsoft.Dynamics.CRM.fetchxmlpagingcookie") and more and chunk:
        payload["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"] = _cookie(entity, chunk, fetch.page)
    if annotations("Microsoft.Dynamics.CRM.morerecords"):
        payload["@Microsoft.Dynamics.CRM.morerecords"] = more
    payload["value"] = chunk
    return Reply.json(200, payload, len(chunk))


def _join(combos: list[Combo], link: Link, store: Store) -> list[Combo]:
    index: dict[Any, list[Row]] = {}
    for row in store.tables[link.entity.entity_set].rows.values():
        key = row.get(link.from_attr.name)
        if key is not None and (link.where is None or link.where({link.alias: row})):
            index.setdefault(key, []).append(row)
    out: list[Combo] = []
    for combo in combos:
        parent = combo.get(link.parent)
        matches = index.get(parent.get(link.to_attr.name)) if parent is not None else None
        if matches:
            out.extend({**combo, link.alias: m} for m in matches)
        elif link.outer:
            out.append({**combo, link.alias: None})
    return out


def _order_key(alias: str, name: str, desc: bool) -> Callable[[Combo], Any]:
    key = sort_key([(name, desc)], "_")

    def of(combo: Combo) -> Any:
        row = combo.get(alias) or {}
        return key({name: row.get(name), "_": 0})

    return of


def _root(combo: Combo) -> Row:
    row = combo[""]
    assert row is not None  # the root table is never outer-joined
    return row


def _shape(fetch: Fetch, combo: Combo) -> Row:
    root = _root(combo)
    entity = fetch.entity
    out: Row = {"@odata.etag": etag(root)}
    columns = fetch.columns
    if columns is None:
        columns = [(a, "") for a in entity.attributes.values()]
    for attr, alias in columns:
        if root.get(attr.name) is not None:
            out[alias or attr.name] = root[attr.name]
    if not fetch.distinct:
        out[entity.primary_id] = root[entity.primary_id]
    for link in fetch.links:
        row = combo.get(link.alias)
        if row is None:
            continue
        for attr, alias in link.columns:
            if row.get(attr.name) is not None:
                out[alias or f"{link.alias}.{logical_name(attr)}"] = row[attr.name]
    return out


def _cookie(entity: Entity, chunk: list[Row], page: int) -> str:
    # The shape Dataverse returns (fetchxml/page-results.md): the inner cookie is
    # URL-encoded twice. The emulator pages by page number; the cookie is advisory.
    pk = entity.primary_id
    first, last = chunk[0].get(pk, ""), chunk[-1].get(pk, "")
    inner = f'<cookie page="{page}"><{pk} last="{{{last}}}" first="{{{first}}}" /></cookie>'
    # Lower-case escapes as in the docs' example ("%253ccookie%2520page...").
    once = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(inner, safe=""))
    encoded = quote(once, safe="")
    return f'<cookie pagenumber="{page + 1}" pagingcookie="{encoded}" istracking="False" />'
