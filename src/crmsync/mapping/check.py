"""The mapping against the environment's metadata: every mismatch, as data. No I/O.

``mismatches(specs, tables)`` takes the table definitions ``dynamics/metadata.py`` read
and lists each way they and the mapping disagree: a missing table or attribute, another
type, a Dynamics maximum length shorter than the mapping's, a pushed field Dynamics does
not let crmsync write, change tracking off for an object that pulls, a local choice
with no option, a lookup that points elsewhere, an object's own sync filter that is not
a Yes/No attribute. ``crmsync mapping check`` prints them;
a worker at start pauses the objects that have any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from crmsync.domain import FieldSpec, FieldType, ObjectSpec
from crmsync.dynamics.metadata import AttributeInfo, TableInfo

# The attribute types each field type may sync with (AttributeTypeCode).
COMPATIBLE: dict[FieldType, tuple[str, ...]] = {
    FieldType.STRING: ("String", "Memo"),
    FieldType.MEMO: ("Memo", "String"),
    FieldType.INTEGER: ("Integer",),
    FieldType.DECIMAL: ("Decimal",),
    FieldType.MONEY: ("Money",),
    FieldType.BOOLEAN: ("Boolean",),
    FieldType.DATETIME: ("DateTime",),
    FieldType.DATE: ("DateTime",),
    FieldType.CHOICE: ("Picklist", "State", "Status"),
    FieldType.LOOKUP: ("Lookup", "Customer", "Owner"),
}


@dataclass(frozen=True)
class Mismatch:
    object: str
    field: str | None  # the local column, None for the table itself
    kind: str  # missing_entity | missing_attribute | type | max_length | not_writable
    #            | change_tracking | choice | lookup_target | entity_set | sync_filter
    message: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def mismatches(
    specs: Mapping[str, ObjectSpec], tables: Mapping[str, TableInfo | None]
) -> list[Mismatch]:
    out: list[Mismatch] = []
    for spec in specs.values():
        table = tables.get(spec.logical_name)
        if table is None:
            out.append(
                Mismatch(
                    spec.name,
                    None,
                    "missing_entity",
                    f"Dynamics has no table {spec.logical_name!r}",
                )
            )
            continue
        if table.entity_set is not None and table.entity_set != spec.entity_set:
            out.append(
                Mismatch(
                    spec.name,
                    None,
                    "entity_set",
                    f"{spec.logical_name}'s entity set is {table.entity_set!r}, "
                    f"not {spec.entity_set!r}",
                )
            )
        if spec.flow.pulls and not table.change_tracking:
            out.append(
                Mismatch(
                    spec.name,
                    None,
                    "change_tracking",
                    f"change tracking is off for {spec.logical_name}; {spec.name} pulls "
                    "from Dynamics: turn on Track changes in the table's properties",
                )
            )
        for field in spec.field_specs.values():
            out.extend(_field(spec, field, table, specs))
        out.extend(_sync_filter(spec, table))
    return out


def _sync_filter(spec: ObjectSpec, table: TableInfo) -> list[Mismatch]:
    """An object's own sync filter (not the setting's, which tables may lack) must be a
    Yes/No attribute of its table, if the object pulls."""
    name = spec.sync_filter_field
    if not name or not spec.flow.pulls:
        return []
    where = f"{spec.logical_name}.{name}"
    attr = table.attributes.get(name)
    if attr is None:
        problem = f"Dynamics has no attribute {where}, {spec.name}'s sync filter"
    elif attr.type != "Boolean":
        problem = f"{where}, {spec.name}'s sync filter, is {attr.type} in Dynamics, not Yes/No"
    else:
        return []
    return [Mismatch(spec.name, None, "sync_filter", problem)]


def _field(
    spec: ObjectSpec, field: FieldSpec, table: TableInfo, specs: Mapping[str, ObjectSpec]
) -> list[Mismatch]:
    where = f"{spec.logical_name}.{field.attribute}"

    def found(kind: str, message: str) -> list[Mismatch]:
        return [Mismatch(spec.name, field.column, kind, message)]

    attr = table.attributes.get(field.attribute)
    if attr is None:
        return found("missing_attribute", f"Dynamics has no attribute {where}")
    if attr.type not in COMPATIBLE[field.type]:
        return found("type", f"{where} is {attr.type} in Dynamics; the mapping says {field.type}")
    if field.type is FieldType.DATE and not attr.date_only:
        return found("type", f"{where} holds a date and time; the mapping says date")
    if field.type is FieldType.DATETIME and attr.date_only:
        return found("type", f"{where} is date only; the mapping says datetime")
    out: list[Mismatch] = []
    if (
        field.max_length is not None
        and attr.max_length is not None
        and attr.max_length < field.max_length
    ):
        out += found(
            "max_length",
            f"{where} holds at most {attr.max_length} characters; the mapping allows "
            f"{field.max_length}: longer values will fail",
        )
    flow = spec.flow_for(field.column)
    if flow.pushes and not (attr.valid_for_create and attr.valid_for_update):
        out += found("not_writable", f"{where} cannot be written (not valid for create or update)")
    out += _choices(spec, field, attr, where)
    mapped = specs.get(field.target) if field.target is not None else None
    if field.type is FieldType.LOOKUP and mapped is not None and attr.targets:
        target = mapped.logical_name
        if target not in attr.targets:
            out += found(
                "lookup_target",
                f"{where} points to {', '.join(attr.targets)}, not {target}",
            )
    return out


def _choices(spec: ObjectSpec, field: FieldSpec, attr: AttributeInfo, where: str) -> list[Mismatch]:
    if field.needs_options and attr.type != "Picklist":
        # engine/choices.py reads PicklistAttributeMetadata: the worker would pause.
        return [
            Mismatch(
                spec.name,
                field.column,
                "choice",
                f"{where} is a {attr.type} column: crmsync reads the options of Choice "
                "columns only; declare this one's choices in the mapping",
            )
        ]
    if field.type is not FieldType.CHOICE or attr.options is None or not field.choices:
        return []
    missing = [f"{local}={value}" for local, value in field.choices if value not in attr.options]
    if not missing:
        return []
    return [
        Mismatch(
            spec.name,
            field.column,
            "choice",
            f"{where} has no option for {', '.join(missing)} (its options: "
            f"{', '.join(str(o) for o in attr.options)})",
        )
    ]
