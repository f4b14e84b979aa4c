"""``EntityDefinitions``: table, column, key and relationship definitions, as Dataverse
returns them (``webapi/query-metadata-web-api.md``, ``entitymetadata`` and
``attributemetadata`` reference pages).

Routes: ``EntityDefinitions``, ``EntityDefinitions(LogicalName='x')`` or ``(<MetadataId>)``,
then ``/Attributes`` (optionally cast, ``/Microsoft.Dynamics.CRM.PicklistAttributeMetadata``),
``/Attributes(LogicalName='y')``, ``/Keys``, ``/ManyToOneRelationships``,
``/OneToManyRelationships``, ``/ManyToManyRelationships``; each honours ``$select``,
``$filter`` and ``$expand`` (``metaquery``). Lookups are listed under their logical name
(``parentcustomerid``) with ``Targets``, as in Dataverse, not as ``_x_value``. The
``Keys`` lists the alternate keys the emulator's config declares (``keys.py``).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from crmsync.emulator import faults, keys, metaquery
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
from crmsync.emulator.relationships import relationships

Row = dict[str, Any]
LANGUAGE = 1033
_PLURALS = {"opportunity": "Opportunities", "systemuser": "Users", "asyncoperation": "System Jobs"}
_DISPLAY = {
    "systemuser": "User",
    "asyncoperation": "System Job",
    "new_synctomkto": "Sync to Marketo",
    "sample_outdooractivities": "Outdoor activities",
}
_TYPE_NAMES = {
    STRING: ("StringAttributeMetadata", "StringType"),
    MEMO: ("MemoAttributeMetadata", "MemoType"),
    GUID: ("UniqueIdentifierAttributeMetadata", "UniqueidentifierType"),
    BOOLEAN: ("BooleanAttributeMetadata", "BooleanType"),
    PICKLIST: ("PicklistAttributeMetadata", "PicklistType"),
    DATETIME: ("DateTimeAttributeMetadata", "DateTimeType"),
    BIGINT: ("BigIntAttributeMetadata", "BigIntType"),
    LOOKUP: ("LookupAttributeMetadata", "LookupType"),
    INTEGER: ("IntegerAttributeMetadata", "IntegerType"),
    DECIMAL: ("DecimalAttributeMetadata", "DecimalType"),
    MONEY: ("MoneyAttributeMetadata", "MoneyType"),
    MULTISELECT: ("MultiSelectPicklistAttributeMetadata", "MultiSelectPicklistType"),
}
# Casts Dataverse accepts on Attributes; the emulated tables have no column of the
# types not in _TYPE_NAMES, so those casts answer an empty collection.
_OTHER_CASTS = {
    "DoubleAttributeMetadata",
    "StateAttributeMetadata",
    "StatusAttributeMetadata",
    "EntityNameAttributeMetadata",
    "ImageAttributeMetadata",
    "FileAttributeMetadata",
    "ManagedPropertyAttributeMetadata",
    "EnumAttributeMetadata",
}
# Navigation properties of the nested shapes: OptionSet of choice and yes/no columns.
_OPTIONSET_PROPS = {
    "MetadataId",
    "Name",
    "OptionSetType",
    "IsGlobal",
    "Options",
    "TrueOption",
    "FalseOption",
}
_RELATIONSHIP_PROPS = {
    "MetadataId",
    "SchemaName",
    "RelationshipType",
    "ReferencedEntity",
    "ReferencedAttribute",
    "ReferencingEntity",
    "ReferencingAttribute",
    "ReferencedEntityNavigationPropertyName",
    "ReferencingEntityNavigationPropertyName",
    "IsCustomRelationship",
    "IsManaged",
}
_KEY_PROPS = {"MetadataId", "LogicalName", "SchemaName", "KeyAttributes", "EntityLogicalName"}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator/" + "/".join(parts)))


def label(text: str, *parts: str) -> Row:
    one = {
        "Label": text,
        "LanguageCode": LANGUAGE,
        "IsManaged": True,
        "MetadataId": _id("label", *parts),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [one], "UserLocalizedLabel": one}


def _managed(value: bool, name: str) -> Row:
    return {"Value": value, "CanBeChanged": False, "ManagedPropertyLogicalName": name}


def entity_row(e: Entity) -> Row:
    """The full ``EntityMetadata`` row (properties only; navigations come by $expand)."""
    display = _DISPLAY.get(e.logical, e.schema)
    plural = _PLURALS.get(e.logical, display + "s")
    business = e.logical not in ("systemuser", "asyncoperation")
    return {
        "MetadataId": _id(e.logical),
        "LogicalName": e.logical,
        "SchemaName": e.schema,
        "EntitySetName": e.entity_set,
        "LogicalCollectionName": e.entity_set,
        "CollectionSchemaName": plural.replace(" ", ""),
        "DisplayName": label(display, e.logical, "display"),
        "DisplayCollectionName": label(plural, e.logical, "collection"),
        "Description": label(f"{display} records synchronised by crmsync.", e.logical, "desc"),
        "PrimaryIdAttribute": e.primary_id,
        "PrimaryNameAttribute": e.primary_name,
        "PrimaryImageAttribute": None,
        "ObjectTypeCode": e.otc,
        "OwnershipType": "BusinessOwned" if e.logical == "systemuser" else "UserOwned",
        "IsActivity": False,
        "HasActivities": business,
        "HasNotes": business,
        "IsCustomEntity": False,
        "IsPrivate": False,
        "IsIntersect": False,
        "IsManaged": True,
        "IsValidForAdvancedFind": True,
        "TableType": "Standard",
        "ChangeTrackingEnabled": True,
        "CanChangeTrackingBeEnabled": _managed(True, "canchangetrackingbeenabled"),
        "IsOptimisticConcurrencyEnabled": True,
        "IsAuditEnabled": _managed(False, "canmodifyauditsettings"),
    }


# Schema names of the standard columns (their table reference pages).
_SCHEMA = {
    "emailaddress1": "EMailAddress1", "firstname": "FirstName", "lastname": "LastName",
    "fullname": "FullName", "companyname": "CompanyName", "subject": "Subject",
    "leadqualitycode": "LeadQualityCode", "parentcustomerid": "ParentCustomerId",
    "name": "Name", "accountnumber": "AccountNumber", "telephone1": "Telephone1",
    "parentaccountid": "ParentAccountId", "applicationid": "ApplicationId",
    "internalemailaddress": "InternalEMailAddress", "createdon": "CreatedOn",
    "modifiedon": "ModifiedOn", "createdby": "CreatedBy", "modifiedby": "ModifiedBy",
    "versionnumber": "VersionNumber", "operationtype": "OperationType",
    "statecode": "StateCode", "statuscode": "StatusCode", "message": "Message",
    "completedon": "CompletedOn", "sample_outdooractivities": "sample_OutdoorActivities",
}  # fmt: skip


def _schema_name(e: Entity, attr: Attribute) -> str:
    name = logical_name(attr)
    if name == e.primary_id:
        return f"{e.schema}Id"
    return _SCHEMA.get(name, name)


def attribute_row(e: Entity, attr: Attribute) -> Row:
    name = logical_name(attr)
    cast, type_name = _TYPE_NAMES[attr.type]
    kind = attr.type
    targets = [ENTITIES[attr.target].logical] if attr.target else []
    if name == "parentcustomerid":
        kind, cast, type_name = "Customer", "LookupAttributeMetadata", "CustomerType"
    if kind == MULTISELECT:
        kind = "Virtual"  # AttributeTypeCode of choices columns; the type name says which
    required = "SystemRequired" if name == e.primary_id else "None"
    if name == "lastname" and e.logical in ("lead", "contact"):
        required = "ApplicationRequired"
    row: Row = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{cast}",
        "MetadataId": _id(e.logical, name),
        "LogicalName": name,
        "SchemaName": _schema_name(e, attr),
        "EntityLogicalName": e.logical,
        "AttributeType": kind,
        "AttributeTypeName": {"Value": type_name},
        "DisplayName": label(_DISPLAY.get(name, _schema_name(e, attr)), e.logical, name),
        "IsPrimaryId": name == e.primary_id,
        "IsPrimaryName": name == e.primary_name,
        "IsCustomAttribute": name.startswith(("new_", "sample_")),
        "IsValidForCreate": attr.writable,
        "IsValidForUpdate": attr.writable and name != e.primary_id,
        "IsValidForRead": True,
        "RequiredLevel": _managed(required == "SystemRequired", "canmodifyrequirementlevelsettings")
        | {"Value": required},
        "AttributeOf": None,
    }
    if kind in (STRING, MEMO):
        row["MaxLength"] = attr.max_length
        row["Format"] = "Email" if name.startswith(("emailaddress", "internalemail")) else "Text"
        row["FormatName"] = {"Value": row["Format"]}
    if kind == BIGINT:
        row["MinValue"], row["MaxValue"] = -(2**63), 2**63 - 1
    if attr.type == LOOKUP:
        row["Targets"] = targets
    if kind in (INTEGER, DECIMAL, MONEY):
        row["MinValue"], row["MaxValue"] = attr.min_value, attr.max_value
        row["Format"] = "None"
    if kind in (DECIMAL, MONEY):
        row["Precision"] = attr.precision
    if kind == DATETIME:
        row["Format"] = "DateOnly" if attr.date_only else "DateAndTime"
        row["DateTimeBehavior"] = {"Value": "DateOnly" if attr.date_only else "UserLocal"}
    return row


def option_set(e: Entity, attr: Attribute) -> Row | None:
    name = logical_name(attr)
    base = {
        "MetadataId": _id(e.logical, name, "optionset"),
        "Name": f"{e.logical}_{name}",
        "IsGlobal": False,
    }
    if attr.type in (PICKLIST, MULTISELECT):
        options = [
            {"Value": v, "Label": label(text, e.logical, name, str(v))} for v, text in attr.options
        ]
        return base | {"OptionSetType": "Picklist", "Options": options}
    if attr.type == BOOLEAN:
        yes = {"Value": 1, "Label": label("Yes", e.logical, name, "1")}
        no = {"Value": 0, "Label": label("No", e.logical, name, "0")}
        return base | {"OptionSetType": "Boolean", "TrueOption": yes, "FalseOption": no}
    return None


# -- the query surface ------------------------------------------------------------------

# Every property an attribute row may have: those of the emulated columns, and of one
# column of each type a mapping may add (serve_mapping adds them after import).
_ATTR_PROPS: set[str] = set().union(
    *(attribute_row(e, a) for e in ENTITIES.values() for a in e.attributes.values()),
    *(
        attribute_row(next(iter(ENTITIES.values())), Attribute("x", kind))
        for kind in (INTEGER, DECIMAL, MONEY)
    ),
)
# name -> (type name, its plain properties, its navigations), for metaquery.parse.
NavSpec = dict[str, tuple[str, set[str], dict[str, Any]]]
_ATTR_NAVS: NavSpec = {
    "OptionSet": ("OptionSetMetadata", _OPTIONSET_PROPS, {}),
    # The emulated choices are all local to their column: no global choice (null).
    "GlobalOptionSet": ("OptionSetMetadata", _OPTIONSET_PROPS, {}),
}
_ENTITY_NAVS: NavSpec = {
    "Attributes": ("AttributeMetadata", _ATTR_PROPS, _ATTR_NAVS),
    "Keys": ("EntityKeyMetadata", _KEY_PROPS, {}),
    "ManyToOneRelationships": ("OneToManyRelationshipMetadata", _RELATIONSHIP_PROPS, {}),
    "OneToManyRelationships": ("OneToManyRelationshipMetadata", _RELATIONSHIP_PROPS, {}),
    "ManyToManyRelationships": ("ManyToManyRelationshipMetadata", {"MetadataId", "SchemaName"}, {}),
}
_ENTITY_PROPS = set(entity_row(next(iter(ENTITIES.values()))))


def _attributes(row: Row) -> list[Row]:
    e = BY_LOGICAL[row["LogicalName"]]
    return [attribute_row(e, a) for a in e.attributes.values()]


def _expanders(declared: dict[str, list[list[str]]]) -> dict[str, metaquery.Navigation]:
    def optionset(row: Row) -> Row | None:
        e = BY_LOGICAL[row["EntityLogicalName"]]
        attr = next(a for a in e.attributes.values() if logical_name(a) == row["LogicalName"])
        return option_set(e, attr)

    return {
        "Attributes": _attributes,
        "Keys": lambda row: keys.metadata_rows(BY_LOGICAL[row["LogicalName"]], declared),
        "ManyToOneRelationships": lambda row: relationships(
            BY_LOGICAL[row["LogicalName"]], "ManyToOne"
        ),
        "OneToManyRelationships": lambda row: relationships(
            BY_LOGICAL[row["LogicalName"]], "OneToMany"
        ),
        "ManyToManyRelationships": lambda row: [],
        "OptionSet": optionset,
        "GlobalOptionSet": lambda row: None,
    }


def handle(
    call: Call, key: str | None, rest: str | None, declared: dict[str, list[list[str]]]
) -> Reply:
    if call.method != "GET":
        raise faults.no_resource(call.base + call.path)
    ctx = f"{call.base}$metadata#EntityDefinitions"
    expanders = _expanders(declared)
    if key is None:
        if rest:
            raise faults.unknown_segment(rest.split("/")[0])
        opts = metaquery.parse(call.query, "EntityMetadata", _ENTITY_PROPS, _ENTITY_NAVS)
        rows = metaquery.apply([entity_row(e) for e in ENTITIES.values()], opts, expanders)
        return Reply.json(200, {"@odata.context": ctx + _select_ctx(opts), "value": rows})
    entity = _find(key)
    if not rest:
        opts = metaquery.parse(call.query, "EntityMetadata", _ENTITY_PROPS, _ENTITY_NAVS)
        body = metaquery.shape(entity_row(entity), opts, expanders)
        return Reply.json(200, {"@odata.context": f"{ctx}{_select_ctx(opts)}/$entity", **body})
    segments = rest.split("/")
    m = re.fullmatch(r"Attributes\((?:LogicalName=)?'?([^')]*)'?\)", segments[0])
    if m:
        return _one_attribute(call, entity, m.group(1), segments[1:], ctx, expanders)
    nav = segments[0]
    if nav not in _ENTITY_NAVS:
        raise faults.unknown_segment(nav)
    type_name, props, navs = _ENTITY_NAVS[nav]
    rows = expanders[nav](entity_row(entity))
    if len(segments) == 2 and nav == "Attributes":
        cast = _cast(segments[1])
        rows = [r for r in rows if r["@odata.type"] == f"#Microsoft.Dynamics.CRM.{cast}"]
        type_name = cast
    elif len(segments) > 1:
        raise faults.unknown_segment(segments[1])
    opts = metaquery.parse(call.query, type_name, props | _cast_props(rows), navs)
    ctx = f"{ctx}('{entity.logical}')/{rest}"
    return Reply.json(200, {"@odata.context": ctx, "value": metaquery.apply(rows, opts, expanders)})


def _one_attribute(
    call: Call, entity: Entity, name: str, tail: list[str], ctx: str, expanders: Any
) -> Reply:
    rows = [
        r for r in _attributes(entity_row(entity)) if name in (r["LogicalName"], r["MetadataId"])
    ]
    if not rows:
        raise faults.DataverseFault(
            404,
            "0x80040217",
            f"Could not find attribute with key {name} on entity {entity.logical}.",
        )  # (inferred) wording
    row = rows[0]
    if tail:
        cast = _cast(tail[0])
        if len(tail) > 1 or row["@odata.type"] != f"#Microsoft.Dynamics.CRM.{cast}":
            raise faults.unknown_segment(tail[-1])
    opts = metaquery.parse(call.query, "AttributeMetadata", set(row), _ATTR_NAVS)
    return Reply.json(
        200,
        {
            "@odata.context": f"{ctx}('{entity.logical}')/Attributes/$entity",
            **metaquery.shape(row, opts, expanders),
        },
    )


def _cast(segment: str) -> str:
    prefix = "Microsoft.Dynamics.CRM."
    name = segment[len(prefix) :] if segment.startswith(prefix) else ""
    known = {cast for cast, _ in _TYPE_NAMES.values()} | _OTHER_CASTS
    if name not in known:
        raise faults.unknown_segment(segment)
    return name


def _cast_props(rows: list[Row]) -> set[str]:
    return set().union(*rows) if rows else set()


def _select_ctx(opts: metaquery.Options) -> str:
    return f"({','.join(opts.select)})" if opts.select else ""


def _find(key: str) -> Entity:
    text = key.strip()
    m = re.fullmatch(r"LogicalName='([^']*)'", text)
    if m:
        entity = BY_LOGICAL.get(m.group(1).lower())
        if entity is not None:
            return entity
    for candidate in ENTITIES.values():
        if _id(candidate.logical) == text.lower():
            return candidate
    raise faults.DataverseFault(404, "0x80040217", f"Could not find entity with key {key}.")
