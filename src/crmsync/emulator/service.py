"""The service root: the service document, the ``$metadata`` CSDL and service-level
functions (``RetrieveTotalRecordCount``).

The service document is ``GET /api/data/v9.2/`` (``webapi/query-data-web-api.md``:
``{"@odata.context": ".../$metadata", "value": [{"name", "kind": "EntitySet", "url"}]}``).
``$metadata`` is OData CSDL XML for the emulated tables: types, keys, lookups as
``_x_value`` properties with their single-valued navigation properties (and the
collection-valued partners on the target), the entity container and ``WhoAmI``. With
``?annotations=true`` each entity set carries ``Org.OData.Capabilities.V1.ChangeTracking``
(``use-change-tracking-synchronize-data-external-systems.md``).
"""

from __future__ import annotations

import json
import re
from xml.sax.saxutils import quoteattr

from crmsync.emulator import faults
from crmsync.emulator.conditions import logical_name
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import (
    BIGINT,
    BOOLEAN,
    BY_LOGICAL,
    DATETIME,
    DECIMAL,
    ENTITIES,
    GUID,
    INTEGER,
    LOOKUP,
    MEMO,
    MONEY,
    MULTISELECT,
    PICKLIST,
    STRING,
    Attribute,
    Entity,
)
from crmsync.emulator.relationships import relationship_name
from crmsync.emulator.store import Store

_EDM = {
    STRING: "Edm.String", MEMO: "Edm.String", GUID: "Edm.Guid", BOOLEAN: "Edm.Boolean",
    PICKLIST: "Edm.Int32", DATETIME: "Edm.DateTimeOffset", BIGINT: "Edm.Int64",
    LOOKUP: "Edm.Guid", INTEGER: "Edm.Int32", DECIMAL: "Edm.Decimal", MONEY: "Edm.Decimal",
    MULTISELECT: "Edm.String",
}  # fmt: skip


def edm_type(attr: Attribute) -> str:
    return "Edm.Date" if attr.date_only else _EDM[attr.type]


def service_document(call: Call) -> Reply:
    sets = [*ENTITIES, "EntityDefinitions"]
    value = [{"name": name, "kind": "EntitySet", "url": name} for name in sets]
    return Reply.json(200, {"@odata.context": f"{call.base}$metadata", "value": value})


def _lookups(e: Entity) -> list[tuple[Attribute, Entity, str, str]]:
    """(attribute, target, relationship, navigation) for each lookup of ``e``."""
    out = []
    for attr in e.attributes.values():
        if attr.type == LOOKUP and attr.target:
            name = logical_name(attr)
            relation = relationship_name(e.logical, name)
            out.append((attr, ENTITIES[attr.target], relation, attr.navigation or name))
    return out


def csdl(call: Call) -> Reply:
    a = quoteattr
    partners: dict[str, list[str]] = {}
    for e in ENTITIES.values():
        for _attr, target, relation, nav in _lookups(e):
            partners.setdefault(target.logical, []).append(
                f'<NavigationProperty Name={a(relation)} Type="Collection(mscrm.{e.logical})" '
                f"Partner={a(nav)}/>"
            )
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
        "<edmx:DataServices>",
        '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" '
        'xmlns="http://docs.oasis-open.org/odata/ns/edm">',
        '<EntityType Name="crmbaseentity" Abstract="true"/>',
    ]
    for e in ENTITIES.values():
        out.append(f'<EntityType Name={a(e.logical)} BaseType="mscrm.crmbaseentity">')
        out.append(f"<Key><PropertyRef Name={a(e.primary_id)}/></Key>")
        for attr in e.attributes.values():
            extra = f' MaxLength="{attr.max_length}"' if attr.max_length else ""
            out.append(f"<Property Name={a(attr.name)} Type={a(edm_type(attr))}{extra}/>")
        for attr, target, relation, nav in _lookups(e):
            out.append(
                f'<NavigationProperty Name={a(nav)} Type="mscrm.{target.logical}" '
                f"Partner={a(relation)}><ReferentialConstraint Property={a(attr.name)} "
                f"ReferencedProperty={a(target.primary_id)}/></NavigationProperty>"
            )
        out.extend(partners.get(e.logical, []))
        out.append("</EntityType>")
    out += [
        '<ComplexType Name="WhoAmIResponse"><Property Name="BusinessUnitId" Type="Edm.Guid" '
        'Nullable="false"/><Property Name="UserId" Type="Edm.Guid" Nullable="false"/>'
        '<Property Name="OrganizationId" Type="Edm.Guid" Nullable="false"/></ComplexType>',
        '<Function Name="WhoAmI"><ReturnType Type="mscrm.WhoAmIResponse" Nullable="false"/>'
        "</Function>",
        '<EntityContainer Name="System">',
    ]
    for e in ENTITIES.values():
        out.append(
            f'<EntitySet Name={a(e.entity_set)} EntityType="Microsoft.Dynamics.CRM.{e.logical}">'
        )
        for _attr, target, _relation, nav in _lookups(e):
            out.append(f"<NavigationPropertyBinding Path={a(nav)} Target={a(target.entity_set)}/>")
        out.append("</EntitySet>")
    out.append('<FunctionImport Name="WhoAmI" Function="Microsoft.Dynamics.CRM.WhoAmI"/>')
    out.append("</EntityContainer>")
    if call.query.get("annotations", "").lower() == "true":
        for e in ENTITIES.values():
            out.append(
                f'<Annotations Target="Microsoft.Dynamics.CRM.System/{e.entity_set}">'
                '<Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record>'
                '<PropertyValue Property="Supported" Bool="true"/></Record></Annotation>'
                "</Annotations>"
            )
    out += ["</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    head = {"Content-Type": "application/xml", "OData-Version": "4.0"}
    return Reply(200, head, "\n".join(out).encode())


def total_record_count(call: Call, key: str | None, store: Store) -> Reply:
    """``RetrieveTotalRecordCount(EntityNames=@p1)?@p1=["lead"]``: counts per table.

    Dataverse answers from a snapshot refreshed periodically (the function's reference
    page); the emulator's counts are live.
    """
    text = (key or "").strip()
    m = re.fullmatch(r"EntityNames=(.*)", text)
    if m is None:
        raise faults.bad_query("RetrieveTotalRecordCount needs the EntityNames parameter.")
    value = m.group(1).strip()
    if value.startswith("@"):
        value = call.query.get(value, "")
    try:
        names = json.loads(value.replace("'", '"'))
    except ValueError as exc:
        raise faults.bad_query(f"Invalid EntityNames value '{value}'.") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise faults.bad_query(f"Invalid EntityNames value '{value}'.")
    counts = []
    for name in names:
        entity = BY_LOGICAL.get(name.lower())
        if entity is None:
            raise faults.DataverseFault(
                404, "0x80040217", f"Could not find entity with name {name}."
            )  # (inferred) wording
        counts.append(store.count(entity.entity_set))
    ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.RetrieveTotalRecordCountResponse"
    collection = {"Count": len(names), "IsReadOnly": False, "Keys": names, "Values": counts}
    return Reply.json(200, {"@odata.context": ctx, "EntityRecordCountCollection": collection})
