"""The OpenAPI document follows the mapping: its objects, and each object's typed fields.

The records routes are declared once, for ``{object}``, with a generic body; a client
generated from that learns nothing of an object's fields. ``describe`` adds, for every
mapped object, a schema of what a client may write (``<Object>Fields``: each column with
its type, length, range or choices, nothing else allowed) and of what it reads back
(``<Object>Record``), and documents the records routes once per object under its own
path (``/api/v1/records/lead``), which the ``{object}`` routes serve. Wherever a
parameter lists the standard four objects, it lists the mapping's instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from crmsync.domain import STANDARD_OBJECTS, FieldSpec, FieldType, ObjectSpec
from crmsync.mapping.convert import MAX_LABEL
from crmsync.store import records
from crmsync.store.params import MAX_ID

RECORDS = "/api/v1/records/{object}"
ONE_RECORD = "/api/v1/records/{object}/{id}"
_NULL = {"type": "null"}


def describe(doc: dict[str, Any], specs: Mapping[str, ObjectSpec]) -> dict[str, Any]:
    """``doc`` (FastAPI's document) with the mapping's objects and their schemas."""
    _rename(doc, list(STANDARD_OBJECTS), list(specs))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    paths = doc.get("paths", {})
    for spec in specs.values():
        title = schema_title(spec.name)
        schemas[f"{title}Fields"] = fields_schema(spec)
        schemas[f"{title}Record"] = record_schema(spec, title)
        schemas[f"{title}Page"] = {
            "type": "object",
            "title": f"{title}Page",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": _ref(f"{title}Record")}},
                "next_cursor": {"anyOf": [{"type": "string"}, _NULL]},
            },
        }
        for generic in (RECORDS, ONE_RECORD):
            if generic in paths:
                path = generic.replace("{object}", spec.name)
                paths[path] = _for_object(paths[generic], spec.name, title)
    return doc


def schema_title(name: str) -> str:
    """``event_registration`` → ``EventRegistration``."""
    return "".join(part.capitalize() for part in name.split("_"))


def field_schema(field: FieldSpec) -> dict[str, Any]:
    """One column's JSON schema, as the records API reads and writes it (null allowed)."""
    kind = field.type
    schema: dict[str, Any]
    if kind in (FieldType.STRING, FieldType.MEMO):
        # The store keeps longer text (Dynamics refuses it: a sync error), never a NUL.
        schema = {"type": "string", "pattern": "^[^\\u0000]*$"}
        if records.is_email_column(field.column):
            schema.update(format="email", pattern=f"^{records.EMAIL.pattern}$")
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
    elif kind is FieldType.INTEGER:
        schema = {"type": "integer", **_range(field)}
    elif kind in (FieldType.DECIMAL, FieldType.MONEY):
        # Written as a number or its text; read back as text, exactly (12.50 stays 12.50).
        schema = {
            "anyOf": [
                {"type": "number", **_range(field)},
                {"type": "string", "pattern": _decimal_pattern(field)},
            ],
            "description": f"a decimal with at most {field.precision} places",
        }
    elif kind is FieldType.BOOLEAN:
        schema = {"type": "boolean"}
    elif kind is FieldType.DATETIME:
        schema = {"type": "string", "format": "date-time", "description": "an instant (UTC)"}
    elif kind is FieldType.DATE:
        schema = {"type": "string", "format": "date"}
    elif kind is FieldType.CHOICE:
        if field.choices:
            schema = {"enum": [local for local, _ in field.choices]}
        elif field.labels:
            schema = {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LABEL,
                "description": f"the label of one of {field.attribute}'s options in Dynamics "
                "(the workers check it: one that is none is the record's sync error)",
            }
        else:
            schema = {"type": "integer", "description": "the Dynamics option value"}
    else:  # a lookup: the target's local id
        schema = {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_ID,
            "description": f"the local id of a {field.target}",
        }
    return {"anyOf": [schema, _NULL]} if "anyOf" not in schema else _nullable(schema)


def fields_schema(spec: ObjectSpec) -> dict[str, Any]:
    """What a client may write to ``spec``: its mapped columns, and nothing else."""
    return {
        "type": "object",
        "title": f"{schema_title(spec.name)}Fields",
        "description": f"Field values of one {spec.name} record by column, each optional",
        "properties": {c: field_schema(f) for c, f in spec.field_specs.items()},
        "additionalProperties": False,
    }


def record_schema(spec: ObjectSpec, title: str) -> dict[str, Any]:
    """A ``spec`` record as read: its ids, timestamps and mapped columns."""
    stamp = {"anyOf": [{"type": "string", "format": "date-time"}, _NULL]}
    properties: dict[str, Any] = {
        "id": {"type": "integer"},
        "crm_id": {"anyOf": [{"type": "string"}, _NULL], "description": "its Dynamics id"},
        "created_at": stamp,
        "updated_at": stamp,
        **({"crm_deleted_at": stamp} if spec.timestamps else {}),
    }
    properties.update({c: field_schema(f) for c, f in spec.field_specs.items()})
    return {
        "type": "object",
        "title": f"{title}Record",
        "required": ["id", "crm_id", "created_at", "updated_at"],
        "properties": properties,
    }


def _for_object(generic: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    """The ``{object}`` path's operations for one object: no object parameter, and the
    object's own schemas for the body and the answers."""
    item = copy.deepcopy(generic)
    for method, op in item.items():
        if not isinstance(op, dict):
            continue
        op["operationId"] = f"{op.get('operationId', method)}_{name}"
        op["summary"] = f"{op.get('summary', method)} ({name})"
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "object"]
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            body["schema"] = {"$ref": _ref(f"{title}Fields")}
        for response in op.get("responses", {}).values():
            content = response.get("content", {}).get("application/json")
            if content is None:
                continue
            target = content.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            if target == "Record":
                content["schema"] = {"$ref": _ref(f"{title}Record")}
            elif target == "RecordPage":
                content["schema"] = {"$ref": _ref(f"{title}Page")}
            elif target == "RecordWithSync":
                content["schema"] = {
                    "allOf": [
                        {"$ref": _ref(f"{title}Record")},
                        {
                            "type": "object",
                            "required": ["sync"],
                            "properties": {"sync": {"$ref": _ref("SyncInfo")}},
                        },
                    ]
                }
    return item


def _range(field: FieldSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    whole = field.type is FieldType.INTEGER
    for key, bound in (("minimum", field.minimum), ("maximum", field.maximum)):
        if bound is not None:
            out[key] = int(bound) if whole else float(bound)
    return out


def _decimal_pattern(field: FieldSpec) -> str:
    """Decimal text of the field: at most its places, and as many digits as its range's
    bounds have (the range itself is the number form's ``minimum`` and ``maximum``)."""
    bound = max(abs(int(field.minimum or 0)), abs(int(field.maximum or 0)))
    digits = max(1, len(str(bound)))
    places = f"(\\.[0-9]{{1,{field.precision}}})?" if field.precision else ""
    return f"^-?[0-9]{{1,{digits}}}{places}$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "anyOf": [*schema["anyOf"], _NULL]}


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def _rename(node: Any, standard: list[str], names: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("enum") == standard:
            node["enum"] = names
        for value in node.values():
            _rename(value, standard, names)
    elif isinstance(node, list):
        for value in node:
            _rename(value, standard, names)
