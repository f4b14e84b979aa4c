"""``RetrieveMetadataChanges(Query=@p1)`` and ``RetrieveAllEntities``: metadata in one call.

``RetrieveMetadataChanges`` takes an ``EntityQueryExpression`` (the
``retrieve-metadata-changes`` docs): ``Properties.PropertyNames`` picks the entity
properties (``Attributes`` among them to include columns), ``Criteria`` is a
``MetadataFilterExpression`` (``Conditions`` of ``PropertyName`` /
``ConditionOperator`` ``Equals|NotEquals|In|NotIn`` / ``Value``, ``FilterOperator``
``And|Or``), and ``AttributeQuery`` does the same for columns. Each column keeps its
``@odata.type`` and those of the asked-for properties its type has (``MaxLength`` on
strings, ...). The answer carries a ``ServerVersionStamp``; the emulator's metadata
never changes, so a request with that stamp as ``ClientVersionStamp`` gets no entities
(inferred from the "changes since" contract). ``RetrieveAllEntities(EntityFilters=...)``
answers every table, with columns when the filters include ``Attributes`` or ``All``
(names or the flags' integer value, ``EntityFilters=3``); ``RetrieveEntity`` one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.metadata import attribute_row, entity_row
from crmsync.emulator.model import ENTITIES, Entity
from crmsync.numerals import whole

Row = dict[str, Any]
VERSION_STAMP = "1000000!01/01/2026 00:00:00"  # static: the emulator's tables never change


def _arg(call: Call, key: str | None, name: str) -> str | None:
    """A function parameter, inline (``Name=value``) or as an ``@alias``."""
    for part in (key or "").split(","):
        k, sep, v = part.partition("=")
        if sep and k.strip() == name:
            v = v.strip()
            return call.query.get(v) if v.startswith("@") else v
    return None


def _bad(message: str) -> faults.DataverseFault:
    return faults.bad_query(f"Invalid metadata query: {message}")


def _criteria(node: Any) -> Callable[[Row], bool]:
    if node is None:
        return lambda r: True
    if not isinstance(node, dict):
        raise _bad("Criteria must be a MetadataFilterExpression.")
    tests = [_condition(c) for c in node.get("Conditions") or []]
    tests += [_criteria(f) for f in node.get("Filters") or []]
    if node.get("FilterOperator", "And") == "Or":
        return lambda r: any(t(r) for t in tests)
    if node.get("FilterOperator", "And") != "And":
        raise _bad(f"FilterOperator '{node.get('FilterOperator')}' is not And or Or.")
    return lambda r: all(t(r) for t in tests)


def _condition(node: Any) -> Callable[[Row], bool]:
    if not isinstance(node, dict) or not isinstance(node.get("PropertyName"), str):
        raise _bad("each condition needs a PropertyName.")
    name, op = node["PropertyName"], node.get("ConditionOperator", "Equals")
    value = node.get("Value")
    value = value.get("Value") if isinstance(value, dict) else value
    wanted = value if isinstance(value, list) else [value]
    folded = [v.casefold() if isinstance(v, str) else v for v in wanted]

    def has(row: Row) -> bool:
        got = row.get(name)
        if isinstance(got, dict) and "Value" in got:
            got = got["Value"]  # managed properties and enums wrapped as {"Value": ...}
        return (got.casefold() if isinstance(got, str) else got) in folded

    if op in ("Equals", "In"):
        return has
    if op in ("NotEquals", "NotIn"):
        return lambda r: not has(r)
    raise _bad(f"ConditionOperator '{op}' is not supported.")


def _project(row: Row, names: list[str] | None) -> Row:
    if names is None:
        return row
    keep = {"MetadataId", "@odata.type", *names}
    return {k: v for k, v in row.items() if k in keep}


def retrieve_metadata_changes(call: Call, key: str | None) -> Reply:
    text = _arg(call, key, "Query")
    try:
        query = json.loads(text) if text else {}
    except ValueError as exc:
        raise _bad(f"the Query parameter is not JSON ({exc}).") from exc
    if not isinstance(query, dict):
        raise _bad("the Query parameter must be an EntityQueryExpression object.")
    stamp = _arg(call, key, "ClientVersionStamp")
    names = (query.get("Properties") or {}).get("PropertyNames")
    entity_test = _criteria(query.get("Criteria"))
    attr_query = query.get("AttributeQuery") or {}
    attr_names = (attr_query.get("Properties") or {}).get("PropertyNames")
    attr_test = _criteria(attr_query.get("Criteria"))
    out = []
    if stamp is None or stamp.strip("'") != VERSION_STAMP:
        for e in ENTITIES.values():
            row = entity_row(e)
            if not entity_test(row):
                continue
            shaped = _project(row, [n for n in names if n != "Attributes"] if names else None)
            if names is None or "Attributes" in names:
                attrs = [attribute_row(e, a) for a in e.attributes.values()]
                shaped["Attributes"] = [_project(a, attr_names) for a in attrs if attr_test(a)]
            out.append(shaped)
    ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.RetrieveMetadataChangesResponse"
    body = {"@odata.context": ctx, "EntityMetadata": out, "ServerVersionStamp": VERSION_STAMP}
    return Reply.json(200, body)


# The enum's members by value: OData's ABNF takes a member's integer value for its name
# (``enumMemberValue``), and dynamics-client sends ``EntityFilters=1``.
_BITS = {"Entity": 1, "Attributes": 2, "Privileges": 4, "Relationships": 8}
_FLAGS = {"Default": "Entity"}


def _with_attributes(call: Call, key: str | None) -> bool:
    """Whether ``EntityFilters`` asks for columns (``Attributes`` or ``All``)."""
    filters = (_arg(call, key, "EntityFilters") or "").strip()
    if "'" in filters:
        filters = filters.split("'")[1]  # Microsoft.Dynamics.CRM.EntityFilters'Entity,Attributes'
    parts = {_FLAGS.get(p.strip(), p.strip()) for p in filters.split(",") if p.strip()}
    bits = whole(filters)
    if bits is not None and 1 <= bits <= 15:
        parts = {name for name, bit in _BITS.items() if bits & bit}
    known = {"Entity", "Attributes", "Privileges", "Relationships", "All", "Default"}
    if not parts or parts - known:
        raise _bad(f"EntityFilters '{filters}' is not a combination of {sorted(known)}.")
    return bool(parts & {"Attributes", "All"})


def _definition(e: Entity, with_attrs: bool) -> Row:
    row = entity_row(e)
    if with_attrs:
        row["Attributes"] = [attribute_row(e, a) for a in e.attributes.values()]
    return row


def retrieve_all_entities(call: Call, key: str | None) -> Reply:
    with_attrs = _with_attributes(call, key)
    out = [_definition(e, with_attrs) for e in ENTITIES.values()]
    ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.RetrieveAllEntitiesResponse"
    return Reply.json(200, {"@odata.context": ctx, "EntityMetadata": out})


def retrieve_entity(call: Call, key: str | None) -> Reply:
    """``RetrieveEntity(EntityFilters=...,LogicalName='x',MetadataId=<guid>,...)``: one
    table's definition, by ``LogicalName`` or, when that is empty, ``MetadataId`` (the
    message's documented parameters). Inferred: a table not found is the 404 that
    ``EntityDefinitions(LogicalName='x')`` answers."""
    with_attrs = _with_attributes(call, key)
    name = (_arg(call, key, "LogicalName") or "").strip().strip("'").lower()
    metadata_id = (_arg(call, key, "MetadataId") or "").strip().strip("{}").lower()
    for e in ENTITIES.values():
        row = entity_row(e)
        if (name and e.logical == name) or (not name and row["MetadataId"] == metadata_id):
            ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.RetrieveEntityResponse"
            return Reply.json(
                200, {"@odata.context": ctx, "EntityMetadata": _definition(e, with_attrs)}
            )
    wanted = f"LogicalName='{name}'" if name else metadata_id
    raise faults.DataverseFault(404, "0x80040217", f"Could not find entity with key {wanted}.")
