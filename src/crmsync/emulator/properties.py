"""Single-property endpoints: ``GET/PUT/DELETE {set}({id})/{property}`` and ``/$value``.

From ``webapi/retrieve-entity-using-web-api.md`` and ``update-delete-entities-using-web-
api.md``: ``GET`` answers ``{"@odata.context": ".../$metadata#leads(<id>)/lastname",
"value": ...}``, ``/$value`` the raw value as text; ``PUT`` with ``{"value": ...}``
sets one column and ``DELETE`` clears it, both ``204``. Lookups are read this way as
``_x_value`` but changed through ``$ref`` (``refs.py``), so writing one here is refused.
Navigation properties route here too: ``accounts(<id>)/contact_customer_accounts``.
Inferred (undocumented): a null property answers ``204`` to ``GET``, as OData says.
"""

from __future__ import annotations

import json
import re
from typing import Any

from crmsync.emulator import expand, faults, refs
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import LOOKUP, Entity, normalize_guid
from crmsync.emulator.records import Writer
from crmsync.emulator.store import Store


def handle(store: Store, writer: Writer, entity: Entity, key: str, rest: str, call: Call) -> Reply:
    name, _, tail = rest.partition("/")
    member = None
    m = re.fullmatch(r"([A-Za-z_]+)\(([0-9a-fA-F-]{36})\)", name)
    if m is not None and tail == "$ref":  # accounts(<id>)/contact_customer_accounts(<id>)/$ref
        name, member = m.group(1), normalize_guid(m.group(2))
    attr = entity.attributes.get(name)
    nav = expand.navigations(entity).get(name)
    if (attr is None and nav is None) or tail not in ("", "$value", "$ref"):
        raise faults.unknown_segment(name if attr is None and nav is None else tail)
    row = store.get(entity.entity_set, key)
    if row is None:
        raise faults.not_found(entity.logical, key)
    if nav is not None and tail == "$ref":
        return refs.handle(store, writer, nav, row, member, call)
    if nav is not None:
        return _navigation(store, nav, row, tail, call)
    if tail == "$ref":
        raise faults.unknown_segment(tail)
    assert attr is not None
    if call.method == "GET":
        value = row.get(name)
        if value is None:
            return Reply.empty(204, 1)
        if tail == "$value":
            text = str(value).lower() if isinstance(value, bool) else str(value)
            return Reply(
                200, {"Content-Type": "text/plain", "OData-Version": "4.0"}, text.encode(), 1
            )
        context = f"{call.base}$metadata#{entity.entity_set}({key})/{name}"
        return Reply.json(200, {"@odata.context": context, "value": value}, 1)
    if tail:
        raise faults.no_resource(call.base + call.path)
    if call.method not in ("PUT", "DELETE"):
        raise faults.no_resource(call.base + call.path)
    if attr.type == LOOKUP or name == entity.primary_id or not attr.writable:
        raise faults.bad_payload(
            entity.entity_set,
            f"Microsoft.OData.ODataException: the property '{name}' can't be set this way.",
        )
    new_value: Any = None
    if call.method == "PUT":
        try:
            body = json.loads(call.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise faults.bad_payload(
                entity.entity_set, f"Microsoft.OData.ODataException: Invalid JSON. {exc}"
            ) from exc
        if (
            not isinstance(body, dict)
            or set(body) - {"value", "@odata.context"}
            or "value" not in body
        ):
            raise faults.bad_payload(
                entity.entity_set,
                'Microsoft.OData.ODataException: a property update needs {"value": ...}.',
            )
        new_value = body["value"]
    writer.update(entity, row, {name: new_value}, call)
    return Reply.empty(204, 1)


def _navigation(store: Store, nav: expand.Nav, row: dict[str, Any], tail: str, call: Call) -> Reply:
    """``GET accounts(<id>)/contact_customer_accounts`` (or a single-valued property)."""
    if call.method != "GET" or tail:
        raise faults.no_resource(call.base + call.path)
    options = {k: v for k, v in call.query.items()}
    exp = expand.options_for(nav, options)
    context = f"{call.base}$metadata#{nav.target.entity_set}"
    if not nav.many:
        value = expand.related(exp, row, store, None)
        if value is None:
            return Reply.empty(204, 1)
        return Reply.json(200, {"@odata.context": context + "/$entity", **value}, 1)
    rows = expand.rows_of(
        exp, (expand.index_for(exp, store) or {}).get(row[nav.source.primary_id], [])
    )
    return Reply.json(200, {"@odata.context": context, "value": rows}, len(rows))
