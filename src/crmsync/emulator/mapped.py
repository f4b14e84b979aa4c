"""The emulator serves every object of the mapping it is given, as Dataverse would.

``serve_mapping(specs)`` adds to the emulated tables each mapped object that is not a
standard table (a custom table, with its primary key and name) and each mapped field
that a table lacks (a custom column, with its type, length, range and options), and an
object's own sync filter column (Yes/No). A
column the emulated table already has keeps Dataverse's definition, so the emulator
can show the drift between a mapping and the environment (``crmsync mapping check``).
Adding is idempotent; a mapping that gives a standard table another key is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from crmsync.domain import FieldSpec, FieldType, ObjectSpec
from crmsync.emulator import model
from crmsync.emulator.model import Attribute, Entity

# Object type codes of custom tables start at 10,000 (the entity metadata reference).
_FIRST_CUSTOM_OTC = 10_000


class MappingConflict(ValueError):
    """The mapping declares a table or column the emulator already has otherwise."""


def attribute_for(field: FieldSpec, specs: dict[str, ObjectSpec]) -> Attribute:
    kind = field.type
    if kind is FieldType.LOOKUP:
        assert field.target is not None
        target = specs[field.target]
        return Attribute(
            f"_{field.attribute}_value",
            model.LOOKUP,
            target=target.entity_set,
            navigation=field.navigation or field.attribute,
        )
    if kind is FieldType.CHOICE:
        options = tuple((value, local) for local, value in field.choices)
        return Attribute(field.attribute, model.PICKLIST, options=options)
    types = {
        FieldType.STRING: model.STRING,
        FieldType.MEMO: model.MEMO,
        FieldType.INTEGER: model.INTEGER,
        FieldType.DECIMAL: model.DECIMAL,
        FieldType.MONEY: model.MONEY,
        FieldType.BOOLEAN: model.BOOLEAN,
        FieldType.DATETIME: model.DATETIME,
        FieldType.DATE: model.DATETIME,
    }
    return Attribute(
        field.attribute,
        types[kind],
        max_length=field.max_length,
        min_value=field.minimum,
        max_value=field.maximum,
        precision=field.precision,
        date_only=kind is FieldType.DATE,
    )


def serve_mapping(specs: Iterable[ObjectSpec]) -> list[str]:
    """Add the mapping's tables and columns; returns what was added (``set.attribute``)."""
    by_name = {s.name: s for s in specs}
    added: list[str] = []
    for spec in by_name.values():
        entity = model.ENTITIES.get(spec.entity_set)
        if entity is None:
            entity = _custom_entity(spec)
            model.ENTITIES[spec.entity_set] = entity
            model.BY_LOGICAL[entity.logical] = entity
            added.append(spec.entity_set)
        elif entity.logical != spec.logical_name or entity.primary_id != spec.primary_key:
            raise MappingConflict(
                f"{spec.entity_set} is the emulator's table {entity.logical} (key "
                f"{entity.primary_id}), not {spec.logical_name} ({spec.primary_key})"
            )
        for field in spec.field_specs.values():
            attr = attribute_for(field, by_name)
            present = entity.attributes.get(attr.name)
            if present is None:
                entity.attributes[attr.name] = attr
                added.append(f"{spec.entity_set}.{attr.name}")
        own = spec.sync_filter_field
        if own and own not in entity.attributes:
            entity.attributes[own] = Attribute(own, model.BOOLEAN)
            added.append(f"{spec.entity_set}.{own}")
    return added


def _custom_entity(spec: ObjectSpec) -> Entity:
    label = spec.field_specs[spec.label_column].attribute
    otc = _FIRST_CUSTOM_OTC + sum(1 for e in model.ENTITIES.values() if e.otc >= _FIRST_CUSTOM_OTC)
    pk = Attribute(spec.primary_key, model.GUID)
    schema = "".join(part.capitalize() for part in spec.logical_name.split("_"))
    attributes = {pk.name: pk}
    for attr in model.system_attributes():
        attributes[attr.name] = attr
    return Entity(spec.logical_name, schema, spec.entity_set, pk.name, label, otc, attributes)


def forget(added: Iterable[str]) -> None:
    """Take away what ``serve_mapping`` added (a test's own mapping, at its end)."""
    for item in reversed(list(added)):
        entity_set, _, attribute = item.partition(".")
        entity = model.ENTITIES.get(entity_set)
        if entity is None:
            continue
        if attribute:
            entity.attributes.pop(attribute, None)
        else:
            del model.ENTITIES[entity_set]
            model.BY_LOGICAL.pop(entity.logical, None)
